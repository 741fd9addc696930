"""The buttons under answers: regenerate, reasons and Correct after a thumb, compare and vote.

Chainlit's buttons cannot change once shown, so a group of choices is redrawn: every button the
group may have is removed by its id, then the current ones are sent. Ids are therefore stable
and made here only: `<group>:<answer id>:<choice>` (and `correct:<answer id>`).
"""

from __future__ import annotations

import chainlit as cl

from chat.settings import Settings
from chat.store.preferences import CHOICES, AnswerFeedback, InThread
from chat.ui.texts import reason_label, text
from models.backend import Ended

RATING, COMPARE, VOTE = "rating", "compare", "vote"  # the groups of choices under an answer


def regenerate_action(prompt_id: str, language: str) -> cl.Action:
    return cl.Action(
        name="regenerate", payload={"prompt_id": prompt_id}, label=text("regenerate", language), icon="refresh-cw"
    )


ASK_WITHOUT_FILES = "ask_without_files"  # the button under a refusal of a message's attachments


def ask_without_files_action(prompt_id: str, question: str, across_library: bool, language: str) -> cl.Action:
    """Under a refusal of a message's attachments: ask its question without them, rather than type it again."""
    return cl.Action(
        name=ASK_WITHOUT_FILES,
        payload={"prompt_id": prompt_id, "question": question, "library": across_library},
        label=text("ask_without_files", language),
        icon="send",
    )


def choice_action(name: str, answer_id: str, value: str, label: str, chosen: bool, payload: dict) -> cl.Action:
    """One button of a group under an answer; its id is stable, so the group can be redrawn in place."""
    return cl.Action(
        id=f"{name}:{answer_id}:{value}", name=name, payload=payload, label=f"✓ {label}" if chosen else label
    )


def comparison_actions(
    group: str, a: str, label_a: str, b: str, label_b: str, chosen: str | None, language: str
) -> list[cl.Action]:
    """Which of answers `a` and `b` (labelled "1" and "2", or "A" and "B") is better: shown under `b`."""
    labels = {
        "a": text("compare_a", language, number=label_a),
        "b": text("compare_b", language, number=label_b),
        "tie": text("compare_tie", language),
        "both_bad": text("compare_both_bad", language),
    }
    payload = {"a": a, "label_a": label_a, "b": b, "label_b": label_b}
    return [
        choice_action(group, b, choice, label, choice == chosen, {**payload, "choice": choice})
        for choice, label in labels.items()
    ]


def redrawn_comparison(clicked: cl.Action, language: str) -> list[cl.Action]:
    """The comparison buttons again, with the one just clicked marked."""
    p = clicked.payload
    return comparison_actions(clicked.name, p["a"], p["label_a"], p["b"], p["label_b"], p["choice"], language)


def compared_with(earlier: list[AnswerFeedback]) -> AnswerFeedback | None:
    """The sibling a newly finished answer is compared with: the newest earlier one that finished."""
    return next((sibling for sibling in reversed(earlier) if sibling.ended == Ended.FINISHED), None)


def comparison_labels(earlier: list[AnswerFeedback], a: AnswerFeedback) -> tuple[str, str]:
    """How sibling `a` and the answer after `earlier` are numbered, as the page labels them (the new one is
    number len(earlier)+1)."""
    return str(earlier.index(a) + 1), str(len(earlier) + 1)


async def offer_comparison(
    earlier: list[AnswerFeedback],
    answer_id: str,
    language: str,
    comparisons: dict[tuple[str, str], str] | None = None,
) -> list[cl.Action]:
    """Under a finished answer, ask how it compares with its newest finished sibling (if it has one);
    returns the buttons shown (none without such a sibling).

    `comparisons` ((a, b) -> choice) marks a choice already made.
    """
    if (a := compared_with(earlier)) is None:
        return []
    labels = comparison_labels(earlier, a)
    chosen = (comparisons or {}).get((a.id, answer_id))
    buttons = comparison_actions(COMPARE, a.id, labels[0], answer_id, labels[1], chosen, language)
    await show_choices(answer_id, COMPARE, buttons)
    return buttons


def reasons_for(rating: int | None, settings: Settings) -> list[str]:
    return {1: settings.reasons_up, 0: settings.reasons_down}.get(rating, [])


def rating_actions(answer: AnswerFeedback, settings: Settings, language: str) -> list[cl.Action]:
    """Reasons for the answer's thumb (ticked ones marked), and for a thumbs down, Correct."""
    actions = [
        choice_action(
            "reason",
            answer.id,
            code,
            reason_label(code, language),
            code in answer.reasons,
            {"answer": answer.id, "reason": code},
        )
        for code in reasons_for(answer.rating, settings)
    ]
    if answer.rating == 0:
        actions.append(
            cl.Action(
                id=f"correct:{answer.id}",
                name="correct",
                payload={"answer": answer.id},
                label=text("correct", language),
                icon="pencil",
            )
        )
    return actions


async def show_rating(answer: AnswerFeedback, settings: Settings, language: str) -> None:
    """Redraw the reasons (and Correct) under a rated answer."""
    every_reason = {*settings.reasons_up, *settings.reasons_down}
    ids = [f"reason:{answer.id}:{code}" for code in every_reason] + [f"correct:{answer.id}"]
    await _redraw(answer.id, RATING, ids, rating_actions(answer, settings, language))


async def show_choices(answer_id: str, group: str, actions: list[cl.Action]) -> None:
    """Redraw a COMPARE or VOTE group under an answer."""
    await _redraw(answer_id, group, [f"{group}:{answer_id}:{choice}" for choice in CHOICES], actions)


async def restore_choices(stored: InThread, arena: bool, settings: Settings, language: str) -> None:
    """Chainlit does not store buttons: give a resumed thread's answers (oldest first) theirs, as they stand.

    A vote is offered only under answer B of a battle the arena held (and recorded) in this thread: two answers
    that merely share a prompt (one asked under an adapter's profile, one regenerated under another) are not a
    battle, whatever the profile the thread is resumed in. Other siblings are compared outside the arena.
    """
    votes = {b: (a, choice) for (a, b), choice in stored.battles.items()}
    siblings: dict[str, list[AnswerFeedback]] = {}
    for answer in stored.answers:
        if answer.ended == Ended.ERROR:
            continue
        earlier = siblings.setdefault(answer.prompt_id, [])
        if not arena:
            await regenerate_action(answer.prompt_id, language).send(for_id=answer.id)
        if answer.ended == Ended.INTERRUPTED:  # a part, kept for the user: regenerated, never rated or compared
            continue
        if answer.rating is not None:
            await show_rating(answer, settings, language)
        if answer.id in votes:
            a, chosen = votes[answer.id]
            await show_choices(answer.id, VOTE, comparison_actions(VOTE, a, "A", answer.id, "B", chosen, language))
        elif answer.ended == Ended.FINISHED and not arena:
            await offer_comparison(earlier, answer.id, language, stored.comparisons)
        earlier.append(answer)


async def _redraw(answer_id: str, group: str, ids: list[str], actions: list[cl.Action]) -> None:
    """Remove every button the group may have (by its stable id; unknown ids are ignored), then send `actions`."""
    for action_id in ids:
        await cl.Action(id=action_id, name=group, payload={}).remove()
    for action in actions:
        await action.send(for_id=answer_id)


async def refuse_click(language: str) -> None:
    """What a button about an answer the user cannot reach (another chat's, or made up) gets."""
    await cl.context.emitter.send_toast(text("not_yours", language), "error")
