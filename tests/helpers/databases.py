"""Databases for tests and benchmarks: a fresh PostgreSQL database per use, and a thread's rows to compare."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.helpers.requires import missing

POSTGRES_URL = os.environ.get("LOUPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def postgres_database(prefix: str = "loupe_test") -> AsyncIterator[str]:
    """A new, empty database on LOUPE_TEST_POSTGRES_URL's server, dropped afterwards.

    Without a server it skips the test with the reason, or fails it when CI is set: CI must test
    PostgreSQL.
    """
    import asyncpg

    admin_url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    try:
        admin = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        missing(f"PostgreSQL not reachable at {admin_url} ({error}); set LOUPE_TEST_POSTGRES_URL", "PostgreSQL")
    name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def thread_rows(sessions: async_sessionmaker[AsyncSession], thread_id: str) -> dict[str, list[tuple]]:
    """Every row of a thread, every column, in a stable order: to compare before and after an attack."""
    from chat.store import schema

    tables = [schema.Thread, schema.Step, schema.Element, schema.Feedback, schema.Generation]
    tables += [schema.Comparison, schema.Correction, schema.Battle]
    found = {}
    async with sessions() as session:
        for table in tables:
            key = table.id if table is schema.Thread else table.thread_id
            result = await session.execute(select(table.__table__).where(key == thread_id).order_by(table.id))
            found[table.__tablename__] = [tuple(row) for row in result]
    return found


async def quiet_thread_rows(
    sessions: async_sessionmaker[AsyncSession], thread_id: str, timeout: float = 30
) -> dict[str, list[tuple]]:
    """A thread's rows once the writes still on their way have landed (Chainlit ends a run's step in the
    background, after the answer has reached the client): two reads a second apart agree."""
    rows = await thread_rows(sessions, thread_id)
    async with asyncio.timeout(timeout):
        while True:
            await asyncio.sleep(1)
            again = await thread_rows(sessions, thread_id)
            if again == rows:
                return rows
            rows = again
