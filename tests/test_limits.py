"""Limits as pure rules, on a clock the test moves: message rate, login throttling, upload quota, chat settings.

The records are kept here in dictionaries, as the database keeps them for the running limits
(tests/test_shared_limits.py counts with them in SQLite and PostgreSQL, across processes).
"""

from __future__ import annotations

import math
from collections import defaultdict

from chat.settings import checked_chat_settings
from chat.ui.limits import (
    FAILURE_MEMORY_S,
    FIRST_WAIT_S,
    FREE_FAILURES,
    FREE_FAILURES_PER_ADDRESS,
    IN_FLIGHT_MEMORY_S,
    LONGEST_WAIT_S,
    Failures,
    LoginRecords,
    Quota,
    sliding_window,
)

NOW = 1000.0


class Records:
    """The failure records of every name and address, as the database would hold them."""

    def __init__(self) -> None:
        self.names: defaultdict[str, Failures] = defaultdict(Failures)
        self.addresses: defaultdict[str, Failures] = defaultdict(Failures)

    def __call__(self, name: str, address: str) -> LoginRecords:
        return LoginRecords(self.names[name.casefold()], self.addresses[address])


def test_a_rate_limit_admits_its_limit_per_window_and_says_how_long_to_wait() -> None:
    times: list[float] = []
    for _ in range(3):
        times, wait = sliding_window(times, NOW, 3, 60)
        assert wait is None
    times, wait = sliding_window(times, NOW + 10, 3, 60)
    assert wait == 50  # the oldest of the three leaves the window in 50 s
    assert len(times) == 3, "a refused event is not counted"
    times, wait = sliding_window(times, NOW + 60, 3, 60)
    assert wait is None
    assert times == [NOW + 60], "events that left the window are forgotten"


def test_failed_logins_wait_longer_and_longer_after_the_free_ones() -> None:
    records, now = Records(), NOW
    waits = []
    for _ in range(FREE_FAILURES + 12):
        waits.append(records("ada", "10.0.0.1").failed(now))
        now += waits[-1]  # the guesser waits each time, as told
    assert waits[:FREE_FAILURES] == [0] * FREE_FAILURES
    assert waits[FREE_FAILURES : FREE_FAILURES + 4] == [1, 2, 4, 8]
    assert max(waits) == LONGEST_WAIT_S
    records("ada", "10.0.0.1").failed(now)
    assert records("ADA", "10.0.0.2").wait(now) == LONGEST_WAIT_S  # the name is held from any address
    assert records("bob", "10.0.0.3").wait(now) == 0  # another name from another address is not


def test_failures_are_forgotten_after_a_day_without_any() -> None:
    records = Records()
    for _ in range(FREE_FAILURES + 1):
        records("ada", "10.0.0.1").failed(NOW)
    assert records("ada", "10.0.0.1").wait(NOW) == FIRST_WAIT_S
    later = NOW + FAILURE_MEMORY_S + 1
    assert records("ada", "10.0.0.1").failed(later) == 0, "a day later, a typo is the first failure again"
    assert records.names["ada"].count == 1


def test_an_address_guessing_many_names_is_held_back_too() -> None:
    records = Records()
    for n in range(FREE_FAILURES_PER_ADDRESS):
        assert records(f"user{n}", "10.0.0.9").failed(NOW) == 0
    assert records("one-more", "10.0.0.9").failed(NOW) == 1
    assert records("someone-else", "10.0.0.9").wait(NOW) == 1


def test_guesses_sent_at_once_count_while_they_are_checked() -> None:
    ada = Records()("ada", "10.0.0.1")
    admitted = [ada.reserve(f"guess-{n}", NOW) for n in range(60)]
    assert admitted == [True] * FREE_FAILURES + [False] * (60 - FREE_FAILURES)
    for n in range(FREE_FAILURES):
        ada.failed(NOW)
        ada.release(f"guess-{n}")
    # As one after another: a sixth is checked, and its failure starts the first wait.
    assert [ada.reserve("sixth", NOW), ada.reserve("seventh", NOW)] == [True, False]
    assert ada.failed(NOW) == 1
    ada.release("sixth")
    assert ada.wait(NOW) == 1


def test_an_address_guessing_many_names_at_once_is_held_back_too() -> None:
    records = Records()
    admitted = [records(f"user{n}", "10.0.0.9").reserve(f"{n}", NOW) for n in range(FREE_FAILURES_PER_ADDRESS + 5)]
    assert admitted.count(True) == FREE_FAILURES_PER_ADDRESS
    assert records("user1", "10.0.0.8").reserve("elsewhere", NOW), "each name is held back apart from the address"


def test_a_checked_login_no_longer_counts_in_flight() -> None:
    ada = Records()("ada", "10.0.0.1")
    for n in range(FREE_FAILURES):
        assert ada.reserve(f"{n}", NOW)
    ada.succeeded()
    for n in range(FREE_FAILURES):
        ada.release(f"{n}")
        ada.release(f"{n}")  # one release too many counts nothing
    assert [ada.reserve(f"again-{n}", NOW) for n in range(FREE_FAILURES + 1)] == [True] * FREE_FAILURES + [False]


def test_attempts_of_a_process_that_died_while_checking_them_expire() -> None:
    """A process killed while checking logins never releases them: they stop counting after a while,
    instead of holding the name back for good."""
    ada = Records()("ada", "10.0.0.1")
    assert all(ada.reserve(f"{n}", NOW) for n in range(FREE_FAILURES))
    assert not ada.reserve("next", NOW + IN_FLIGHT_MEMORY_S - 1)
    assert ada.reserve("next", NOW + IN_FLIGHT_MEMORY_S)
    assert list(ada.name.in_flight) == ["next"]


def test_a_record_is_kept_as_long_as_it_holds_someone_back() -> None:
    ada = Records()("ada", "10.0.0.1")
    assert ada.name.expires() is None, "nothing to keep"
    ada.reserve("one", NOW)
    assert ada.name.expires() == NOW + IN_FLIGHT_MEMORY_S
    ada.failed(NOW)
    ada.release("one")
    assert ada.name.expires() == NOW + FAILURE_MEMORY_S
    ada.succeeded()
    assert ada.name.expires() is None
    assert ada.address.expires() == NOW + FAILURE_MEMORY_S, "the address keeps its count"


def test_a_right_password_clears_the_names_failures() -> None:
    ada = Records()("ada", "10.0.0.1")
    for _ in range(FREE_FAILURES):
        ada.failed(NOW)
    ada.succeeded()
    assert ada.failed(NOW) == 0


def test_the_upload_quota_counts_bytes_and_files_waiting() -> None:
    quota = Quota(max_bytes=2_000_000, max_files=3)
    assert not quota.refuses(waiting_bytes=1_000_000, waiting_files=1, size=1_000_000)
    assert quota.refuses(waiting_bytes=1_000_001, waiting_files=1, size=1_000_000)
    assert quota.refuses(waiting_bytes=0, waiting_files=3, size=1), "a file too many, however small"


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
