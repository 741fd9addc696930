"""Every message exists in every language, with the same placeholders."""

from __future__ import annotations

import string

from chat.ui.texts import TEXTS, language_of, mark_unfinished, text
from tests.helpers.shown import answer_text, with_label


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def test_all_languages_have_the_same_keys_and_placeholders() -> None:
    english = TEXTS["en"]
    for language, texts in TEXTS.items():
        assert texts.keys() == english.keys(), language
        for key, template in texts.items():
            assert placeholders(template) == placeholders(english[key]), (language, key)


def test_browser_locales_map_to_our_languages() -> None:
    assert [language_of(x) for x in ("ko-KR", "ko", "en-US", "de-DE", None)] == ["ko", "ko", "en", "en", "en"]


def test_stop_marker_lands_outside_an_open_code_block_or_formula() -> None:
    """The page renders the marker as Markdown after the answer: a block the answer left open would swallow it
    (a stopped answer of the demo model's that began with `$$` showed the marker as a formula)."""
    assert mark_unfinished("R = 5 V", "stopped", "en") == "R = 5 V\n\n■ *Stopped.*"
    assert mark_unfinished("```python\nx = 1", "stopped", "ko") == "```python\nx = 1\n```\n\n■ *중지됨.*"
    assert mark_unfinished("$$", "stopped", "en") == "$$\n$$\n\n■ *Stopped.*"
    assert mark_unfinished("So\n$$\nV = IR", "stopped", "en") == "So\n$$\nV = IR\n$$\n\n■ *Stopped.*"
    assert mark_unfinished("~~~~\n```\n", "stopped", "en") == "~~~~\n```\n\n~~~~\n\n■ *Stopped.*"
    closed = ("```\nx\n```", "$$\nV = IR\n$$", "$$V = IR$$ holds", "Use ```x``` here", "````\n```\n````")
    for answer in closed:
        assert mark_unfinished(answer, "stopped", "en") == f"{answer}\n\n■ *Stopped.*", answer


def test_answer_text_removes_the_label_and_the_stop_marker_in_every_language() -> None:
    for language in TEXTS:
        shown = with_label(mark_unfinished("R2 is larger.", "stopped", language), 2, 3, language)
        assert shown.startswith(text("answer_label", language, number=2, count=3))
        assert answer_text(shown) == "R2 is larger."
        assert answer_text(with_label(shown, 1, 4, "en")) == "R2 is larger."  # relabelled, not stacked
    assert answer_text("*Answer 2 of 3* is what I meant") == "*Answer 2 of 3* is what I meant"
