"""Alembic environment: runs migrations over Loupe's async engine (SQLite or PostgreSQL).

Every Loupe process migrates at start-up, and several may start at once (replicas, `make run` beside
`python -m chat migrate`). Each upgrade therefore runs alone: it holds the database's migration lock from
before it reads the schema's revision until it is done, so a process that waited finds the schema at head
and does nothing, instead of creating the same tables again and failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from chat.settings import get_settings
from chat.store.database import DatabaseUnreachable, create_engine
from chat.store.schema import Base, is_orm_object

target_metadata = Base.metadata
# PostgreSQL's advisory locks are named by a 64-bit number that every process agrees on; any constant no other
# program takes on Loupe's database will do: this one is "Loupe" in ASCII.
MIGRATION_LOCK = int.from_bytes(b"Loupe")
# How long an SQLite upgrade waits for another process's: copying a large database's tables (SQLite alters a
# table by copying it) can take minutes, and a process starting beside one should wait it out, not fail.
SQLITE_MIGRATION_WAIT_MS = 15 * 60_000


def run_migrations(connection: Connection) -> None:
    with migrating_alone(connection):
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
            compare_type=True,
            include_name=is_orm_object,  # the full-text search objects are the migration's, not the ORM's
        )
        with context.begin_transaction():
            context.run_migrations()


@contextmanager
def migrating_alone(connection: Connection) -> Iterator[None]:
    """Hold the database's migration lock on `connection` while the body reads the revision and migrates.

    PostgreSQL: a session advisory lock, which outlives the transactions Alembic makes; after a failure it ends
    with the connection (run_online disposes of the engine). SQLite: a write transaction begun at once (BEGIN
    IMMEDIATE) around the whole upgrade, which Alembic then leaves to us (it sees a transaction under way):
    another process's waits for it, and a failed upgrade leaves nothing behind.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_lock(MIGRATION_LOCK)))
        connection.commit()  # the lock stays; Alembic begins and commits its own transaction
        yield
        connection.execute(select(func.pg_advisory_unlock(MIGRATION_LOCK)))
    else:
        with connection.begin():
            connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_MIGRATION_WAIT_MS}")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield


async def run_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
    engine = create_engine(url)
    try:
        try:
            connection = await engine.connect()
        except (OSError, DBAPIError) as error:
            raise DatabaseUnreachable(url, error) from error
        try:
            await connection.run_sync(run_migrations)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Loupe's migrations run online only: they need a database connection.")
asyncio.run(run_online())
