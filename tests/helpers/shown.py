"""Answers as the page shows them (a label, a stop marker), for checks that compare the page with what is stored."""

from __future__ import annotations

import re

from chat.ui.texts import TEXTS, text

# "*Answer 2 of 3*\n\n", "*답변 2 / 3*\n\n", "*Answer B*\n\n"... at the very start of a shown answer.
LABEL = re.compile(
    "|".join(
        re.escape(texts[key]).replace(r"\{number\}", r"\d+").replace(r"\{count\}", r"\d+").replace(r"\{side\}", "[AB]")
        + r"\n\n"
        for texts in TEXTS.values()
        for key in ("answer_label", "arena_label")
    )
)


def with_label(answer: str, number: int, count: int, language: str) -> str:
    """An answer as the page shows the `number`th of `count` siblings."""
    return f"{text('answer_label', language, number=number, count=count)}\n\n{answer}"


def answer_text(shown: str) -> str:
    """What the model wrote, from an answer as the page shows it: without labels and the stop marker."""
    while match := LABEL.match(shown):
        shown = shown[match.end() :]
    for texts in TEXTS.values():
        shown = shown.removesuffix(f"\n\n{texts['stopped']}")
    return shown
