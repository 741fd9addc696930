"""The arena in the chat: two contenders drawn at random answer as A and B; a vote reveals them.

The arena records the battle when both answers are in; the vote settles it, once (chat/arena/leaderboard.py
ranks settled battles), and is also a comparison (exported). Nothing else makes a battle: buttons restored
in a resumed chat vote only on the battles recorded in it.
The page shows a battle side by side, A left and B right, both streaming at once, the vote row
under both (chat/ui/side_by_side.py), stored as it ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import chainlit as cl
from langchain_core.messages import BaseMessage, HumanMessage

from chat.documents.retrieval import ShownPage
from chat.store.generations import BASE
from chat.store.preferences import AlreadyVoted
from chat.store.rows import NotYours
from chat.ui.answers import respond
from chat.ui.chainlit_fixes import without_thumbs
from chat.ui.choices import VOTE, comparison_actions, redrawn_comparison, refuse_click, show_choices
from chat.ui.runtime import serving
from chat.ui.side_by_side import Column, SideBySide, offered
from chat.ui.texts import text
from models.backend import Ended


async def battle(
    earlier: list[BaseMessage],
    turn: HumanMessage,
    user: str,
    language: str,
    keep: Callable[[cl.Message], None],
    pages: list[ShownPage],
) -> None:
    """Answer with two contenders drawn at random, as Answer A and Answer B, shown the same document
    pages, then record the battle and ask which is better.

    Both are asked at once, B as soon as A is in the model's hands (so A is always first in line, and
    first stored): a backend that serves requests concurrently (vLLM) writes both together, the local
    one in turn (B's column says it waits). Each answer has its own run. The conversation goes on
    from answer A. Both are sampled with the arena's settings, not the chat's (`respond`'s `blind`).
    Only a battle whose answers both finished is recorded, and only a recorded battle can be voted on.
    """
    runtime = serving()
    view = await SideBySide(language, ("A", "B"), kept=True).open()
    contenders = runtime.profiles.pick_pair(runtime.arena_draw)

    async def answer(column: Column, adapter: Any) -> cl.Message | None:
        if column.side == "B":
            await view.columns[0].started.wait()
            if view.columns[0].answer_id is None:  # A's prompt did not fit (the user was told): B's would not
                return None
        try:
            async with cl.Step(name="on_message", type="run", parent_id=turn.id):
                label = text("arena_label", language, side=column.side)
                kept = keep if column.side == "A" else lambda reply: None
                return await respond(
                    earlier,
                    turn,
                    language,
                    kept,
                    adapter,
                    label,
                    regenerable=False,
                    pages=pages,
                    shown_in=column.attach,
                    blind=True,
                )
        finally:  # also when no answer came (the prompt did not fit)
            column.started.set()

    try:
        replies = await asyncio.gather(*(answer(c, a) for c, a in zip(view.columns, contenders, strict=True)))
        for column, reply in zip(view.columns, replies, strict=True):
            if reply is None:
                column.failed()
        if all(reply is not None and reply.metadata["ended"] == Ended.FINISHED for reply in replies):
            a, b = replies
            names = tuple(adapter.name if adapter else BASE for adapter in contenders)
            await runtime.preferences.hold_battle(user, cl.context.session.id, (a.id, b.id), names)
            votes = comparison_actions(VOTE, a.id, "A", b.id, "B", None, language)
            await show_choices(b.id, VOTE, votes)
            view.offer(votes, None)
            view.offered_under(b.id)
    finally:  # also on Stop: the battle is kept as it ended
        await view.store()


async def vote(action: cl.Action, user: str, language: str) -> None:
    """Settle the battle with the user's blind vote (and store it as a comparison), then reveal who wrote
    which answer; a battle has one vote."""
    payload = action.payload
    try:
        contenders = await serving().preferences.vote(user, payload["a"], payload["b"], payload["choice"])
    except AlreadyVoted:
        await cl.context.emitter.send_toast(text("voted_once", language), "warning")
        return
    except (NotYours, KeyError, ValueError):
        await refuse_click(language)
        return
    votes = redrawn_comparison(action, language)
    await show_choices(payload["b"], VOTE, votes)
    await without_thumbs(cl.Message(content=revealed(contenders, language))).send()
    await show_vote(payload["b"], votes, payload["choice"], contenders, language)


async def show_vote(b_id: str, votes: list[cl.Action], chosen: str, contenders: tuple[str, str], language: str) -> None:
    """Mark the `chosen` vote in the battle's view and name who wrote each side above it."""
    if (view := offered(b_id)) is None:  # no view offers this vote (an answer did not finish)
        return
    view.offer(votes, chosen)
    for column, name in zip(view.columns, contenders, strict=True):
        column.contender = contender_name(name, language)
    await view.store()


def contender_name(name: str, language: str) -> str:
    return text("base_model", language) if name == BASE else name


def revealed(contenders: tuple[str, str], language: str) -> str:
    """Who wrote answers A and B, in words."""
    a, b = (contender_name(name, language) for name in contenders)
    return text("arena_reveal", language, a=a, b=b)
