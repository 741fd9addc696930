"""Limits as pure rules, on a clock the test moves: message rate, login throttling, chat settings."""

from __future__ import annotations

import asyncio
import math

from chat.settings import checked_chat_settings
from chat.ui.limits import (
    FIRST_WAIT_S,
    FREE_FAILURES,
    FREE_FAILURES_PER_ADDRESS,
    LONGEST_WAIT_S,
    LoginThrottle,
    RateLimit,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limit_admits_its_limit_per_window_and_says_how_long_to_wait() -> None:
    clock = Clock()
    rate = RateLimit(3, 60, clock)
    assert [rate.admit("ada") for _ in range(3)] == [None, None, None]
    clock.now += 10
    assert rate.admit("ada") == 50  # the oldest of the three leaves the window in 50 s
    assert rate.admit("bob") is None  # each key has its own window
    clock.now += 50
    assert rate.admit("ada") is None


def test_failed_logins_wait_longer_and_longer_after_the_free_ones() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    waits = []
    for _ in range(FREE_FAILURES + 12):
        waits.append(throttle.failed("ada", "10.0.0.1"))
        clock.now += waits[-1]  # the guesser waits each time, as told
    assert waits[:FREE_FAILURES] == [0] * FREE_FAILURES
    assert waits[FREE_FAILURES : FREE_FAILURES + 4] == [1, 2, 4, 8]
    assert max(waits) == LONGEST_WAIT_S
    throttle.failed("ada", "10.0.0.1")
    assert throttle.wait("ada", "10.0.0.2") == LONGEST_WAIT_S  # the name is held from any address
    assert throttle.wait("bob", "10.0.0.3") == 0  # another name from another address is not


def test_an_address_guessing_many_names_is_held_back_too() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for n in range(FREE_FAILURES_PER_ADDRESS):
        assert throttle.failed(f"user{n}", "10.0.0.9") == 0
    assert throttle.failed("one-more", "10.0.0.9") == 1
    assert throttle.wait("someone-else", "10.0.0.9") == 1


def test_guesses_sent_at_once_count_while_they_are_checked() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    admitted = [throttle.reserve("ada", "10.0.0.1") for _ in range(60)]
    assert admitted == [True] * FREE_FAILURES + [False] * (60 - FREE_FAILURES)
    for _ in range(FREE_FAILURES):
        throttle.failed("ada", "10.0.0.1")
        throttle.release("ada", "10.0.0.1")
    # As one after another: a sixth is checked, and its failure starts the first wait.
    assert [throttle.reserve("ada", "10.0.0.1"), throttle.reserve("ada", "10.0.0.1")] == [True, False]
    assert throttle.failed("ada", "10.0.0.1") == 1
    throttle.release("ada", "10.0.0.1")
    assert throttle.wait("ada", "10.0.0.1") == 1


def test_an_address_guessing_many_names_at_once_is_held_back_too() -> None:
    throttle = LoginThrottle(Clock())
    admitted = [throttle.reserve(f"user{n}", "10.0.0.9") for n in range(FREE_FAILURES_PER_ADDRESS + 5)]
    assert admitted.count(True) == FREE_FAILURES_PER_ADDRESS
    assert throttle.reserve("user1", "10.0.0.8"), "each name is held back apart from the address"


def test_a_checked_login_no_longer_counts_in_flight() -> None:
    throttle = LoginThrottle(Clock())
    for _ in range(FREE_FAILURES):
        assert throttle.reserve("ada", "10.0.0.1")
    throttle.succeeded("ada", "10.0.0.1")
    for _ in range(FREE_FAILURES):
        throttle.release("ada", "10.0.0.1")
        throttle.release("ada", "10.0.0.1")  # one release too many counts nothing
    assert [throttle.reserve("ada", "10.0.0.1") for _ in range(FREE_FAILURES + 1)] == [True] * FREE_FAILURES + [False]


async def test_logins_sent_at_once_past_the_free_failures_wait_for_the_earlier_ones() -> None:
    """Thirty colleagues behind one address sign in together: those past the address's free failures
    wait until the first ones are checked (and right), and then are checked too; none is refused."""
    throttle = LoginThrottle()

    async def sign_in(name: str) -> float:
        if wait := await throttle.admit(name, "10.0.0.9"):
            return wait
        await asyncio.sleep(0.01)  # the password check
        throttle.succeeded(name, "10.0.0.9")
        throttle.release(name, "10.0.0.9")
        return 0.0

    waits = await asyncio.gather(*(sign_in(f"user{n}") for n in range(FREE_FAILURES_PER_ADDRESS + 10)))
    assert waits == [0.0] * (FREE_FAILURES_PER_ADDRESS + 10)


async def test_guesses_that_waited_are_refused_once_the_earlier_ones_failed() -> None:
    throttle = LoginThrottle()

    async def guess() -> float:
        if wait := await throttle.admit("ada", "10.0.0.1"):
            return wait
        await asyncio.sleep(0.01)
        throttle.failed("ada", "10.0.0.1")
        throttle.release("ada", "10.0.0.1")
        return 0.0

    waits = await asyncio.gather(*(guess() for _ in range(20)))
    assert waits.count(0.0) == FREE_FAILURES + 1, "the free failures, then one whose failure starts the wait"
    assert all(wait >= FIRST_WAIT_S / 2 for wait in waits if wait), waits


def test_a_right_password_clears_the_names_failures() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(FREE_FAILURES):
        throttle.failed("ada", "10.0.0.1")
    throttle.succeeded("ada", "10.0.0.1")
    assert throttle.failed("ada", "10.0.0.1") == 0


def test_chat_settings_out_of_range_are_refused_and_the_rest_kept() -> None:
    values = {
        "temperature": "abc",
        "top_p": 0.9,
        "max_new_tokens": 64.0,
        "repetition_penalty": math.nan,
        "system_prompt": "concise",
        "evil": {"x": 1},
    }
    valid, refused = checked_chat_settings(values, {"concise", "engineering"})
    assert valid == {"top_p": 0.9, "max_new_tokens": 64, "system_prompt": "concise"}
    assert refused == ["temperature", "repetition_penalty", "evil"]
    assert checked_chat_settings({"temperature": True, "system_prompt": "nope"}, {"concise"}) == (
        {},
        ["temperature", "system_prompt"],
    )
    # The model's own default may lie outside a slider's range (Qwen2-VL-Instruct's top_p: 0.001).
    assert checked_chat_settings({"top_p": 0.001}, set(), {"top_p": 0.001}) == ({"top_p": 0.001}, [])
