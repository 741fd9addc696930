"""What every module that reads or writes Loupe's tables shares: times, upserts, ownership.

Times are stored as naive UTC. An upsert is one INSERT ... ON CONFLICT, which SQLite and
PostgreSQL both speak. A row of a thread belongs to the thread's owner: `owned_thread` is the
one query that says whether a step is in a thread of a given user, for every caller.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chat.store.schema import Step, Thread, User


class NotYours(LookupError):
    """The row does not exist, or is not in a thread of the user asking."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_time(text: str | None) -> datetime | None:
    """An ISO date or time ('2026-11-01', '...T12:00+09:00', Chainlit's '...Z') as naive UTC; no zone means UTC."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def iso(value: datetime | None) -> str | None:
    """Naive UTC as Chainlit writes times ('...Z')."""
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


def dialect_insert(session: AsyncSession, table: type) -> Any:
    """INSERT with ON CONFLICT support in the session's dialect (SQLite and PostgreSQL share it)."""
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def owned_by(identifier: str) -> Select[tuple[str]]:
    """SQL: the ids of the threads of the user `identifier`."""
    return select(Thread.id).join(User, User.id == Thread.user_id).where(User.identifier == identifier)


async def owned_thread(session: AsyncSession, user: str, step_id: str) -> Thread:
    """The thread of step `step_id` if it is a thread of `user`; NotYours otherwise (or if there is no such step)."""
    thread = await session.scalar(
        select(Thread).join(Step, Step.thread_id == Thread.id).where(Step.id == step_id, Thread.id.in_(owned_by(user)))
    )
    if thread is None:
        raise NotYours(step_id)
    return thread
