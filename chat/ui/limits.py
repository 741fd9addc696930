"""How often one user (or one address) may do something (send messages, try passwords), and how many
uploads they may leave waiting: the rules, and the limits that count by them for the whole team.

The rules are pure: a record and the time in, a decision and the new record out (`sliding_window`,
`LoginRecords`, `UploadQuota.refuses`), tested on a clock the test moves. The limits keep the records in
the database (chat/store/limits.py), where every Loupe process on it counts together: two processes, or
ten, let a user send the same messages, try the same passwords and leave the same uploads waiting as one.
Each count holds its keys' rows while it decides, so two processes never both take the last slot; times
are the database's clock. A limit exists to keep one client from taking the whole server; a database
that cannot be reached fails the request it guards with a message that says so, never a bare 500.

The limits answer "wait this long" instead of waiting themselves, so the event loop and every other user
go on while someone is held back. The one wait taken here is a login's, for the logins sent with it to be
checked (`LoginThrottle.admit`): it is short, and it is what lets a team behind one address sign in at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from chat.store.limits import Held, LimitStore

# What a limit's database failing raises: SQLAlchemy's errors, and the driver's own when it cannot connect.
DATABASE_ERRORS = (SQLAlchemyError, OSError)
T = TypeVar("T")


def record_key(kind: str, value: str) -> str:
    """A limit record's key: its kind and a hash of what it counts (names typed at a login can be any length,
    and the table need not hold them)."""
    return f"{kind}:{hashlib.sha256(value.encode()).hexdigest()}"


# Messages ---------------------------------------------------------------------------------------


def sliding_window(times: list[float], now: float, limit: int, window_s: float) -> tuple[list[float], float | None]:
    """At most `limit` events in any `window_s` seconds: the times of the events still in the window (with
    this one if it is admitted), and None (admitted) or the seconds until one is."""
    kept = [at for at in times if at > now - window_s]
    if len(kept) >= limit:
        return kept, kept[0] + window_s - now
    return [*kept, now], None


class RateLimit:
    """At most `limit` events per key in any `window_s` seconds, counted by every process on the database."""

    def __init__(self, store: LimitStore, limit: int, window_s: float) -> None:
        self.store, self.limit, self.window_s = store, limit, window_s

    async def admit(self, key: str) -> float | None:
        """Count an event for `key` and return None, or return the seconds until one is allowed."""
        record = record_key("messages", key)
        async with self.store.hold([record]) as held:
            times, wait = sliding_window(held.states[record].get("times", []), held.now, self.limit, self.window_s)
            await held.keep(record, {"times": times}, expires=times[-1] + self.window_s)
        return wait


# Logins -----------------------------------------------------------------------------------------

# A person mistypes a password a few times; a script tries thousands. Five free tries, then each
# further failure doubles the wait (1 s, 2 s, 4 s, ...), capped at 15 minutes: 100 guesses then
# take about a day instead of 17 seconds, while the account's owner is never locked out for long.
FREE_FAILURES = 5
FIRST_WAIT_S = 1.0
LONGEST_WAIT_S = 15 * 60
# An address is shared by everyone behind one NAT or proxy, so it gets more free failures than a name.
FREE_FAILURES_PER_ADDRESS = 20
# Failures older than this are forgotten: an occasional typo over weeks never adds up to a wait.
FAILURE_MEMORY_S = 24 * 60 * 60
# A login counts while it is checked, for at most this long: a check queued behind a whole address's free
# failures (20 argon2 checks of ~0.25 s, a few times that on a busy host) ends well within it, and the
# attempts of a process killed while checking them hold a name back no longer than this.
IN_FLIGHT_MEMORY_S = 120.0
# A login whose free failures are all taken by attempts being checked waits for those, for at most
# LOGIN_QUEUE_S: fifty colleagues behind one address signing in at once queue for a few seconds (argon2
# checks run a few at a time anyway), while guesses sent at once find the address blocked as soon as the
# first ones have failed. It looks again as soon as a login is checked in this process, and every
# QUEUE_POLL_S for those checked in other processes (a look is one read, for each login waiting). Past
# the queue's patience the login is told to retry in IN_FLIGHT_WAIT_S, about as long as a check takes.
QUEUE_POLL_S = 0.25
LOGIN_QUEUE_S = 30.0
IN_FLIGHT_WAIT_S = 1.0


@dataclass
class Failures:
    """The failed logins of one name or one address."""

    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0
    # Attempts being checked now (each a failure to come as far as anyone knows): a ticket each, since when.
    in_flight: dict[str, float] = field(default_factory=dict)

    def current(self, now: float) -> Failures:
        """Itself, with what is too old to count forgotten: attempts in flight too long, and failures
        after a day without any (unless attempts are still being checked)."""
        self.in_flight = {ticket: since for ticket, since in self.in_flight.items() if now - since < IN_FLIGHT_MEMORY_S}
        if not self.in_flight and now - self.last > FAILURE_MEMORY_S:
            self.count, self.blocked_until = 0, 0.0
        return self

    def expires(self) -> float | None:
        """When the record holds nobody back any more; None when it already does not (it need not be kept)."""
        held = [since + IN_FLIGHT_MEMORY_S for since in self.in_flight.values()]
        if self.count:
            held.append(self.last + FAILURE_MEMORY_S)  # blocked_until comes well before: at most LONGEST_WAIT_S
        return max(held, default=None)


@dataclass
class LoginRecords:
    """The rules of login throttling, on the two records a login counts on: its name's and its address's.

    A login is `reserve`d before its password is checked and `release`d after (with `failed` or
    `succeeded` in between): attempts sent at once count while they are checked, so sixty guesses sent
    together get the free failures checked and the rest refused, as they would one by one.
    """

    name: Failures
    address: Failures

    def counted(self, now: float) -> list[tuple[Failures, int]]:
        """Each record (with what it forgets by `now` forgotten) and its free failures."""
        return [(self.name.current(now), FREE_FAILURES), (self.address.current(now), FREE_FAILURES_PER_ADDRESS)]

    def wait(self, now: float) -> float:
        """Seconds until the login may be tried; 0 when it may now."""
        return max(0.0, *(failures.blocked_until - now for failures, _ in self.counted(now)))

    def has_room(self, now: float) -> bool:
        """Whether another attempt may be checked beside those being checked: while they could still all fail
        within the free failures, more may join them; past that, one at a time, so each failure starts its
        wait before the next is checked."""
        return all(len(failures.in_flight) < max(1, free - failures.count) for failures, free in self.counted(now))

    def reserve(self, ticket: str, now: float) -> bool:
        """Count an attempt about to be checked under `ticket` (True), or not when there is no room (False).
        Call it once `wait` is 0."""
        if not self.has_room(now):
            return False
        for failures, _ in self.counted(now):
            failures.in_flight[ticket] = now
        return True

    def release(self, ticket: str) -> None:
        """A reserved attempt has been checked (and counted with `failed` or `succeeded`)."""
        for failures in (self.name, self.address):
            failures.in_flight.pop(ticket, None)

    def failed(self, now: float) -> float:
        """Count a failed login; returns the wait it starts (0 while within the free failures)."""
        for failures, free in self.counted(now):
            failures.count += 1
            failures.last = now
            if failures.count > free:
                failures.blocked_until = now + min(LONGEST_WAIT_S, FIRST_WAIT_S * 2 ** (failures.count - free - 1))
        return self.wait(now)

    def succeeded(self) -> None:
        """A right password: the name starts afresh (the address keeps its count, it may be shared)."""
        self.name.count, self.name.blocked_until = 0, 0.0  # its other attempts may still be in flight


class LoginThrottle:
    """Failed logins per user name and per client address, with a growing wait after the free ones
    (`LoginRecords`), counted by every process on the database."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self._checked_here = asyncio.Event()  # set (and replaced) each time a login is checked in this process

    async def admit(self, name: str, address: str) -> tuple[str, float]:
        """Reserve a login: its ticket and 0, having waited for attempts being checked if need be; or the
        seconds the client should wait (blocked, or the queue's patience ran out), counting nothing.

        It looks first, holding nothing, and holds the records only to reserve when there looks to be room:
        a burst of guesses finds the name blocked without queueing for its rows. The queue's patience is
        counted on this process's clock: it is this request's alone.
        """
        ticket, deadline = uuid.uuid4().hex, time.monotonic() + LOGIN_QUEUE_S

        def try_to_reserve(records: LoginRecords, now: float) -> float | None:
            return records.wait(now) or (0.0 if records.reserve(ticket, now) else None)

        while True:
            records, now = await self._peek(name, address)
            if wait := records.wait(now):
                return ticket, wait
            if records.has_room(now) and (wait := await self._counting(name, address, try_to_reserve)) is not None:
                return ticket, wait
            if time.monotonic() >= deadline:
                return ticket, IN_FLIGHT_WAIT_S
            await self._checked_here_or(QUEUE_POLL_S)

    async def _checked_here_or(self, timeout: float) -> None:
        """Until a login is checked in this process, or `timeout` passes (for those checked in others)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._checked_here.wait(), timeout)

    async def checked(self, name: str, address: str, ticket: str, right: bool | None) -> float:
        """A reserved login has been checked: its password was right, wrong, or (None) the check itself
        failed. Returns the wait a wrong one starts (0 while within the free failures)."""

        def count(records: LoginRecords, now: float) -> float:
            wait = 0.0
            if right:
                records.succeeded()
            elif right is not None:
                wait = records.failed(now)
            records.release(ticket)
            return wait

        try:
            return await self._counting(name, address, count)
        finally:  # the logins waiting here look again at once
            self._checked_here.set()
            self._checked_here = asyncio.Event()

    def _keys(self, name: str, address: str) -> tuple[str, str]:
        return record_key("login-name", name.casefold()), record_key("login-address", address)

    async def _counting(self, name: str, address: str, rule: Callable[[LoginRecords, float], T]) -> T:
        """`rule` applied to the login's records, held until they are written back."""
        keys = self._keys(name, address)
        async with self.store.hold(keys) as held:
            records = LoginRecords(*(Failures(**held.states[key]) for key in keys))
            decided = rule(records, held.now)
            for key, failures in zip(keys, (records.name, records.address), strict=True):
                await keep(held, key, failures)
        return decided

    async def _peek(self, name: str, address: str) -> tuple[LoginRecords, float]:
        keys = self._keys(name, address)
        states, now = await self.store.peek(keys)
        return LoginRecords(*(Failures(**states[key]) for key in keys)), now


async def keep(held: Held, key: str, failures: Failures) -> None:
    """Write a login record back, or forget it once it holds nobody back."""
    if (expires := failures.expires()) is None:
        await held.drop(key)
    else:
        await held.keep(key, asdict(failures), expires)


# Uploads ----------------------------------------------------------------------------------------


@dataclass
class Quota:
    """The rule of uploads waiting to be sent: at most `max_bytes` and `max_files` per user."""

    max_bytes: int
    max_files: int

    def refuses(self, waiting_bytes: int, waiting_files: int, size: int) -> bool:
        """Whether an upload of `size` bytes goes over the quota, with these bytes (stored and arriving) and
        files (stored) waiting."""
        return waiting_files >= self.max_files or waiting_bytes + size > self.max_bytes


@dataclass
class UploadQuota(Quota):
    """Files a user has uploaded but not yet sent in a message, across all their open chats (in any process).
    An upload counts from when it is admitted (by its declared size, while it arrives), until a message sends
    it, its chat session ends, or `keep_s` (Chainlit's session timeout: it keeps a session's files no longer)."""

    store: LimitStore
    keep_s: float

    async def admit(self, user: str, session_id: str, size: int) -> str | None:
        """Count an upload of `size` bytes into `session_id` and return its id, or None if over the quota."""
        record = record_key("uploads", user)
        async with self.store.hold([record]) as held:  # the user's uploads are counted one at a time
            waiting_bytes, waiting_files = await self.store.waiting(held, user)
            await held.drop(record)
            if self.refuses(waiting_bytes, waiting_files, size):
                return None
            upload = str(uuid.uuid4())
            await self.store.add_upload(held, upload, user, session_id, size, expires=held.now + self.keep_s)
        return upload

    async def stored(self, upload: str, file_id: str, size: int) -> None:
        """The upload is stored in its session as `file_id`, of `size` bytes."""
        await self.store.upload_stored(upload, file_id, size)

    async def failed(self, upload: str) -> None:
        await self.store.forget_uploads(uploads=[upload])

    async def sent(self, file_ids: list[str]) -> None:
        """These files were sent with a message: no longer waiting."""
        await self.store.forget_uploads(file_ids=file_ids)

    async def sessions_ended(self, session_ids: list[str]) -> None:
        """These chat sessions ended, and Chainlit deleted their files."""
        await self.store.forget_uploads(session_ids=session_ids)


def retry_after(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
