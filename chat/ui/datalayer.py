"""Chainlit's data layer on SQLAlchemy 2 ORM: users, threads, steps, elements, feedback, generations.

Chainlit calls these methods from concurrent tasks in no guaranteed order: a step or an element
can arrive before its thread, and the thread's owner and name arrive last. So every write
upserts the thread row first (owner unknown until update_thread says), and a step's upsert and
its generation record commit in one transaction. Chainlit also fires each write as its own task,
so writes to one step or thread are put back in call order (WriteOrder).

Every id in these calls may come from a hostile client (chainlit_fixes.py turns client messages
into plain user messages, but ids, thread ids and element fields still travel from the page).
So each write checks ownership against the logged-in user Chainlit is serving (`acting_user`):
a row it touches, if it exists, must be in a thread of that user, and a new row goes only into
a thread of theirs. Anything else raises NotYours, is logged with the user and the ids, and
changes nothing. Calls with no logged-in user are the server's own (start-up, tests, CLI).

A write that finds the database unreachable is tried again (chat/store/outages.py), still in its
place in WriteOrder; one that finally fails is logged, and a message or answer the user saw but
that could not be stored is named on their page as not saved.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import aiofiles
from chainlit.context import ChainlitContextException, context
from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.element import Element as ChainlitElement
from chainlit.element import ElementDict
from chainlit.step import StepDict
from chainlit.types import (
    Feedback as ChainlitFeedback,
)
from chainlit.types import (
    PageInfo,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from chainlit.user import PersistedUser
from chainlit.user import User as ChainlitUser
from sqlalchemy import JSON, ColumnElement, Select, case, delete, exists, func, literal, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.files import ContentStore
from chat.store.generations import GenerationRecord, as_the_browser_sees_it
from chat.store.outages import CLICKS, MOST_WAITING_WRITES, Patience, Unavailable, patient, unreachable
from chat.store.rows import NotYours, dialect_insert, iso, owned_by, parse_time, utcnow
from chat.store.schema import Element, Feedback, Generation, Step, Thread, User
from chat.ui.chainlit_fixes import browser_only_message
from chat.ui.texts import language_of, text

# Step fields Chainlit sends (camelCase) -> our columns; only keys present in a dict are written.
STEP_FIELDS = {
    "threadId": "thread_id",
    "parentId": "parent_id",
    "name": "name",
    "type": "type",
    "input": "input",
    "output": "output",
    "isError": "is_error",
    "metadata": "metadata_",
    "tags": "tags",
    "showInput": "show_input",
    "language": "language",
    "defaultOpen": "default_open",
    "autoCollapse": "auto_collapse",
    "createdAt": "created_at",
    "start": "start",
    "end": "end",
}
TIME_FIELDS = {"created_at", "start", "end"}
CLOSE_TIMEOUT_S = 10  # how long shutdown waits for writes under way
# A write takes milliseconds (seconds under a heavy load); a reader waits no longer than this for those under way.
SETTLE_TIMEOUT_S = 10
# Chainlit names a thread after its first message; the history sidebar shows one line of it.
MAX_THREAD_NAME_CHARS = 200
ANSWER = "assistant_message"  # the step type of a model answer, the only one with a generation record
USER_MESSAGE = "user_message"  # the only step type a client creates (chainlit_fixes.client_message_step)

log = logging.getLogger("loupe.datalayer")


def acting_user() -> str | None:
    """The identifier of the logged-in user Chainlit is serving in this call; None for the server's own work."""
    try:
        user = context.session.user
    except ChainlitContextException:
        return None
    return user.identifier if user else None


def refuse(what: str, **ids: object) -> NotYours:
    """Log a refused write with who asked and which ids, and return the error to raise."""
    details = " ".join(f"{name}={value}" for name, value in ids.items())
    log.warning("Refused %s: user=%s %s", what, acting_user(), details)
    return NotYours(f"{what}: {details}")


class WriteOrder:
    """Writes to one row (by id) run one at a time, in the order they were called.

    Chainlit persists every step change in a fire-and-forget task (`asyncio.create_task(
    data_layer.update_step(...))`), so a step's create, updates and delete can commit in any order
    when the database is slow: an update that loses the race to the delete re-inserts the deleted
    step, and the browser can rate a step whose row is not written yet. Tasks start in the order
    they were created and each write takes its place here before its first await, so writes to a
    row commit in Chainlit's order, and `settled` lets a reader wait for the writes under way.
    """

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        before = self._last.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[key] = mine
        try:
            if before is not None:
                await asyncio.wait([before])
            yield
        finally:
            mine.set_result(None)
            if self._last.get(key) is mine:
                del self._last[key]

    async def settled(self, key: str) -> None:
        """Return once every write to `key` called so far has finished (committed or failed), or after
        SETTLE_TIMEOUT_S: a write waiting out a database outage keeps its place, not its readers."""
        # Chainlit starts its writes as tasks: one created just now has not yet taken its turn. Yield once, so
        # that it does (it takes it before its first await), and counts.
        await asyncio.sleep(0)
        if (last := self._last.get(key)) is not None:
            await asyncio.wait([last], timeout=SETTLE_TIMEOUT_S)

    async def drain(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for every write under way (each key's last one ends last)."""
        await asyncio.sleep(0)  # as in `settled`: a write task created just now takes its turn first
        if self._last:
            await asyncio.wait(list(self._last.values()), timeout=timeout)


class LoupeDataLayer(BaseDataLayer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], store: ContentStore, write_retry_s: float) -> None:
        self.sessions = sessions
        self.store = store
        self.order = WriteOrder()
        self.writes = Patience(write_retry_s, MOST_WAITING_WRITES)  # Chainlit's background writes of a chat

    # Users ---------------------------------------------------------------------------------

    async def get_user(self, identifier: str) -> PersistedUser | None:
        async with self.sessions() as session:
            user = await session.scalar(select(User).where(User.identifier == identifier))
        return _persisted(user) if user else None

    async def create_user(self, user: ChainlitUser) -> PersistedUser | None:
        """Chainlit calls this on every login: keep the row (and its password) if it exists."""
        async with self.sessions.begin() as session:
            await session.execute(
                dialect_insert(session, User)
                .values(id=str(uuid.uuid4()), identifier=user.identifier, metadata=user.metadata, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["identifier"])
            )
        return await self.get_user(user.identifier)

    # Threads -------------------------------------------------------------------------------

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict | None = None,
        tags: list[str] | None = None,
    ) -> None:
        async with self.order.turn(thread_id):
            try:
                await self.writes.run(lambda: self._update_thread(thread_id, name, user_id, metadata, tags), "a thread")
            except Unavailable:
                log.exception("Thread %s not updated", thread_id)

    async def _update_thread(
        self, thread_id: str, name: str | None, user_id: str | None, metadata: dict | None, tags: list[str] | None
    ) -> None:
        async with self.sessions.begin() as session:
            thread = await _writable_thread(session, thread_id)
            if name is not None:
                thread.name = name[:MAX_THREAD_NAME_CHARS]
            if user_id is not None and user_id != thread.user_id:
                if thread.user_id is not None:  # threads never change hands
                    raise refuse("thread owner change", thread=thread_id, owner=thread.user_id, to=user_id)
                thread.user_id = user_id
            if tags is not None:
                thread.tags = tags
            if metadata is not None:
                # Chainlit sends partial metadata (e.g. the chat profile); merge, None deletes.
                merged = {**thread.metadata_, **metadata}
                thread.metadata_ = {key: value for key, value in merged.items() if value is not None}

    async def get_thread_author(self, thread_id: str) -> str:
        async with self.sessions() as session:
            identifier = await session.scalar(
                select(User.identifier).join(Thread, Thread.user_id == User.id).where(Thread.id == thread_id)
            )
        return identifier or ""

    async def delete_thread(self, thread_id: str) -> None:
        await self._delete(Thread, Thread.id == thread_id, CLICKS)

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        """Newest first, `pagination.first` at a time; the cursor is the last thread id shown."""
        query = _threads_with_owner()
        if filters.userId:
            query = query.where(Thread.user_id == filters.userId)
        if filters.search:
            pattern = f"%{filters.search.lower()}%"
            in_messages = select(Step.thread_id).where(func.lower(Step.output).like(pattern))
            query = query.where(or_(func.lower(Thread.name).like(pattern), Thread.id.in_(in_messages)))
        if filters.feedback is not None:
            rated = select(Feedback.thread_id).where(Feedback.value == filters.feedback)
            query = query.where(Thread.id.in_(rated))
        async with self.sessions() as session:
            if pagination.cursor:
                after = await session.get(Thread, pagination.cursor)
                if after is not None:
                    query = query.where(
                        or_(
                            Thread.created_at < after.created_at,
                            (Thread.created_at == after.created_at) & (Thread.id < after.id),
                        )
                    )
            query = query.order_by(Thread.created_at.desc(), Thread.id.desc()).limit(pagination.first + 1)
            rows = (await session.execute(query)).all()
        page = [_thread_dict(thread, identifier) for thread, identifier in rows[: pagination.first]]
        return PaginatedResponse(
            pageInfo=PageInfo(
                hasNextPage=len(rows) > pagination.first,
                startCursor=page[0]["id"] if page else None,
                endCursor=page[-1]["id"] if page else None,
            ),
            data=page,
        )

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Thread, User.identifier)
                    .outerjoin(User, Thread.user_id == User.id)
                    .where(Thread.id == thread_id)
                )
            ).first()
            if row is None:
                return None
            steps = (
                await session.scalars(
                    select(Step).where(Step.thread_id == thread_id).order_by(Step.created_at, Step.start)
                )
            ).all()
            feedback = {
                rating.for_id: rating
                for rating in await session.scalars(select(Feedback).where(Feedback.thread_id == thread_id))
            }
            elements = (await session.scalars(select(Element).where(Element.thread_id == thread_id))).all()
        thread = _thread_dict(*row)
        # Threads go to browsers (the thread API, a resumed chat), so arena answers leave without their contenders.
        thread["steps"] = [as_the_browser_sees_it(_step_dict(step, feedback.get(step.id))) for step in steps]
        thread["elements"] = [self._element_dict(element) for element in elements]
        return thread

    # Steps ---------------------------------------------------------------------------------

    async def get_step(self, step_id: str) -> StepDict | None:
        """A step as stored, once the writes already started for it have committed."""
        await self.order.settled(step_id)
        async with self.sessions() as session:
            step = await session.get(Step, step_id)
        return _step_dict(step, None) if step else None

    async def step_exists(self, step_id: str) -> bool:
        """Whether any thread has a step with this id, whoever owns it (a check, not a read)."""
        await self.order.settled(step_id)
        async with self.sessions() as session:
            return await session.scalar(select(Step.id).where(Step.id == step_id)) is not None

    @queue_until_user_message()
    async def create_step(self, step_dict: StepDict) -> None:
        """A step sent: the user's message, or an answer as it ended. One that cannot be stored is named
        on the user's page, which shows it, as not saved."""
        async with self.order.turn(step_dict["id"]):
            try:
                await self.writes.run(lambda: self._upsert_step(step_dict, creating=True), "a step")
            except Unavailable:
                log.exception("Step %s (%s) not saved", step_dict["id"], step_dict.get("type"))
                if step_dict.get("type") in (ANSWER, USER_MESSAGE):
                    await _tell_not_saved(step_dict["type"])

    @queue_until_user_message()
    async def update_step(self, step_dict: StepDict) -> None:
        await self.save_draft(step_dict)

    async def save_draft(self, step_dict: StepDict) -> None:
        """A step as it stands, stored over what was: Chainlit's updates, and an answer saved while it streams
        (chat/ui/answers.py), which its end overwrites."""
        async with self.order.turn(step_dict["id"]):
            try:
                await self.writes.run(lambda: self._upsert_step(step_dict, creating=False), "a step's update")
            except Unavailable:
                log.exception("Step %s (%s) not updated", step_dict["id"], step_dict.get("type"))

    @queue_until_user_message()
    async def delete_step(self, step_id: str) -> None:
        async with self.order.turn(step_id):
            try:
                await self._delete(Step, Step.id == step_id, self.writes)
            except Unavailable:
                log.exception("Step %s not deleted", step_id)

    async def _upsert_step(self, step_dict: StepDict, creating: bool) -> None:
        values = {column: step_dict[key] for key, column in STEP_FIELDS.items() if key in step_dict}
        for column in TIME_FIELDS & values.keys():
            values[column] = parse_time(values[column])
        if isinstance(values.get("show_input"), bool):
            values["show_input"] = str(values["show_input"]).lower()
        values = {column: value for column, value in values.items() if value is not None or column in ("parent_id",)}
        generation = (values.get("metadata_") or {}).get("generation")
        async with self.sessions.begin() as session:
            thread = await _writable_thread(session, step_dict["threadId"])
            stored = (
                await session.execute(select(Step.thread_id, Step.type).where(Step.id == step_dict["id"]))
            ).first()
            if stored is not None and stored.thread_id != thread.id:  # steps never move between threads
                raise refuse("step write into another thread", step=step_dict["id"], thread=thread.id)
            if stored is not None and values.get("type", stored.type) != stored.type:
                raise refuse("step type change", step=step_dict["id"], type=values["type"])
            if stored is not None and creating and stored.type == USER_MESSAGE:  # a prompt, once answered, stays
                raise refuse("user message rewrite", step=step_dict["id"])
            insert = dialect_insert(session, Step).values(
                id=step_dict["id"],
                **{"created_at": utcnow(), "type": "undefined", **_by_column_name(values)},
            )
            updates = {column: insert.excluded[column] for column in _by_column_name(values) if column != "created_at"}
            await session.execute(
                insert.on_conflict_do_update(index_elements=["id"], set_=updates)
                if updates
                else insert.on_conflict_do_nothing(index_elements=["id"])
            )
            if generation and values.get("type", stored.type if stored else None) == ANSWER:
                await _upsert_generation(session, step_dict["id"], step_dict["threadId"], generation)

    # Elements ------------------------------------------------------------------------------

    @queue_until_user_message()
    async def create_element(self, element: ChainlitElement) -> None:
        """Copy the element's file into the content store, so history outlives Chainlit's .files."""
        if element.thread_id:
            async with self.order.turn(element.id):  # before a redraw of it (`redraw_element`)
                content = element.content
                if content is None and element.path:
                    async with aiofiles.open(element.path, "rb") as file:
                        content = await file.read()
                object_key = None
                if content is not None:
                    object_key = await asyncio.to_thread(
                        self.store.put, content.encode() if isinstance(content, str) else content
                    )
                try:
                    await self.writes.run(lambda: self._insert_element(element, object_key), "an element")
                except Unavailable:
                    log.exception("Element %s (%s) not saved", element.id, element.name)

    async def _insert_element(self, element: ChainlitElement, object_key: str | None) -> None:
        async with self.sessions.begin() as session:
            await _writable_thread(session, element.thread_id)
            await session.execute(
                dialect_insert(session, Element)
                .values(
                    id=element.id,
                    thread_id=element.thread_id,
                    for_id=element.for_id,
                    type=element.type,
                    name=element.name,
                    mime=element.mime,
                    display=element.display,
                    size=getattr(element, "size", None),
                    object_key=object_key,
                    props=getattr(element, "props", None) or {},
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )

    async def redraw_element(self, element_id: str, props: dict[str, Any]) -> None:
        """New props for a custom element the server drew and stored (Chainlit stores an element once, as
        first sent): a battle's view once voted on. Server code only; no client reaches this."""
        async with self.order.turn(element_id):
            await self._redraw_element(element_id, props)

    @patient(CLICKS, "an element's redraw")
    async def _redraw_element(self, element_id: str, props: dict[str, Any]) -> None:
        async with self.sessions.begin() as session:
            await session.execute(update(Element).where(Element.id == element_id).values(props=props))

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        async with self.sessions() as session:
            element = await session.scalar(
                select(Element).where(Element.thread_id == thread_id, Element.id == element_id)
            )
        return self._element_dict(element) if element else None

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        named = Element.id == element_id
        if thread_id:
            named &= Element.thread_id == thread_id
        await self._delete(Element, named, CLICKS)

    def _element_dict(self, element: Element) -> ElementDict:
        return {
            "id": element.id,
            "threadId": element.thread_id,
            "forId": element.for_id,
            "type": element.type,
            "name": element.name,
            "mime": element.mime,
            "display": element.display,
            "size": element.size,
            "objectKey": element.object_key,
            "url": f"/loupe/files/{element.object_key}" if element.object_key else None,
            "props": element.props,
            "chainlitKey": None,
        }

    # Feedback ------------------------------------------------------------------------------

    async def settle_writes(self) -> None:
        """Wait for every write under way: an element's row (which grants access to its file) is written in
        the background after the page is told its url, and the page may ask for the file first."""
        await self.order.drain(SETTLE_TIMEOUT_S)

    async def settle_step(self, step_id: str) -> None:
        """Wait for the writes already started for this step and for its thread.

        The browser can rate an answer as soon as it is shown, while the rated step's row (and,
        on a first message, the thread's owner) may still be on its way to the database.
        """
        await self.order.settled(step_id)
        try:
            async with self.sessions() as session:
                thread_id = await session.scalar(select(Step.thread_id).where(Step.id == step_id))
        except Exception as error:
            if not unreachable(error):
                raise
            return  # the database is away: the writes wait for it (self.writes), and nothing is settled before
        if thread_id is not None:
            await self.order.settled(thread_id)

    @patient(CLICKS, "a rating")
    async def upsert_feedback(self, feedback: ChainlitFeedback) -> str:
        """Store a thumbs up/down for the step Chainlit names (the run); one per step, re-votes update it.

        chat/ui/routes.py answers 404 before this for steps not in the user's threads; this checks it
        again. The rating belongs to the thread's owner; its id is ours, never the client's.
        """
        async with self.sessions.begin() as session:
            rated = await session.scalar(
                select(Step).where(Step.id == feedback.forId, _acting_user_owns(Step.thread_id))
            )
            if rated is None:
                raise refuse("rating", step=feedback.forId)
            owner = await session.scalar(select(Thread.user_id).where(Thread.id == rated.thread_id))
            now = utcnow()
            insert = dialect_insert(session, Feedback).values(
                id=str(uuid.uuid4()),
                for_id=rated.id,
                thread_id=rated.thread_id,
                user_id=owner,
                value=feedback.value,
                comment=feedback.comment,
                created_at=now,
                updated_at=now,
            )
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=["for_id"],
                    set_={
                        "value": feedback.value,
                        "comment": feedback.comment,
                        # Reasons explain one direction of the thumb: a flipped thumb starts without.
                        "reasons": case((Feedback.value == feedback.value, Feedback.reasons), else_=literal([], JSON)),
                        "updated_at": now,
                    },
                )
            )
            return await session.scalar(select(Feedback.id).where(Feedback.for_id == rated.id))

    async def delete_feedback(self, feedback_id: str) -> bool:
        return await self._delete(Feedback, Feedback.id == feedback_id, CLICKS) > 0

    async def _delete(self, table: type, named: ColumnElement[bool], patience: Patience) -> int:
        """Delete the rows `named` in the acting user's threads (NotYours for another's), with `patience`."""

        async def delete_owned() -> int:
            async with self.sessions.begin() as session:
                return await _delete_owned(session, table, named)

        return await patience.run(delete_owned, f"a delete from {table.__tablename__}")

    # The rest of Chainlit's interface ------------------------------------------------------

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        return []  # favorites are off in .chainlit/config.toml

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        """Chainlit calls this on shutdown and then ends the process with os._exit: let the writes
        still under way in its fire-and-forget tasks commit first (a SIGTERM under load lost them)."""
        await self.order.drain(CLOSE_TIMEOUT_S)


async def _tell_not_saved(step_type: str) -> None:
    """Name, on the page of the user Chainlit is serving, what they saw but the database did not take."""
    try:
        session = context.session
    except ChainlitContextException:  # the server's own write: only the log tells
        return
    what = "not_saved_answer" if step_type == ANSWER else "not_saved_message"
    await context.emitter.send_step(browser_only_message(text(what, language_of(session.language))))


def _threads_with_owner() -> Select:
    return select(Thread, User.identifier).outerjoin(User, Thread.user_id == User.id)


def _by_column_name(values: dict[str, Any]) -> dict[str, Any]:
    """ORM attribute names -> table column names (metadata_ is stored as 'metadata')."""
    return {("metadata" if key == "metadata_" else key): value for key, value in values.items()}


def _acting_user_owns(thread_id: Any) -> ColumnElement[bool]:
    """SQL: `thread_id` names a thread of the acting user (always true for the server's own work)."""
    if (identifier := acting_user()) is None:
        return true()
    return thread_id.in_(owned_by(identifier))


async def _delete_owned(session: AsyncSession, table: type, named: ColumnElement[bool]) -> int:
    """Delete the rows `named` in the acting user's threads; NotYours if they name another user's."""
    thread_of = table.id if table is Thread else table.thread_id
    result = await session.execute(delete(table).where(named, _acting_user_owns(thread_of)))
    if result.rowcount == 0 and await session.scalar(select(exists().where(named))):
        raise refuse(f"delete from another user's thread ({table.__tablename__})", where=named.compile().params)
    return result.rowcount


async def _writable_thread(session: AsyncSession, thread_id: str | None) -> Thread:
    """The thread a write goes into, created if a step or element got here before Chainlit created it.

    With a logged-in user, a new thread is theirs from its first row (no ownerless moment to
    race for), an ownerless one becomes theirs, and another user's thread raises NotYours.
    """
    if not thread_id:
        raise refuse("write without a thread", thread=thread_id)
    identifier = acting_user()
    user_id = None
    if identifier is not None:
        user_id = await session.scalar(select(User.id).where(User.identifier == identifier))
        if user_id is None:
            raise refuse("write by an unknown user", thread=thread_id)
    await session.execute(
        dialect_insert(session, Thread)
        .values(id=thread_id, user_id=user_id, tags=[], metadata={}, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    thread = await session.get(Thread, thread_id, with_for_update=session.bind.dialect.name == "postgresql")
    if user_id is not None and thread.user_id != user_id:
        if thread.user_id is not None:
            raise refuse("write into another user's thread", thread=thread_id)
        thread.user_id = user_id
    return thread


async def _upsert_generation(session: AsyncSession, step_id: str, thread_id: str, record: dict[str, Any]) -> None:
    values = asdict(GenerationRecord.from_metadata(record))
    insert = dialect_insert(session, Generation).values(
        id=str(uuid.uuid4()), step_id=step_id, thread_id=thread_id, created_at=utcnow(), **values
    )
    await session.execute(insert.on_conflict_do_update(index_elements=["step_id"], set_=values))


def _persisted(user: User) -> PersistedUser:
    return PersistedUser(
        id=user.id,
        identifier=user.identifier,
        display_name=user.identifier,
        metadata=user.metadata_,
        createdAt=iso(user.created_at),
    )


def _thread_dict(thread: Thread, user_identifier: str | None) -> ThreadDict:
    return {
        "id": thread.id,
        "createdAt": iso(thread.created_at),
        "name": thread.name,
        "userId": thread.user_id,
        "userIdentifier": user_identifier,
        "tags": thread.tags,
        "metadata": thread.metadata_,
        "steps": [],
        "elements": [],
    }


def _step_dict(step: Step, feedback: Feedback | None) -> StepDict:
    step_dict: StepDict = {
        "id": step.id,
        "threadId": step.thread_id,
        "parentId": step.parent_id,
        "name": step.name,
        "type": step.type,
        "input": step.input,
        "output": step.output,
        "isError": step.is_error,
        "metadata": step.metadata_,
        "tags": step.tags,
        "showInput": step.show_input,
        "language": step.language,
        "defaultOpen": step.default_open,
        "autoCollapse": step.auto_collapse,
        "createdAt": iso(step.created_at),
        "start": iso(step.start),
        "end": iso(step.end),
    }
    if feedback is not None:
        step_dict["feedback"] = {
            "id": feedback.id,
            "forId": feedback.for_id,
            "value": feedback.value,
            "comment": feedback.comment,
        }
    return step_dict
