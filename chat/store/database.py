"""The database connection: an async SQLAlchemy engine for LOUPE_DATABASE_URL, migrated with Alembic.

SQLite (the default, a file in the data directory) runs in WAL mode with a busy timeout, so
readers never block the writer and concurrent writers wait instead of failing. SQLite has one writer at a
time, and a transaction holds it across every await between its first write and its commit: on a busy event
loop (answers streaming), a second or more. So a process's own writes take turns before they take a
connection (SqliteSessions): one waiting in SQLite's busy timeout held one of the pool's 15 connections
all along, and with eight users streaming the waiting writes took them all, past the busy timeout
("database is locked"), while every read (a login's count) waited for a connection until the pool's
timeout. Writes of other processes on the same file still wait out the busy timeout.

Every process migrates when it starts; a migration that cannot run stops that process, so upgrade() says
in one sentence what went wrong and what to do about it (MigrationFailed), for the operator's log.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class MigrationFailed(RuntimeError):
    """The schema could not be brought up to date; the message says why and what to do."""


class DatabaseUnreachable(MigrationFailed):
    """No connection to the database (raised by migrations/env.py, which makes it)."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(
            f"cannot connect to the database {shown(url)} ({reason(error)}); check LOUPE_DATABASE_URL, and that "
            "the database server is running and lets this user in"
        )


def shown(url: str) -> str:
    """A database URL fit for a log: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def reason(error: BaseException) -> str:
    """An error in one line: the driver's own message, without SQLAlchemy's statement and links."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    return (str(cause) or type(cause).__name__).splitlines()[0]


def create_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL mode
    cursor.close()


class SqliteSessions(async_sessionmaker[AsyncSession]):
    """Sessions on a SQLite file: each transaction of `begin()` waits for this process's one at a time (per
    event loop) before it takes a connection; sessions without `begin()` only read, and never wait."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, expire_on_commit=False)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def begin(self) -> AbstractAsyncContextManager[AsyncSession]:  # type: ignore[override]
        return self._begin_in_turn()

    @asynccontextmanager
    async def _begin_in_turn(self) -> AsyncIterator[AsyncSession]:
        turn = self._turns.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with turn, super().begin() as session:
            yield session


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    if engine.dialect.name == "sqlite":
        return SqliteSessions(engine)
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Blocking; safe inside or outside an event loop, and beside other
    processes' upgrades (migrations/env.py runs one at a time). MigrationFailed if it cannot."""
    try:
        _in_own_thread(command.upgrade, alembic_config(url), revision)
    except MigrationFailed:
        raise
    except CommandError as error:  # Alembic's: the database names a revision that is not in migrations/
        raise MigrationFailed(
            f"the database {shown(url)} is at a revision this Loupe does not have ({error}): a newer Loupe "
            "migrated it; run that version, or restore the database from a backup taken before"
        ) from error
    except Exception as error:
        raise MigrationFailed(
            f"migrating the database {shown(url)} failed ({reason(error)}); nothing of the failed upgrade was "
            "kept: fix the cause and start again"
        ) from error


def downgrade(url: str, revision: str) -> None:
    _in_own_thread(command.downgrade, alembic_config(url), revision)


def _in_own_thread(*call: Any) -> None:
    """Alembic's env.py runs its own event loop, which cannot nest in a running one."""
    with ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(*call).result()
