"""Limits counted in the database, on real SQLite and PostgreSQL: what two processes count together.

Each "process" here is a LimitStore on an engine of its own (its own connections), as two Loupe
processes on one database have; the counts are sent at once, so they race for the last slot.
tests/test_team_limits.py does the same with two real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from chat.store.database import create_engine, session_factory
from chat.store.limits import LimitStore
from chat.store.schema import LimitRecord, PendingUpload
from chat.ui.limits import (
    FREE_FAILURES,
    FREE_FAILURES_PER_ADDRESS,
    IN_FLIGHT_MEMORY_S,
    LoginThrottle,
    RateLimit,
    UploadQuota,
)


@pytest.fixture
async def stores(migrated: str) -> AsyncIterator[tuple[LimitStore, LimitStore]]:
    """Two processes' stores on one emptied database of each kind."""
    engines = [create_engine(migrated), create_engine(migrated)]
    async with engines[0].begin() as connection:
        for table in (LimitRecord, PendingUpload):
            await connection.execute(delete(table))
    yield LimitStore(session_factory(engines[0])), LimitStore(session_factory(engines[1]))
    for engine in engines:
        await engine.dispose()


async def rows(store: LimitStore, table: Any) -> int:
    async with store.sessions() as session:
        return await session.scalar(select(func.count()).select_from(table))


async def test_two_processes_share_one_message_window(stores: tuple[LimitStore, LimitStore]) -> None:
    rates = [RateLimit(store, 4, 60) for store in stores]
    waits = await asyncio.gather(*(rates[n % 2].admit("ada") for n in range(12)))
    assert waits.count(None) == 4, waits
    assert all(0 < wait <= 60 for wait in waits if wait is not None)
    assert await rates[0].admit("bob") is None, "each user has a window of their own"
    assert await rows(stores[0], LimitRecord) == 2


async def test_events_that_left_the_window_are_forgotten(stores: tuple[LimitStore, LimitStore]) -> None:
    rate = RateLimit(stores[0], 2, 0.5)
    assert [await rate.admit("ada") for _ in range(3)][2] is not None
    await asyncio.sleep(0.6)
    assert await rate.admit("ada") is None
    async with stores[0].sessions() as session:
        [state] = (await session.scalars(select(LimitRecord.state))).all()
    assert len(state["times"]) == 1, "the record keeps only the events in the window"


async def test_parallel_guesses_across_two_processes_get_only_the_free_failures(
    stores: tuple[LimitStore, LimitStore],
) -> None:
    throttles = [LoginThrottle(store) for store in stores]

    async def guess(n: int) -> float:
        throttle = throttles[n % 2]
        ticket, wait = await throttle.admit("ada", "10.0.0.1")
        if wait:
            return wait
        await asyncio.sleep(0.01)  # the password check
        await throttle.checked("ada", "10.0.0.1", ticket, right=False)
        return 0.0

    waits = await asyncio.gather(*(guess(n) for n in range(20)))
    assert waits.count(0.0) == FREE_FAILURES + 1, "the free failures, then one whose failure starts the wait"


async def test_logins_past_the_free_failures_wait_for_the_earlier_ones_in_either_process(
    stores: tuple[LimitStore, LimitStore],
) -> None:
    """Thirty colleagues behind one address sign in together through two processes: those past the
    address's free failures wait until the first ones are checked (and right), and then are checked too."""
    throttles = [LoginThrottle(store) for store in stores]

    async def sign_in(n: int) -> float:
        throttle = throttles[n % 2]
        ticket, wait = await throttle.admit(f"user{n}", "10.0.0.9")
        if wait:
            return wait
        await asyncio.sleep(0.01)
        await throttle.checked(f"user{n}", "10.0.0.9", ticket, right=True)
        return 0.0

    colleagues = FREE_FAILURES_PER_ADDRESS + 10
    assert await asyncio.gather(*(sign_in(n) for n in range(colleagues))) == [0.0] * colleagues
    assert await rows(stores[0], LimitRecord) == 0, "nothing holds anybody back: no record is kept"


async def test_attempts_of_a_killed_process_stop_counting(stores: tuple[LimitStore, LimitStore]) -> None:
    killed, survivor = LoginThrottle(stores[0]), LoginThrottle(stores[1])
    for _ in range(FREE_FAILURES):  # reserved and never checked: the process died checking them
        assert (await killed.admit("ada", "10.0.0.1"))[1] == 0
    async with stores[0].sessions.begin() as session:  # the time they were reserved at, moved back
        for record in (await session.scalars(select(LimitRecord))).all():
            in_flight = {ticket: since - IN_FLIGHT_MEMORY_S for ticket, since in record.state["in_flight"].items()}
            await session.execute(
                update(LimitRecord)
                .where(LimitRecord.key == record.key)
                .values(state={**record.state, "in_flight": in_flight})
            )
    ticket, wait = await survivor.admit("ada", "10.0.0.1")
    assert wait == 0
    assert await survivor.checked("ada", "10.0.0.1", ticket, right=False) == 0, "the first failure, not the sixth"


async def test_the_upload_quota_is_one_for_both_processes(stores: tuple[LimitStore, LimitStore]) -> None:
    quotas = [UploadQuota(max_bytes=3000, max_files=10, store=store, keep_s=3600) for store in stores]
    uploads = await asyncio.gather(*(quotas[n % 2].admit("ada", "session-0", 1000) for n in range(8)))
    assert len([upload for upload in uploads if upload is not None]) == 3, "arriving uploads count by declared size"
    await quotas[0].sessions_ended(["session-0"])  # its files are gone with it
    assert await rows(stores[0], PendingUpload) == 0

    first = await quotas[0].admit("ada", "session-0", 1000)
    second = await quotas[1].admit("ada", "session-1", 1000)
    await quotas[0].stored(first or "", "file-0", 900)
    await quotas[1].stored(second or "", "file-1", 900)
    assert await quotas[1].admit("ada", "session-1", 1300) is None
    third = await quotas[1].admit("ada", "session-1", 1200)
    assert third is not None, "stored files count by their own size"
    await quotas[1].failed(third)
    await quotas[0].sent(["file-0"])  # sent with a message
    assert await quotas[1].admit("ada", "session-1", 2100) is not None, "a failed upload and a sent one count no more"
    assert await quotas[0].admit("bob", "session-2", 3000) is not None, "each user has a quota of their own"


async def test_the_upload_quota_holds_files_as_well_as_bytes(stores: tuple[LimitStore, LimitStore]) -> None:
    quotas = [UploadQuota(max_bytes=10**9, max_files=2, store=store, keep_s=3600) for store in stores]
    for n in range(2):
        await quotas[n].stored(await quotas[n].admit("ada", f"session-{n}", 10) or "", f"file-{n}", 10)
    assert await quotas[0].admit("ada", "session-0", 10) is None


async def test_expired_records_and_uploads_are_swept(stores: tuple[LimitStore, LimitStore]) -> None:
    store = stores[0]
    await RateLimit(store, 4, 0.1).admit("ada")
    quota = UploadQuota(max_bytes=10**9, max_files=2, store=store, keep_s=0.1)
    await quota.stored(await quota.admit("ada", "session-0", 10) or "", "file-0", 10)
    await quota.stored(await quota.admit("ada", "session-0", 10) or "", "file-1", 10)
    await asyncio.sleep(0.2)
    assert await quota.admit("ada", "session-0", 10) is not None, "uploads past Chainlit's session timeout are gone"
    await asyncio.sleep(0.2)
    await store.sweep()
    assert (await rows(store, LimitRecord), await rows(store, PendingUpload)) == (0, 0)
