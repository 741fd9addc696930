"""Regenerate: another answer to the same question, beside the earlier ones, and the choice between
the newest two (Compare).

Each answer keeps its own run (so its own thumbs) under the question, and the siblings are numbered
anew ("Answer 2 of 3"). The new answer is written side by side with the one it will be compared with
(chat/ui/side_by_side.py), so the user reads both at once and chooses under both; once chosen, the
view closes and the stacked answers show again, the choice marked under the newer one.
"""

from __future__ import annotations

from typing import Any

import chainlit as cl
from langchain_core.messages import BaseMessage

from chat.conversation import turn_index
from chat.store.generations import GenerationRecord
from chat.store.preferences import AnswerFeedback
from chat.ui.answers import as_stoppable_task, model_turn, respond
from chat.ui.choices import compared_with, comparison_labels, offer_comparison
from chat.ui.documents import pages_for_turn
from chat.ui.runtime import serving
from chat.ui.side_by_side import SideBySide, offered
from chat.ui.texts import shown_answer, text
from models.adapters import Adapter
from models.backend import Ended


async def regenerate(
    history: list[BaseMessage], prompt_id: str, adapter: Adapter | None, user: str, language: str
) -> bool:
    """A new answer to the user message `prompt_id`, with the chat's current settings, beside the old ones.

    If that message is the last turn, the conversation continues from the new answer. False if
    `prompt_id` is no user message of this chat's history.
    """
    at = turn_index(history, prompt_id)
    if at is None:
        return False
    siblings = [a for a in await serving().preferences.answers_to(user, prompt_id) if a.ended != Ended.ERROR]
    count = len(siblings) + 1
    # The pages the first answer was shown, so that the answers compared were shown the same pages.
    if siblings and (first := await serving().data_layer.get_step(siblings[0].id)):
        pages = await serving().answering.pages_again(user, first["metadata"]["generation"].get("sources", []))
    else:
        pages = await pages_for_turn(history[:at], history[at], user)

    def keep(reply: cl.Message) -> None:
        if at + 2 == len(history):  # the last turn: continue from the new answer
            history[at + 1] = model_turn(reply)

    view = await comparison_view(siblings, prompt_id, language)

    async def generate() -> cl.Message | None:
        # Named like the run Chainlit wraps around on_message, which its page shows as just the answer.
        async with cl.Step(name="on_message", type="run", parent_id=prompt_id):
            label = text("answer_label", language, number=count, count=count)
            shown_in = view.columns[1].attach if view else None
            return await respond(
                history[:at], history[at], language, keep, adapter, label, pages=pages, shown_in=shown_in
            )

    reply = await as_stoppable_task(generate(), language)
    if reply is not None and siblings:
        for number, sibling in enumerate(siblings, start=1):
            await relabel(sibling.id, number, count, language)
    choices: list[cl.Action] = []
    if reply is not None and reply.metadata["ended"] == Ended.FINISHED:
        choices = await offer_comparison(siblings, reply.id, language)
    if view and choices:
        view.offer(choices, None)
        view.offered_under(reply.id)
        await view.show()
    elif view:  # stopped, failed, or did not fit: nothing to choose between
        await view.close()
    return True


async def comparison_view(siblings: list[AnswerFeedback], prompt_id: str, language: str) -> SideBySide | None:
    """The view the answer after `siblings` is written into, beside the sibling it will be compared with,
    labelled as its Compare buttons are; None if no earlier answer finished."""
    earlier = compared_with(siblings)
    if earlier is None or (step := await serving().data_layer.get_step(earlier.id)) is None:
        return None
    view = SideBySide(language, comparison_labels(siblings, earlier), kept=False, parent_id=prompt_id)
    view.columns[0].written(earlier.id, shown_step(step, language))
    return await view.open()


async def chosen(answer_id: str) -> None:
    """The choice offered under `answer_id` was made: close its view, if still open."""
    if view := offered(answer_id):
        await view.close()


async def relabel(step_id: str, number: int, count: int, language: str) -> None:
    """Show a stored answer as number `number` of `count` siblings: only the page's text changes,
    rebuilt from what the model wrote (its record is untouched)."""
    data_layer = serving().data_layer
    if stored := await data_layer.get_step(step_id):
        stored["output"] = shown_step(stored, language, text("answer_label", language, number=number, count=count))
        await cl.context.emitter.update_step(stored)
        await data_layer.update_step(stored)


def shown_step(step: dict[str, Any], language: str, label: str | None = None) -> str:
    """A stored answer as the page shows it, rebuilt from its generation record."""
    record = GenerationRecord.from_metadata(step["metadata"]["generation"])
    return shown_answer(record.completion, record.ended, language, label, record.sources)
