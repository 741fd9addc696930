"""How often one user (or one address) may do something: send messages, and try passwords.

Both are counted in memory, per server process: a limit exists to keep one client from taking
the whole server, and a restart forgetting the counts costs an attacker a restart, not a bypass.
Both answer "wait this long" instead of waiting themselves, so the event loop and every other
user go on while someone is held back.
"""

from __future__ import annotations

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


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Failed logins per user name and per client address, with a growing wait after the free ones."""

    clock: Callable[[], float] = time.monotonic
    _failures: dict[tuple[str, str], _Failures] = field(default_factory=dict)

    def wait(self, name: str, address: str) -> float:
        """Seconds until a login for `name` from `address` may be tried; 0 when it may now."""
        now = self.clock()
        return max(0.0, *(self._current(key, now).blocked_until - now for key in self._keys(name, address)))

    def failed(self, name: str, address: str) -> float:
        """Count a failed login; returns the wait it starts (0 while within the free failures)."""
        now = self.clock()
        if len(self._failures) > MAX_TRACKED:  # forget the ones not holding anybody back now
            self._failures = {key: kept for key, kept in self._failures.items() if kept.blocked_until > now}
        for key in self._keys(name, address):
            failures = self._current(key, now)
            failures.count += 1
            failures.last = now
            free = FREE_FAILURES if key[0] == "name" else FREE_FAILURES_PER_ADDRESS
            if failures.count > free:
                wait = min(LONGEST_WAIT_S, FIRST_WAIT_S * 2 ** (failures.count - free - 1))
                failures.blocked_until = now + wait
        return self.wait(name, address)

    def succeeded(self, name: str, address: str) -> None:
        """A right password: the name starts afresh (the address keeps its count, it may be shared)."""
        self._failures.pop(("name", name.casefold()), None)

    def _keys(self, name: str, address: str) -> list[tuple[str, str]]:
        return [("name", name.casefold()), ("address", address)]

    def _current(self, key: tuple[str, str], now: float) -> _Failures:
        failures = self._failures.get(key)
        if failures is None or now - failures.last > FAILURE_MEMORY_S:
            failures = self._failures[key] = _Failures()
        return failures


def retry_after(seconds: float) -> str:
    """An HTTP Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
