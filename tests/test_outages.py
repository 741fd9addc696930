"""Database outages: what a user saw is stored once the database is back, or the user is told it was not.

A private PostgreSQL server (tests/helpers/cluster.py) is stopped and started under a real Loupe
server with users asking and rating; SQLite's file is locked by another connection. First the
rule alone (chat/store/outages.py), then the server.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

import chat.store.database
from chat.store.accounts import AccountError, add_user
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.outages import Patience, Unavailable
from chat.store.rows import utcnow
from chat.store.schema import User
from chat.ui.answers import SAVE_INTERVAL_S
from chat.ui.texts import mark_unfinished, text
from models.control_tokens import plain_text
from tests.helpers.client import ChatClient, Reply
from tests.helpers.cluster import Cluster, private_cluster
from tests.helpers.load import (
    QUICK_SETTINGS,
    Account,
    Rating,
    add_accounts,
    question,
    rate,
    read_when_quiet,
    sqlite_url,
    start_on,
)
from tests.helpers.server import Server, export_rows, rows, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with private_cluster() as started:
        upgrade(started.url)
        yield started


async def users(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.scalars(select(User.identifier).order_by(User.identifier)))
    finally:
        await engine.dispose()


async def test_a_write_waits_out_a_postgresql_restart(cluster: Cluster) -> None:
    engine = create_engine(cluster.url)
    sessions = session_factory(engine)
    try:
        await add_user(sessions, "before", "password-before")  # the pool holds a connection the stop cuts
        cluster.stop()
        threading.Timer(2.0, cluster.start).start()
        started = time.monotonic()
        await Patience(seconds=30, most_waiting=10).run(
            lambda: add_user(sessions, "during", "password-during"), "a user"
        )
        assert time.monotonic() - started >= 1.5, "the write did not wait for the database"
    finally:
        await engine.dispose()
    assert {"before", "during"} <= set(await users(cluster.url))


async def test_past_its_patience_a_write_is_unavailable_and_a_wrong_one_fails_at_once(cluster: Cluster) -> None:
    engine = create_engine(cluster.url)
    sessions = session_factory(engine)
    patience = Patience(seconds=1, most_waiting=10)
    try:
        await add_user(sessions, "twice", "password-twice")
        with pytest.raises(AccountError):  # no outage: raised at the first try
            await patience.run(lambda: add_user(sessions, "twice", "password-twice"), "a user")
        cluster.stop()
        try:
            with pytest.raises(Unavailable):
                await patience.run(lambda: add_user(sessions, "lost", "password-lost"), "a user")
            assert patience.waiting == 0
        finally:
            cluster.start()
    finally:
        await engine.dispose()
    assert "lost" not in await users(cluster.url)


async def test_a_write_waits_out_a_locked_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SQLite's busy timeout (shortened here), the write is tried again until the lock is gone."""
    monkeypatch.setattr(chat.store.database, "SQLITE_BUSY_TIMEOUT_MS", 100)
    url = f"sqlite+aiosqlite:///{tmp_path / 'loupe.db'}"
    await asyncio.to_thread(upgrade, url)
    locker = sqlite3.connect(tmp_path / "loupe.db", check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    threading.Timer(2.0, locker.commit).start()
    engine = create_engine(url)
    try:
        started = time.monotonic()
        await Patience(seconds=30, most_waiting=10).run(
            lambda: add_user(session_factory(engine), "ada", "pw-ada-1"), "a user"
        )
        assert time.monotonic() - started >= 1.5
    finally:
        await engine.dispose()
        locker.close()
    assert await users(url) == ["ada"]


async def test_sqlite_writes_take_turns_without_holding_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write holds SQLite's one writer across its awaits, for long on a busy event loop (slept here): the
    process's other writes wait their turn holding no connection, so none fails past the busy timeout
    (shortened here), more of them than the pool has connections all land, and a read is not kept waiting."""
    monkeypatch.setattr(chat.store.database, "SQLITE_BUSY_TIMEOUT_MS", 100)
    url = f"sqlite+aiosqlite:///{tmp_path / 'loupe.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = session_factory(engine)

    async def slow_write(number: int) -> None:
        async with sessions.begin() as session:
            session.add(User(id=f"id-{number}", identifier=f"user{number}", metadata_={}, created_at=utcnow()))
            await session.flush()  # SQLite's writer is this transaction's from here to its commit
            await asyncio.sleep(0.1)

    try:
        writes = asyncio.gather(*(slow_write(number) for number in range(20)))  # the pool has 15 connections
        await asyncio.sleep(0.3)
        assert engine.pool.checkedout() == 1, "one write at a time holds a connection"
        started = time.monotonic()
        async with sessions() as session:
            await session.scalar(select(User.id).limit(1))
        assert time.monotonic() - started < 1
        await writes
    finally:
        await engine.dispose()
    assert len(await users(url)) == 20


# The server, with users asking and rating ---------------------------------------------------------

USERS = 4
OUTAGE_S = 32  # the "an outage of at least 30 s", under LOUPE_WRITE_RETRY_S's default of 60
NOT_SAVED = "⚠️ **The answer above was not saved**"


@dataclass
class Seen:
    """What the users' pages showed: answers that ended, ratings sent, notices that an answer was not saved."""

    finished: dict[str, str] = field(default_factory=dict)  # answer id -> its run id
    ratings: list[Rating] = field(default_factory=list)
    not_saved: list[str] = field(default_factory=list)


async def ask_and_rate(url: str, account: Account, seen: Seen, until: asyncio.Event) -> None:
    """One user asking short questions until `until`, rating every answer the moment it ends."""
    async with ChatClient(url, username=account.name, password=account.password) as client:
        await client.change_settings(QUICK_SETTINGS)
        no_keep_alive = httpx.Limits(max_keepalive_connections=0)  # as in tests/helpers/load.py
        async with httpx.AsyncClient(base_url=url, cookies=client.cookies, timeout=60, limits=no_keep_alive) as http:
            index = 0
            while not until.is_set():
                reply = await ask_or_refused(client, question(account.name, index))
                for message in reply.messages if reply else []:
                    if (message.get("metadata") or {}).get("ended") == "finished":
                        seen.finished[message["id"]] = message["parentId"]
                        seen.ratings.append(
                            await rate(http, client.session_id, account.name, index, message["parentId"])
                        )
                index += 1
        seen.not_saved += [message["id"] for message in client.seen_messages if message["output"].startswith(NOT_SAVED)]


async def ask_or_refused(client: ChatClient, message: str) -> Reply | None:
    """The run answering `message`, or None when the server could not check the login to take it (it says so)."""
    await client.send(message)
    async with asyncio.timeout(120):
        while True:
            event, payload = await client.next_event()
            if event == "task_start":
                return await client.collect()
            if event == "new_message" and payload["output"] == text("database_unreachable", "en"):
                return None


async def until_true(condition: Callable[[], bool], task: asyncio.Task, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if task.done():
            task.result()
            pytest.fail("the users stopped before the condition held")
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        await asyncio.sleep(0.05)


async def test_what_users_saw_outlives_a_half_minute_database_outage(cluster: Cluster, tmp_path: Path) -> None:
    """PostgreSQL stopped for 32 s while four users ask and rate: every answer a page saw end is stored with its
    generation record, every rating answered 200 is stored, and a rating that could not wait got 503, never 500."""
    url = await cluster.new_database("outage")
    accounts = await add_accounts(url, USERS)
    process, server = start_on(tmp_path / "app", url)
    seen, until = Seen(), asyncio.Event()
    try:
        users = asyncio.create_task(run_all(server.url, accounts, seen, until))
        await until_true(lambda: len(seen.finished) >= 2 * USERS, users, timeout=120)
        await asyncio.to_thread(cluster.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(cluster.start)
        back = len(seen.finished)
        await until_true(lambda: len(seen.finished) >= back + 2 * USERS, users, timeout=120)
        until.set()
        await users
        stored = await read_when_quiet(url)
    finally:
        stop_server(process)
    print(
        f"\n{len(seen.finished)} answers, {back} before the database came back; ratings: "
        f"{Counter(rating.status for rating in seen.ratings)}"
    )

    steps = {step.id: step for step in stored.steps}
    records = {generation.step_id: generation for generation in stored.generations}
    lost = [answer for answer in seen.finished if answer not in steps or answer not in records]
    assert not lost, f"{len(lost)} of {len(seen.finished)} answers the users saw are not stored"
    assert all(steps[answer].metadata_["ended"] == "finished" for answer in seen.finished)
    assert {rating.status for rating in seen.ratings} <= {200, 503}, [r.error for r in seen.ratings][:5]
    ratings = {(feedback.for_id, feedback.value) for feedback in stored.feedbacks}
    assert {(rating.run_id, rating.value) for rating in seen.ratings if rating.acknowledged} <= ratings
    assert seen.not_saved == []
    assert "Task exception was never retrieved" not in server.log.read_text()


async def run_all(url: str, accounts: list[Account], seen: Seen, until: asyncio.Event) -> None:
    async with asyncio.TaskGroup() as users:
        for account in accounts:
            users.create_task(ask_and_rate(url, account, seen, until))


async def test_an_answer_that_could_not_be_stored_is_named_not_saved(cluster: Cluster, tmp_path: Path) -> None:
    """Past LOUPE_WRITE_RETRY_S (2 s here) the answer the page shows is named not saved on it, and is not in
    the history as finished; once the database is back the same chat goes on, and is stored."""
    url = await cluster.new_database("not_saved")
    [account] = await add_accounts(url, 1)
    process, server = start_on(tmp_path / "app", url, LOUPE_WRITE_RETRY_S="2")
    try:
        async with ChatClient(server.url, username=account.name, password=account.password) as client:
            await client.change_settings({"max_new_tokens": 256, "temperature": 0})
            await client.send("A long answer, please.")
            await client.wait_for("stream_start")
            await asyncio.to_thread(cluster.stop)
            try:
                reply = await client.collect()
                async with asyncio.timeout(30):  # it comes once the write gave up: with the answer's run, or after
                    while not (notices := [m for m in client.seen_messages if m["output"].startswith(NOT_SAVED)]):
                        await asyncio.sleep(0.1)
            finally:
                await asyncio.to_thread(cluster.start)
            [lost] = [m for m in reply.messages if (m.get("metadata") or {}).get("ended") == "finished"]
            await client.change_settings(QUICK_SETTINGS)
            again = await client.ask("And now?")
            [kept] = [m for m in again.messages if (m.get("metadata") or {}).get("ended") == "finished"]
        stored = await read_when_quiet(url)
    finally:
        stop_server(process)
    assert len(notices) == 1 and "will not be in this chat's history" in notices[0]["output"]
    finished = {step.id for step in stored.steps if (step.metadata_ or {}).get("ended") == "finished"}
    assert lost["id"] not in finished and kept["id"] in finished


# A crash -----------------------------------------------------------------------------------------


async def test_a_killed_server_keeps_the_answer_it_was_streaming(tmp_path: Path) -> None:
    """kill -9 mid-answer: the part the page saw (up to the last save) is stored, marked interrupted, with its
    generation record; a restarted server serves the chat on, and exports leave the part out."""
    url = sqlite_url(tmp_path / "app" / ".data")
    [account] = await add_accounts(url, 1)
    process, server = start_on(tmp_path / "app", url)
    try:
        async with ChatClient(server.url, username=account.name, password=account.password) as client:
            # Sampled: the demo model's greedy answers are blank lines, which exports leave out for another reason.
            await client.change_settings({"max_new_tokens": 16, "temperature": 1})
            [whole] = finished(await client.ask("A short answer, please."))
            await client.change_settings({"max_new_tokens": 4096})  # the demo model does not end it sooner
            await client.send("A long answer, please.")
            shown = await client.wait_for("stream_start")
            streamed, deadline = shown["output"], time.monotonic() + 2.5 * SAVE_INTERVAL_S
            while time.monotonic() < deadline:
                streamed += (await client.wait_for("stream_token"))["token"]
            process.kill()  # `chat serve` execs chainlit: this is the server itself
            process.wait()
    finally:
        stop_server(process)

    [(output, metadata)] = rows(server, "SELECT output, metadata FROM steps WHERE id = ?", shown["id"])
    [(completion, ended)] = rows(server, "SELECT completion, ended FROM generations WHERE step_id = ?", shown["id"])
    assert json.loads(metadata)["ended"] == ended == "interrupted"
    assert completion and streamed.startswith(completion), "the stored part is what the page showed"
    assert output == mark_unfinished(completion, "interrupted", "en")

    restarted, again = start_on(tmp_path / "restarted", url, data_dir=server.data_dir)
    try:
        async with ChatClient(again.url, username=account.name, password=account.password) as rater:
            for run_id in (whole["parentId"], shown["parentId"]):
                assert (await rater.rate(run_id, 1)).status_code == 200
        exported = export_rows(server, tmp_path / "export", format="trl-kto")
    finally:
        stop_server(restarted)
    exported_completions = [row["completion"][0]["content"][0]["text"] for row in exported]
    assert exported_completions == [plain_text(whole_completion(server, whole))], "the interrupted part is left out"


def finished(reply: Reply) -> list[dict]:
    return [message for message in reply.messages if (message.get("metadata") or {}).get("ended") == "finished"]


def whole_completion(server: Server, answer: dict) -> str:
    [(completion,)] = rows(server, "SELECT completion FROM generations WHERE step_id = ?", answer["id"])
    return completion
