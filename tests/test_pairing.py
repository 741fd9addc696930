"""chat/dataset/pairing.py, one rule at a time, on plain records (docs/preference-data.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from chat.dataset.pairing import (
    MAX_ROWS_PER_PROMPT,
    RULES,
    Answer,
    Comparison,
    Correction,
    Label,
    Pair,
    Rating,
    Response,
    judge,
)
from chat.dataset.quality import PromptCap
from chat.fair_share import user_cap
from models.prompt_key import prompt_key

START = datetime(2026, 11, 21, 10, 0)
SYSTEM = "Answer like an engineer."


def at(minute: int) -> datetime:
    return START + timedelta(minutes=minute)


def up(minute: int) -> Rating:
    return Rating(up=True, at=at(minute))


def down(minute: int) -> Rating:
    return Rating(up=False, at=at(minute))


def answer(
    id: str,
    rating: Rating | None = None,
    ended: str = "finished",
    context: tuple[str, ...] = (),
    system: str = SYSTEM,
    pages: tuple[tuple[str, int], ...] = (),
    text: str | None = None,
) -> Answer:
    """An answer whose text, unless given, is its own: no two answers read the same."""
    text = f"Answer {id}." if text is None else text
    return Answer(id=id, text=text, ended=ended, context=context, system_prompt=system, rating=rating, pages=pages)


def pair(chosen: str, rejected: str, rule: str) -> Pair:
    return Pair(Response(chosen), rejected, rule)


def label(answer_id: str, desirable: bool, rule: str) -> Label:
    return Label(Response(answer_id), desirable, rule)


def test_comparison_a_or_b_gives_a_pair_tie_and_both_bad_give_none() -> None:
    answers = [answer("A"), answer("B")]
    assert judge(answers, [Comparison("A", "B", "a", at(1))], [], set()).pairs == [pair("A", "B", "comparison")]
    assert judge(answers, [Comparison("A", "B", "b", at(1))], [], set()).pairs == [pair("B", "A", "comparison")]
    assert judge(answers, [Comparison("A", "B", "tie", at(1))], [], set()).pairs == []
    assert judge(answers, [Comparison("A", "B", "both_bad", at(1))], [], set()).pairs == []


def test_thumbs_up_and_down_among_siblings_give_every_up_down_pair() -> None:
    answers = [answer("A", up(1)), answer("B", down(2)), answer("C", up(3)), answer("D", up(4)), answer("E")]
    assert judge(answers, [], [], set()).pairs == [
        pair("A", "B", "thumbs"),
        pair("C", "B", "thumbs"),
        pair("D", "B", "thumbs"),
    ]


def test_a_comparison_later_than_the_thumbs_wins() -> None:
    answers = [answer("A", up(1)), answer("B", down(2))]
    assert judge(answers, [Comparison("A", "B", "b", at(3))], [], set()).pairs == [pair("B", "A", "comparison")]
    assert judge(answers, [Comparison("A", "B", "tie", at(3))], [], set()).pairs == []


def test_thumbs_later_than_the_comparison_win_and_the_later_rating_counts() -> None:
    # The comparison (minute 2) comes between the two ratings (1 and 3): the later rating is what counts.
    answers = [answer("A", up(1)), answer("B", down(3))]
    assert judge(answers, [Comparison("A", "B", "b", at(2))], [], set()).pairs == [pair("A", "B", "thumbs")]


def test_at_equal_times_the_comparison_wins() -> None:
    answers = [answer("A", up(1)), answer("B", down(2))]
    assert judge(answers, [Comparison("A", "B", "b", at(2))], [], set()).pairs == [pair("B", "A", "comparison")]


def test_thumbs_that_agree_do_not_contradict_a_comparison() -> None:
    answers = [answer("A", up(5)), answer("B", up(6))]
    assert judge(answers, [Comparison("A", "B", "a", at(1))], [], set()).pairs == [pair("A", "B", "comparison")]


def test_one_pair_at_most_from_two_answers() -> None:
    answers = [answer("A", up(1)), answer("B", down(2))]
    agreeing = [Comparison("A", "B", "a", at(3)), Comparison("B", "A", "b", at(4))]
    assert judge(answers, agreeing, [], set()).pairs == [pair("A", "B", "comparison")]


def test_a_correction_beats_the_answer_it_corrects_whatever_its_rating() -> None:
    answers = [answer("A", up(1)), answer("B", down(2))]
    judgement = judge(answers, [], [Correction("A", "The cutoff is 159 Hz.")], set())
    assert judgement.pairs == [pair("A", "B", "thumbs"), Pair(Response("A", corrected=True), "A", "correction")]
    assert Label(Response("A", corrected=True), True, "correction") in judgement.labels


def test_a_blank_correction_counts_as_none() -> None:
    judgement = judge([answer("A")], [], [Correction("A", " \n")], set())
    assert (judgement.pairs, judgement.labels) == ([], [])


def test_kto_labels_follow_each_answers_latest_signal() -> None:
    answers = [answer("A", down(1)), answer("B", up(2)), answer("C", up(9)), answer("D"), answer("E")]
    comparisons = [
        Comparison("A", "B", "a", at(3)),  # later than both thumbs: A wins, B loses
        Comparison("C", "D", "both_bad", at(4)),  # C's later thumbs up wins; D has only this verdict
        Comparison("D", "E", "tie", at(5)),  # a tie says nothing: E has no signal, so no row
    ]
    assert judge(answers, comparisons, [], set()).labels == [
        label("A", True, "comparison"),
        label("B", False, "comparison"),
        label("C", True, "thumbs"),
        label("D", False, "comparison"),
    ]


def test_both_bad_labels_both_answers_undesirable_and_makes_no_pair() -> None:
    judgement = judge([answer("A"), answer("B")], [Comparison("A", "B", "both_bad", at(1))], [], set())
    assert judgement.pairs == []
    assert judgement.labels == [label("A", False, "comparison"), label("B", False, "comparison")]


def test_stopped_and_failed_answers_never_enter_the_data() -> None:
    answers = [
        answer("A", up(1)),
        answer("S", down(2), ended="stopped"),
        answer("E", down(3), ended="error"),
    ]
    comparisons = [Comparison("A", "S", "a", at(4)), Comparison("E", "A", "both_bad", at(5))]
    judgement = judge(answers, comparisons, [], set())
    assert judgement.pairs == []
    assert judgement.labels == [label("A", True, "thumbs")]


def test_a_correction_of_a_stopped_answer_is_a_desirable_row_but_no_pair() -> None:
    judgement = judge([answer("S", ended="stopped")], [], [Correction("S", "The full answer.")], set())
    assert judgement.pairs == []
    assert judgement.labels == [Label(Response("S", corrected=True), True, "correction")]


def test_answers_after_an_unfinished_or_missing_earlier_answer_are_left_out() -> None:
    answers = [answer("A", up(1), context=("earlier",)), answer("B", down(2), context=("earlier",))]
    corrections = [Correction("A", "Better.")]
    clean = judge(answers, [], corrections, finished={"earlier"})
    assert clean.pairs and clean.labels
    dirty = judge(answers, [], corrections, finished={"something else"})  # "earlier" stopped, failed or deleted
    assert (dirty.pairs, dirty.labels) == ([], [])


def test_answers_shown_different_prompts_are_not_paired_but_keep_their_labels() -> None:
    other_turns = [answer("A", up(1), context=("x",)), answer("B", down(2), context=("y",))]
    other_system = [answer("A", up(1)), answer("B", down(2), system="Be brief.")]
    other_pages = [answer("A", up(1), pages=(("d" * 64, 3),)), answer("B", down(2), pages=(("d" * 64, 4),))]
    for answers in (other_turns, other_system, other_pages):
        judgement = judge(answers, [Comparison("A", "B", "a", at(3))], [], finished={"x", "y"})
        assert judgement.pairs == []
        assert judgement.labels == [label("A", True, "comparison"), label("B", False, "comparison")]


def test_a_pair_of_answers_that_read_the_same_but_for_whitespace_is_dropped() -> None:
    answers = [
        answer("A", up(1), text="  About 160 Hz.\n"),
        answer("B", down(2), text="About\t160  Hz."),
        answer("C", down(3), text="About 160Hz."),  # a different text: its pair stays
    ]
    judgement = judge(answers, [], [Correction("B", "About 160 Hz. ")], set())
    assert judgement.pairs == [pair("A", "C", "thumbs")]
    assert judgement.identical == [pair("A", "B", "thumbs"), Pair(Response("B", corrected=True), "B", "correction")]
    assert len(judgement.labels) == 4, "KTO rows are not pairs: each answer keeps its row"


def test_a_comparison_of_identical_answers_gives_no_pair() -> None:
    answers = [answer("A", text="V = I R."), answer("B", text="V = I R.")]
    judgement = judge(answers, [Comparison("A", "B", "a", at(1))], [], set())
    assert (judgement.pairs, judgement.identical) == ([], [pair("A", "B", "comparison")])


def test_near_duplicate_prompts_differ_only_in_case_punctuation_and_whitespace() -> None:
    red, blue = "a" * 64, "b" * 64
    asked = prompt_key([SYSTEM, "What does this circuit do?"], [red])
    assert prompt_key([SYSTEM, "  what does this CIRCUIT do"], [red]) == asked
    assert prompt_key([SYSTEM.upper(), "What does this circuit do?!"], [red]) == asked
    assert prompt_key(["Be brief.", "What does this circuit do?"], [red]) != asked, "another system prompt"
    assert prompt_key([SYSTEM, "What does this circuit show?"], [red]) != asked
    assert prompt_key([SYSTEM, "What does this circuit do?"], [blue]) != asked, "another image"
    assert prompt_key([SYSTEM, "What does this circuit do?"], [red, red]) != asked
    assert prompt_key([SYSTEM, "Earlier.", "Answer.", "What does this circuit do?"], [red]) != asked
    assert prompt_key(["이 회로도에서 저항값은?"], []) == prompt_key(["이 회로도에서  저항값은"], [])
    full_width = "\uff36\uff1d\uff29\uff32?"  # "V=IR?" in full-width forms, as East Asian keyboards type it
    assert prompt_key([full_width], []) == prompt_key(["v=ir"], []), "NFKC: full-width letters are letters"
    assert prompt_key(["What's a pull-up?"], []) == prompt_key(["whats a pullup"], []), "punctuation is dropped"


def test_a_prompt_gives_at_most_the_cap_of_rows_the_first_ones_kept() -> None:
    cap = PromptCap()
    circuit, ohm = prompt_key(["What does this circuit do?"], []), prompt_key(["Explain Ohm's law."], [])
    kept = [cap.admit(key) for key in [circuit] * (MAX_ROWS_PER_PROMPT + 2) + [ohm]]
    assert kept == [True] * MAX_ROWS_PER_PROMPT + [False, False, True]
    assert cap.admit(prompt_key(["what does this circuit do"], [])) is False, "a near-duplicate counts as the same"


def test_the_docs_state_the_rules_verbatim() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "preference-data.md").read_text(encoding="utf-8")
    assert RULES in docs


def test_rule_9_caps_a_user_at_twice_the_median_users_rows() -> None:
    assert user_cap([1, 1, 1, 50]) == 2  # one member fifty times as active as the rest
    assert user_cap([3, 4, 10, 40]) == 14  # an even count: the median is the middle two's mean
    assert user_cap([7]) == 14  # alone, a user is never capped
    assert user_cap([0, 0]) is None and user_cap([]) is None  # users without rows do not count
