"""Limits kept in the database, so that every Loupe process sharing it counts together.

A limit's memory is a record per key (a user's recent messages, a name's failed logins: a small JSON state
that chat/ui/limits.py's rules read and rewrite) and the uploads waiting to be sent. A transaction that
counts takes its keys' rows first, by upserting them (INSERT ... ON CONFLICT DO UPDATE): on PostgreSQL that
locks each row until commit, so a second process counting on the same key waits for the first one's outcome
and reads it; on SQLite the first write takes the database's one write lock (one process, one writer at a
time). Keys are taken in sorted order, so two transactions taking the same keys never deadlock.

Times are the database's clock, in Unix seconds, read once the rows are held: processes on different hosts
then share one clock, and a holder never reads a time earlier than the one before it wrote.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, cast, delete, extract, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.rows import dialect_insert
from chat.store.schema import LimitRecord, PendingUpload

# Rows that hold nobody back any more are deleted this often (process clock: only the pace of the sweep),
# by whichever limit is counted next: a minute's leftovers are a few rows per active user.
SWEEP_S = 60.0
JULIAN_DAY_OF_THE_UNIX_EPOCH = 2440587.5  # SQLite's julianday('1970-01-01')
SECONDS_PER_DAY = 86400.0


def database_clock(session: AsyncSession) -> ColumnElement[float]:
    """SQL: the database's time now, in Unix seconds (PostgreSQL's clock_timestamp() moves within a
    transaction, as a time read after waiting for a lock must; SQLite's 'now' is per statement)."""
    if session.bind.dialect.name == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - literal(JULIAN_DAY_OF_THE_UNIX_EPOCH)) * literal(SECONDS_PER_DAY)


@dataclass
class Held:
    """The records of the keys a transaction holds, as they were when taken (empty for a new key), and the
    database's time once they were all held. `keep` or `drop` each before the transaction ends."""

    session: AsyncSession
    states: dict[str, dict[str, Any]]
    now: float

    async def keep(self, key: str, state: dict[str, Any], expires: float) -> None:
        await self.session.execute(
            update(LimitRecord).where(LimitRecord.key == key).values(state=state, expires=expires)
        )

    async def drop(self, key: str) -> None:
        """Forget the key's record: it holds nobody back (the row goes; its lock holds until commit)."""
        await self.session.execute(delete(LimitRecord).where(LimitRecord.key == key))


class LimitStore:
    """The limits' records and the pending uploads, in the database every process shares."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._next_sweep = 0.0

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[Held]:
        """One transaction holding the rows of `keys`: no other holds any of them until it ends."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_S
            await self.sweep()
        async with self.sessions.begin() as session:
            clock, states, now = database_clock(session), {}, 0.0
            for key in sorted(set(keys)):
                taken = dialect_insert(session, LimitRecord).values(key=key, state={}, expires=0.0)
                taken = taken.on_conflict_do_update(index_elements=[LimitRecord.key], set_={"key": taken.excluded.key})
                states[key], now = (await session.execute(taken.returning(LimitRecord.state, clock))).one()
            yield Held(session, states, now)

    async def peek(self, keys: Iterable[str]) -> tuple[dict[str, dict[str, Any]], float]:
        """The records of `keys` as they are now, holding nothing (a record not stored reads empty): for
        waiting until a count may change, without holding up those who count."""
        keys = list(keys)
        async with self.sessions() as session:
            found = select(LimitRecord.key, LimitRecord.state).where(LimitRecord.key.in_(keys))
            stored = {key: state for key, state in await session.execute(found)}
            now = await session.scalar(select(database_clock(session)))
        return {key: stored.get(key, {}) for key in keys}, now

    async def sweep(self) -> None:
        """Delete the records and pending uploads that have expired. Rows held by a transaction now are
        skipped (PostgreSQL's SKIP LOCKED): their holder rewrites them, and the sweep waits for nobody."""
        async with self.sessions.begin() as session:
            now = await session.scalar(select(database_clock(session)))
            for table in (LimitRecord, PendingUpload):
                key = table.__mapper__.primary_key[0]
                expired = select(key).where(table.expires < now).with_for_update(skip_locked=True)
                await session.execute(delete(table).where(key.in_(expired)))

    # Pending uploads: a row per upload admitted, its file's id and size once stored, gone once sent.

    @staticmethod
    async def waiting(held: Held, user: str) -> tuple[int, int]:
        """Bytes (of files stored and arriving) and files (stored) that `user` has waiting to be sent."""
        found = select(func.coalesce(func.sum(PendingUpload.size), 0), func.count(PendingUpload.file_id))
        found = found.where(PendingUpload.user == user, PendingUpload.expires > held.now)
        waiting_bytes, files = (await held.session.execute(found)).one()
        return int(waiting_bytes), files

    @staticmethod
    async def add_upload(held: Held, upload: str, user: str, session_id: str, size: int, expires: float) -> None:
        held.session.add(PendingUpload(id=upload, user=user, session_id=session_id, size=size, expires=expires))
        await held.session.flush()

    async def upload_stored(self, upload: str, file_id: str, size: int) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                update(PendingUpload).where(PendingUpload.id == upload).values(file_id=file_id, size=size)
            )

    async def forget_uploads(
        self, *, uploads: Iterable[str] = (), file_ids: Iterable[str] = (), session_ids: Iterable[str] = ()
    ) -> None:
        """No longer pending: uploads that failed, files sent with a message, every file of ended sessions. Most
        messages send no file: they cost no write (SQLite has one writer for every process)."""
        uploads, file_ids, session_ids = list(uploads), list(file_ids), list(session_ids)
        if not (uploads or file_ids or session_ids):
            return
        async with self.sessions.begin() as session:
            await session.execute(
                delete(PendingUpload).where(
                    PendingUpload.id.in_(uploads)
                    | PendingUpload.file_id.in_(file_ids)
                    | PendingUpload.session_id.in_(session_ids)
                )
            )
