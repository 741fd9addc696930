"""Two answers next to each other while they stream, the choice between them under both: the arena's
A and B, and a regenerated answer beside the one it is compared with (Compare).

One answer above another is compared from memory; side by side, point by point. The SideBySide
custom element (public/elements/SideBySide.jsx) draws the two columns in a message of its own, redrawn
as the answers stream, and hides the answers' own stacked messages while it shows. Those are still
sent and stored as any answer is (each under its own run, with its generation record), so the export,
pairing and history are unchanged; where the element cannot render, the page falls back to them.

The two uses keep the view differently:
- a battle is stored as it ended, so a resumed chat shows it again in place (and a vote cast there
  marks itself in it: `reopen_stored`);
- a comparison is shown only until the user chooses (or closes it, which the page does alone): its
  answers' stacked messages carry their thumbs, reasons, Correct and Regenerate, which the view has not,
  so they come back then, with the choice marked under the newer one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import chainlit as cl
from chainlit.element import ElementDict
from chainlit.types import ThreadDict
from chainlit.utils import utc_now

from chat.ui.answers import STREAM_INTERVAL_S
from chat.ui.runtime import serving
from chat.ui.texts import shown_answer, text
from models.backend import Ended

ELEMENT = "SideBySide"  # public/elements/SideBySide.jsx
OPEN_VIEWS = "side_by_side"  # user session: the newer answer's id -> the view its choice is offered in


class Column:
    """One side of the view: the answer as written so far and how far it got (an AnswerStream)."""

    def __init__(self, view: SideBySide, side: str) -> None:
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

    def written(self, answer_id: str, shown: str) -> None:
        """Show an answer written earlier (the one a regenerated answer is compared with), as the page shows it."""
        self.answer_id, self.shown = answer_id, shown
        self.state = str(Ended.FINISHED)
        self.started.set()

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
            "waiting": text("column_waiting", language, ahead=self.ahead) if self.ahead else "",
            "writing": text("column_writing", language),
            str(Ended.STOPPED): text("column_stopped", language),
            str(Ended.ERROR): text("column_failed", language),
        }.get(self.state, "")
        return {
            "side": self.side,
            "title": text("column_title", language, side=self.side),
            "contender": self.contender,
            "text": self.text if self.shown is None else self.shown,
            "state": self.state,
            "status": status,
            "answerId": self.answer_id,
        }


class SideBySide:
    """The view on the page: the SideBySide element in a message of its own, shown before the answers
    start and redrawn as they stream, at most once per STREAM_INTERVAL_S.

    While it streams, only the page gets the element's new props. A `kept` view (a battle) is stored
    once, as it ended (`store`); any other is never stored, and `close` takes it off the page.
    `parent_id` places it among that step's children (a regenerated answer's, under its question).
    """

    def __init__(self, language: str, sides: tuple[str, str], kept: bool, parent_id: str | None = None) -> None:
        self.language, self.kept = language, kept
        self.columns = (Column(self, sides[0]), Column(self, sides[1]))
        self.votes: list[dict[str, Any]] = []
        self.sent_at = 0.0
        # Loupe's own message (not a model answer: no thumbs, no generation record, not in the history).
        self.message = cl.Message(content="", type="system_message", parent_id=parent_id)
        self.message.created_at = utc_now()
        self.element = cl.CustomElement(name=ELEMENT, props=self.props(), display="inline")

    async def open(self) -> SideBySide:
        if self.kept:
            await self.message.send()
        else:
            await cl.context.emitter.send_step(self.message.to_dict())
        await self.show()
        return self

    @classmethod
    def stored(cls, element: ElementDict, language: str) -> SideBySide:
        """A kept view as a resumed chat's thread holds it, for this session to redraw (a vote cast now)."""
        props = element["props"]
        view = cls(language, tuple(column["side"] for column in props["columns"]), kept=True)
        view.message.id, view.element.id, view.element.persisted = element["forId"], element["id"], True
        for column, kept in zip(view.columns, props["columns"], strict=True):
            column.written(kept["answerId"], kept["text"])
            column.state, column.contender = kept["state"], kept["contender"]
        view.votes = props["votes"]
        return view

    def offer(self, votes: list[cl.Action], chosen: str | None) -> None:
        """The choice buttons, as choices.py issued them under the newer answer: the element's buttons
        click those (by id, so the server runs the button it issued, with its own payload)."""
        self.votes = [
            {"id": vote.id, "label": vote.label, "chosen": vote.payload["choice"] == chosen} for vote in votes
        ]

    def offered_under(self, answer_id: str) -> None:
        """Remember the view as the one whose choice is offered under `answer_id` (see `offered`)."""
        views = cl.user_session.get(OPEN_VIEWS) or {}
        views[answer_id] = self
        cl.user_session.set(OPEN_VIEWS, views)

    def props(self) -> dict[str, Any]:
        return {
            "columns": [column.props() for column in self.columns],
            "question": text("choice_question", self.language) if self.votes else "",
            "votes": self.votes,
            "closeLabel": None if self.kept else text("side_by_side_close", self.language),
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
        """Store a kept view as it stands: as it ended (Chainlit stores an element's content and props),
        and again once voted on, so that a resumed chat shows the vote and who wrote which."""
        self.element.props = self.props()
        if self.element.persisted:
            await serving().data_layer.redraw_element(self.element.id, self.element.props)
            await self.show()
        else:
            self.element.content = json.dumps(self.element.props)
            await self.element.send(for_id=self.message.id)

    async def close(self) -> None:
        """Take a view that is not kept off the page; the answers' stacked messages show again."""
        await cl.context.emitter.delete_step(self.message.to_dict())
        views = cl.user_session.get(OPEN_VIEWS) or {}
        cl.user_session.set(OPEN_VIEWS, {answer: view for answer, view in views.items() if view is not self})


def reopen_stored(thread: ThreadDict, language: str) -> None:
    """Make a resumed chat's stored battles, those offering a vote, this session's views: a vote cast
    now marks itself in the stored view as one cast in the battle's own session does."""
    for element in thread.get("elements") or []:
        if element["type"] == "custom" and element["name"] == ELEMENT and (element.get("props") or {}).get("votes"):
            view = SideBySide.stored(element, language)
            view.offered_under(view.columns[1].answer_id)


def offered(answer_id: str) -> SideBySide | None:
    """The view of this session whose choice is offered under `answer_id`, if it is still open."""
    return (cl.user_session.get(OPEN_VIEWS) or {}).get(answer_id)
