"""The arena in the chat: two contenders drawn at random answer as A and B; a vote reveals them.

The vote becomes a battle (chat/arena/leaderboard.py ranks them) and a comparison (exported).

The page shows a battle side by side, A left and B right, both streaming at once, the vote row
under both: the ArenaBattle custom element (public/elements/ArenaBattle.jsx) in a message of its
own. The two answers are still sent and stored as any answer is (each under its own run, with its
generation record), so the export, pairing and history are unchanged; the element hides their
stacked copies on the page, and where it cannot render, the page falls back to them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import chainlit as cl
from chainlit.utils import utc_now
from langchain_core.messages import BaseMessage, HumanMessage

from chat.documents.retrieval import ShownPage
from chat.store.generations import BASE
from chat.ui.answers import STREAM_INTERVAL_S, respond
from chat.ui.choices import VOTE, comparison_actions, show_choices
from chat.ui.runtime import serving
from chat.ui.texts import shown_answer, text
from models.backend import Ended

ELEMENT = "ArenaBattle"  # public/elements/ArenaBattle.jsx
VIEWS = "arena_views"  # user session: answer B's id -> its battle's BattleView


async def battle(
    earlier: list[BaseMessage],
    turn: HumanMessage,
    language: str,
    keep: Callable[[cl.Message], None],
    pages: list[ShownPage],
) -> None:
    """Answer with two contenders drawn at random, as Answer A and Answer B, shown the same document
    pages, then ask which is better.

    Both are asked at once, B as soon as A is in the model's hands (so A is always first in line, and
    first stored): a backend that serves requests concurrently (vLLM) writes both together, the local
    one in turn (B's column says it waits). Each answer has its own run. The conversation goes on
    from answer A.
    """
    runtime = serving()
    view = await BattleView.open(language)
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
            votes = comparison_actions(VOTE, a.id, "A", b.id, "B", None, language)
            await show_choices(b.id, VOTE, votes)
            view.offer(votes, None)
            views = cl.user_session.get(VIEWS) or {}
            views[b.id] = view
            cl.user_session.set(VIEWS, views)
    finally:  # also on Stop: the battle is kept as it ended
        await view.store()


async def show_vote(b_id: str, votes: list[cl.Action], chosen: str, contenders: tuple[str, str], language: str) -> None:
    """Mark the `chosen` vote in the battle's view and name who wrote each side above it."""
    view: BattleView | None = (cl.user_session.get(VIEWS) or {}).get(b_id)
    if view is None:  # a battle of an earlier session: its buttons are redrawn under answer B
        return
    view.offer(votes, chosen)
    for column, name in zip(view.columns, contenders, strict=True):
        column.contender = contender_name(name, language)
    await view.show()


def contender_name(name: str, language: str) -> str:
    return text("base_model", language) if name == BASE else name


def revealed(contenders: tuple[str, str], language: str) -> str:
    """Who wrote answers A and B, in words."""
    a, b = (contender_name(name, language) for name in contenders)
    return text("arena_reveal", language, a=a, b=b)


class Column:
    """One side of the battle: the answer as written so far and how far it got (an AnswerStream)."""

    def __init__(self, view: BattleView, side: str) -> None:
        self.view, self.side = view, side
        self.text = ""
        self.answer_id: str | None = None
        self.state, self.ahead = "waiting", 0
        self.contender: str | None = None
        self.shown: str | None = None  # the answer as it ended: stop marker, sources
        self.started = asyncio.Event()  # the request is in line, or being written, or over

    def attach(self, reply: cl.Message) -> Column:
        """Stream the answer `reply` here (respond's `shown_in`); it is dated now, as asked, not when it ends."""
        self.answer_id = reply.id
        reply.created_at = utc_now()
        return self

    async def waiting(self, ahead: int) -> None:
        self.started.set()
        self.state, self.ahead = "waiting", ahead
        await self.view.show()

    async def add(self, piece: str) -> None:
        self.started.set()
        self.text += piece
        self.state = "writing"
        await self.view.changed()

    async def flush(self) -> None:
        await self.view.show()

    async def end(self, ended: Ended, sources: list[dict[str, Any]]) -> None:
        self.state = str(ended)
        self.shown = shown_answer(self.text, ended, self.view.language, None, sources)
        await self.view.show()

    def failed(self) -> None:
        """No answer came (the prompt did not fit, or the model failed before writing anything)."""
        self.state = str(Ended.ERROR)

    def props(self) -> dict[str, Any]:
        language = self.view.language
        status = {
            "waiting": text("arena_waiting", language, ahead=self.ahead) if self.ahead else "",
            "writing": text("arena_writing", language),
            str(Ended.STOPPED): text("arena_stopped", language),
            str(Ended.ERROR): text("arena_failed", language),
        }.get(self.state, "")
        return {
            "side": self.side,
            "title": text("arena_column", language, side=self.side),
            "contender": self.contender,
            "text": self.text if self.shown is None else self.shown,
            "state": self.state,
            "status": status,
            "answerId": self.answer_id,
        }


class BattleView:
    """The battle on the page: the ArenaBattle element in a message of its own, shown before the
    answers start and redrawn as they stream, at most once per STREAM_INTERVAL_S.

    While it streams, only the page gets the element's new props; it is stored once, as the battle
    ended (`store`), so a resumed chat shows it again in place.
    """

    def __init__(self, language: str) -> None:
        self.language = language
        self.columns = (Column(self, "A"), Column(self, "B"))
        self.votes: list[dict[str, Any]] = []
        self.sent_at = 0.0
        # Loupe's own message (not a model answer: no thumbs, no generation record, not in the history).
        self.message = cl.Message(content="", type="system_message")
        self.element = cl.CustomElement(name=ELEMENT, props=self.props(), display="inline")

    @classmethod
    async def open(cls, language: str) -> BattleView:
        view = cls(language)
        await view.message.send()
        await view.show()
        return view

    def offer(self, votes: list[cl.Action], chosen: str | None) -> None:
        """The vote buttons, as choices.py issued them under answer B: the element's buttons click those
        (by id, so the server runs the button it issued, with its own payload)."""
        self.votes = [
            {"id": vote.id, "label": vote.label, "chosen": vote.payload["choice"] == chosen} for vote in votes
        ]

    def props(self) -> dict[str, Any]:
        return {
            "columns": [column.props() for column in self.columns],
            "question": text("arena_question", self.language) if self.votes else "",
            "votes": self.votes,
        }

    async def changed(self) -> None:
        if time.monotonic() - self.sent_at >= STREAM_INTERVAL_S:
            await self.show()

    async def show(self) -> None:
        """Send the element's current props to the page only."""
        self.element.props = self.props()
        self.element.for_id = self.message.id
        await cl.context.emitter.send_element(self.element.to_dict())
        self.sent_at = time.monotonic()

    async def store(self) -> None:
        """Store the element as the battle ended (Chainlit stores an element's content and props)."""
        self.element.props = self.props()
        self.element.content = json.dumps(self.element.props)
        await self.element.send(for_id=self.message.id)
