"""The arena in the chat: two contenders drawn at random answer as A and B; a vote reveals them.

The vote becomes a battle (chat/arena/leaderboard.py ranks them) and a comparison (exported).
"""

from __future__ import annotations

from collections.abc import Callable

import chainlit as cl
from langchain_core.messages import BaseMessage, HumanMessage

from chat.documents.retrieval import ShownPage
from chat.store.generations import BASE
from chat.ui.answers import respond
from chat.ui.choices import VOTE, comparison_actions, show_choices
from chat.ui.runtime import serving
from chat.ui.texts import text
from models.backend import Ended


async def battle(
    earlier: list[BaseMessage],
    turn: HumanMessage,
    language: str,
    keep: Callable[[cl.Message], None],
    pages: list[ShownPage],
) -> None:
    """Answer with two contenders drawn at random, as Answer A and Answer B, shown the same document
    pages, then ask which is better.

    Each answer has its own run (so its own thumbs). The conversation goes on from answer A.
    """
    runtime = serving()
    answers = []
    for side, adapter in zip("AB", runtime.profiles.pick_pair(runtime.arena_draw), strict=True):
        async with cl.Step(name="on_message", type="run", parent_id=turn.id):
            label = text("arena_label", language, side=side)
            kept = keep if side == "A" else lambda reply: None
            reply = await respond(
                earlier, turn, language, kept, adapter, label, regenerable=False, pages=pages, blind=True
            )
        if reply is None or reply.metadata["ended"] != Ended.FINISHED:
            return
        answers.append(reply)
    a, b = answers
    await show_choices(b.id, VOTE, comparison_actions(VOTE, a.id, "A", b.id, "B", None, language))


def revealed(contenders: tuple[str, str], language: str) -> str:
    """Who wrote answers A and B, in words."""
    a, b = (text("base_model", language) if name == BASE else name for name in contenders)
    return text("arena_reveal", language, a=a, b=b)
