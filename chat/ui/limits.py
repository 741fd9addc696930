"""How often one user (or one address) may do something: send messages, and try passwords.

Both are counted in memory, per server process: a limit exists to keep one client from taking
the whole server, and a restart forgetting the counts costs an attacker a restart, not a bypass.
Both answer "wait this long" instead of waiting themselves, so the event loop and every other
user go on while someone is held back. The one wait taken here is a login's, for the logins sent
with it to be checked (`LoginThrottle.admit`): it is short, and it is what lets a team behind one
address sign in at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class RateLimit:
    """At most `limit` events per key in any `window_s` seconds (a sliding window)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._events: dict[str, deque[float]] = {}

    def admit(self, key: str) -> float | None:
        """Count an event for `key` and return None, or return the seconds until one is allowed."""
        now = self.clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window_s - now
        events.append(now)
        return None


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
# Names and addresses remembered at most (~200 bytes each): guesses over ever-new names cannot grow memory.
MAX_TRACKED = 100_000
# A login whose free failures are all taken by attempts being checked waits for those (looking again this
# often), for at most LOGIN_QUEUE_S: fifty colleagues behind one address signing in at once queue for a few
# seconds (argon2 checks run a few at a time anyway), while guesses sent at once find the address blocked
# as soon as the first ones have failed. Past the queue's patience the login is told to retry in
# IN_FLIGHT_WAIT_S, about as long as a check takes.
QUEUE_POLL_S = 0.05
LOGIN_QUEUE_S = 30.0
IN_FLIGHT_WAIT_S = 1.0


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0
    in_flight: int = 0  # attempts being checked now, each a failure to come as far as anyone knows


@dataclass
class LoginThrottle:
    """Failed logins per user name and per client address, with a growing wait after the free ones.

    A login is `reserve`d (or `admit`ted) before its password is checked and `release`d after (with
    `failed` or `succeeded` in between): attempts sent at once count while they are checked, so sixty
    guesses sent together get the free failures checked and the rest refused, as they would one by one.
    """

    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], _Failures] = field(default_factory=dict)

    def wait(self, name: str, address: str) -> float:
        """Seconds until a login for `name` from `address` may be tried; 0 when it may now."""
        now = self.clock()
        return max(0.0, *(self._current(key, now).blocked_until - now for key in self._keys(name, address)))

    async def admit(self, name: str, address: str) -> float:
        """Reserve a login and return 0, waiting for attempts being checked if need be; or return the
        seconds the client should wait (blocked, or the queue's patience ran out), counting nothing."""
        deadline = self.clock() + LOGIN_QUEUE_S
        while not (wait := self.wait(name, address)):
            if self.reserve(name, address):
                return 0.0
            if self.clock() >= deadline:
                return IN_FLIGHT_WAIT_S
            await asyncio.sleep(QUEUE_POLL_S)
        return wait

    def reserve(self, name: str, address: str) -> bool:
        """Count a login about to be checked (True), or not while the attempts being checked could use
        up the free failures (False). Call it once `wait` is 0.

        While the attempts being checked could still all fail within the free failures, more may join
        them; past that, one at a time, so each failure starts its wait before the next is checked.
        """
        now = self.clock()
        if len(self._failures) > MAX_TRACKED:  # forget the ones not holding anybody back now
            self._failures = {
                key: kept for key, kept in self._failures.items() if kept.blocked_until > now or kept.in_flight
            }
        counted = [(self._current(key, now), self._free(key)) for key in self._keys(name, address)]
        if any(failures.in_flight >= max(1, free - failures.count) for failures, free in counted):
            return False
        for failures, _ in counted:
            failures.in_flight += 1
        return True

    def release(self, name: str, address: str) -> None:
        """A reserved login has been checked (and counted with `failed` or `succeeded`)."""
        for key in self._keys(name, address):
            if (failures := self._failures.get(key)) is not None and failures.in_flight:
                failures.in_flight -= 1

    def failed(self, name: str, address: str) -> float:
        """Count a failed login; returns the wait it starts (0 while within the free failures)."""
        now = self.clock()
        for key in self._keys(name, address):
            failures = self._current(key, now)
            failures.count += 1
            failures.last = now
            if failures.count > (free := self._free(key)):
                wait = min(LONGEST_WAIT_S, FIRST_WAIT_S * 2 ** (failures.count - free - 1))
                failures.blocked_until = now + wait
        return self.wait(name, address)

    def succeeded(self, name: str, address: str) -> None:
        """A right password: the name starts afresh (the address keeps its count, it may be shared)."""
        if (failures := self._failures.get(("name", name.casefold()))) is not None:
            failures.count, failures.blocked_until = 0, 0.0  # its other attempts may still be in flight

    def _keys(self, name: str, address: str) -> list[tuple[str, str]]:
        return [("name", name.casefold()), ("address", address)]

    @staticmethod
    def _free(key: tuple[str, str]) -> int:
        return FREE_FAILURES if key[0] == "name" else FREE_FAILURES_PER_ADDRESS

    def _current(self, key: tuple[str, str], now: float) -> _Failures:
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = _Failures()
        elif not failures.in_flight and now - failures.last > FAILURE_MEMORY_S:
            failures.count, failures.blocked_until = 0, 0.0
        return failures


def retry_after(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
