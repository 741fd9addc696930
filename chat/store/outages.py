"""Riding out a database outage: a write is tried again until the database answers, for a while.

A PostgreSQL restart, a failover or a locked SQLite file makes every write fail for seconds. A user's
answer or rating written in that moment was lost, though the page had shown it (issue 22). So writes
run through `Patience`: a write that fails because the database cannot be reached is tried again,
waiting longer each time, until its patience runs out; then the error is raised for the caller to
tell the user. Only the whole transaction is tried again (it rolled back), and every write Loupe
repeats this way is an upsert or a delete, so a try that did commit before its connection broke is
harmless to repeat.

A failure of the write itself (a constraint, a refused id) is no outage and is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger("loupe.store")
T = TypeVar("T")
P = ParamSpec("P")

# PostgreSQL's SQLSTATE classes of "the server is not there": 08 connection exceptions, 57P01-57P03
# (shut down by an administrator, crashed, still starting), 53300 too many connections.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# The first retry comes soon (a blip is over in a fraction of a second), later ones further apart
# (an outage of minutes is not hammered), never more than LONGEST_RETRY_S apart, so the write lands
# within that long of the database's return.
FIRST_RETRY_S = 0.1
LONGEST_RETRY_S = 2.0


# What a client is told to wait after a write gave up: about as long as a database restart takes.
RETRY_AFTER_S = 5


class Unavailable(RuntimeError):
    """The database could not be reached within a write's patience."""


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the database could not be reached (rather than that the write was wrong)."""
    if isinstance(error, Unavailable):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:  # SQLAlchemy's error, the adapter's, the driver's
        seen.add(id(cause))
        if isinstance(cause, OSError):  # refused, reset, timed out: asyncpg raises these from connect
            return True
        if isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause):  # past the busy timeout
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(UNREACHABLE_SQLSTATES):
            return True
        if type(cause).__name__ in ("ConnectionDoesNotExistError", "InterfaceError") and "closed" in str(cause):
            return True  # asyncpg: the connection went away under a query
        cause = getattr(cause, "orig", None) or cause.__cause__
    return False


class Patience:
    """Writes that try again across an outage, each for at most `seconds`, and at most `most_waiting`
    of them waiting at once: past that, a write fails at once, so an outage cannot grow memory without
    bound (each waiting write holds its data) and the users of the ones refused are told."""

    def __init__(self, seconds: float, most_waiting: int) -> None:
        self.seconds, self.most_waiting = seconds, most_waiting
        self.waiting = 0

    async def run(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """`write()` (one whole transaction), tried again while the database cannot be reached; raises
        Unavailable once the patience is spent (or too many writes wait already)."""
        deadline, delay, waited = time.monotonic() + self.seconds, FIRST_RETRY_S, False
        try:
            while True:
                try:
                    result = await write()
                except Exception as error:
                    if not unreachable(error):
                        raise
                    if time.monotonic() + delay > deadline or (not waited and self.waiting >= self.most_waiting):
                        raise Unavailable(f"{what}: the database could not be reached ({error!r})") from error
                    if not waited:
                        self.waiting, waited = self.waiting + 1, True
                        log.warning("Database unreachable: %s waits for it (%d waiting): %r", what, self.waiting, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LONGEST_RETRY_S)
                else:
                    if waited:
                        log.info("Database back: %s stored", what)
                    return result
        finally:
            if waited:
                self.waiting -= 1


def patient(patience: Patience, what: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """A write (a coroutine function that is one whole transaction) run with `patience`."""

    def decorate(write: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @wraps(write)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await patience.run(lambda: write(*args, **kwargs), what)

        return run

    return decorate


# Each waiting write holds its data (a long answer: ~100 KB): at most this many of each kind wait, ~100 MB.
MOST_WAITING_WRITES = 1000
# A person who clicked (a rating, a vote, a reason) waits this long for the database, then is told to try
# again (503 with Retry-After): past it, a browser's request is as good as failed anyway. What Chainlit
# writes in the background as a chat goes on waits LOUPE_WRITE_RETRY_S (chat/ui/datalayer.py).
CLICKS = Patience(seconds=10, most_waiting=MOST_WAITING_WRITES)
