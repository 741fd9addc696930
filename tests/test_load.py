"""Many users at once, on SQLite and PostgreSQL: nothing lost, nothing duplicated, and a crash loses
no rating the server acknowledged.

The server is the real one (`python -m chat serve`, demo model, short greedy answers); the users are
socket.io clients like the web page, each in its own chat, rating every answer as soon as it ends
(tests/helpers/load.py). Afterwards the database itself is read and checked row by row.

The last tests are quick ones on the data layer alone, for the out-of-order writes this load
exposed: Chainlit persists each step change in its own fire-and-forget task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from chainlit.types import Feedback as ChainlitFeedback
from chainlit.user import User as ChainlitUser

from chat.store.schema import Step
from chat.ui.datalayer import LoupeDataLayer
from tests.helpers.client import ChatClient
from tests.helpers.databases import postgres_database
from tests.helpers.load import (
    QUICK_SETTINGS,
    Account,
    Load,
    Rating,
    Stored,
    add_accounts,
    cancel,
    ended_answer,
    log_problems,
    orphans,
    planned_rating,
    question,
    rate,
    read_database,
    read_when_quiet,
    run_users,
    sqlite_integrity,
    sqlite_url,
    start_on,
)
from tests.helpers.server import stop_server

# Fifty users at once are what exposes races; five answers each (250 in all) keep the suite within its time
# (bench/bench_feedback.py runs the full 50 x 10).
USERS, MESSAGES = 50, 5
CRASH_USERS, CRASH_MESSAGES = 20, 10
KILL_AFTER = CRASH_USERS * CRASH_MESSAGES // 3  # acknowledged ratings before the server is killed


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A new database: SQLite in the server's data directory (tmp_path/app/.data), or PostgreSQL."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "app" / ".data")
        return
    async with postgres_database() as url:
        yield url


@pytest.mark.slow
async def test_fifty_users_lose_and_duplicate_nothing(database: str, tmp_path: Path) -> None:
    """Every question, answer, generation record and rating of 50 users x 5 is stored once, in its
    owner's thread, with nothing else in it but the greeting; every rating is acknowledged."""
    accounts = await add_accounts(database, USERS)
    process, server = start_on(tmp_path / "app", database)
    load = Load()
    try:
        await run_users(server.url, accounts, MESSAGES, load)
        stored = await read_when_quiet(database)
        problems = log_problems(server.log)
    finally:
        stop_server(process)
    print(f"\n{USERS} users x {MESSAGES} messages in {load.seconds:.0f} s")

    assert not problems, "\n".join(problems[:40])
    refused = [rating for rating in load.ratings if not rating.acknowledged]
    assert not refused, refused[:5]
    check_everything_kept(stored, accounts, load)
    assert await orphans(database) == {}
    if database.startswith("sqlite"):
        assert sqlite_integrity(database) == (["ok"], [])


@pytest.mark.slow
async def test_acknowledged_ratings_survive_a_crash(database: str, tmp_path: Path) -> None:
    """SIGKILL mid-load: every rating answered with 200 is stored, the database is sound, and the
    restarted server (same database, same data directory) serves a new chat."""
    accounts = await add_accounts(database, CRASH_USERS)
    process, server = start_on(tmp_path / "app", database)
    load = Load()
    users = asyncio.create_task(run_users(server.url, accounts, CRASH_MESSAGES, load))
    try:
        # Kill while a rating is on its way, so some die between the request and the reply.
        await until(lambda: len(load.acknowledged()) >= KILL_AFTER and load.rating_now > 0, users, timeout=240)
        process.kill()  # `chat serve` execs chainlit, so this pid is the server itself
        process.wait()
        in_flight = load.rating_now
    finally:
        await cancel(users)
        stop_server(process)
    acknowledged = load.acknowledged()
    assert len(acknowledged) < CRASH_USERS * CRASH_MESSAGES, "the load ended before the kill"

    restarted, again = start_on(tmp_path / "restarted", database, data_dir=server.data_dir)
    try:
        stored = await read_database(database)
        await check_new_chat(again.url, accounts[0])
        problems = log_problems(again.log)
    finally:
        stop_server(restarted)
    print(f"\nkilled with {in_flight} ratings in flight, after {len(acknowledged)} acknowledged")

    check_acknowledged_kept(stored, acknowledged)
    assert await orphans(database) == {}
    if database.startswith("sqlite"):
        assert sqlite_integrity(database) == (["ok"], [])
    assert not problems, "\n".join(problems[:40])


# Helpers -----------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], task: asyncio.Task, timeout: float) -> None:
    """Wait for `condition()`; fail early if the load `task` ended (or failed) first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if task.done():
            task.result()  # raises what the load raised
            pytest.fail("the load finished before the condition held")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s")
        await asyncio.sleep(0.002)


def by_thread(steps: list[Step], kind: str) -> dict[str, list[Step]]:
    """Steps of one type per thread, in the order they were created."""
    grouped: dict[str, list[Step]] = defaultdict(list)
    for step in sorted(steps, key=lambda step: (step.created_at, step.start or step.created_at)):
        if step.type == kind:
            grouped[step.thread_id].append(step)
    return grouped


def check_everything_kept(stored: Stored, accounts: list[Account], load: Load) -> None:
    """Each user: one thread of their own with exactly their questions, answers, records and ratings."""
    user_ids = {identifier: user_id for user_id, identifier in stored.users.items()}
    owners = {thread.id: thread.user_id for thread in stored.threads}
    assert sorted(owners.values(), key=str) == sorted(user_ids[account.name] for account in accounts)
    questions, messages = by_thread(stored.steps, "user_message"), by_thread(stored.steps, "assistant_message")
    steps = {step.id: step for step in stored.steps}
    seen_answers = {(answer.user, answer.index): answer for answer in load.answers}
    for account in accounts:
        thread_id = load.threads[account.name]
        assert owners.get(thread_id) == user_ids[account.name], f"{account.name} does not own {thread_id}"
        asked = [step.output for step in questions[thread_id]]
        assert asked == [question(account.name, index) for index in range(MESSAGES)], account.name
        answers = [step for step in messages[thread_id] if (step.metadata_ or {}).get("ended")]
        others = [step.output[:60] for step in messages[thread_id] if step not in answers]
        assert len(others) == 1, f"{account.name}: expected only the greeting besides answers, got {others}"
        assert [step.id for step in answers] == [seen_answers[account.name, i].message_id for i in range(MESSAGES)]
        for index, answer in enumerate(answers):
            run = steps[answer.parent_id]
            assert answer.metadata_["ended"] == "finished"
            assert (run.type, run.thread_id, steps[run.parent_id].output) == (
                "run",
                thread_id,
                question(account.name, index),
            )

    answer_ids = {answer.message_id for answer in load.answers}
    generations = Counter(generation.step_id for generation in stored.generations)
    assert set(generations) == answer_ids and set(generations.values()) == {1}
    for generation in stored.generations:
        assert generation.ended == "finished" and generation.thread_id == steps[generation.step_id].thread_id
        assert generation.settings["max_new_tokens"] == QUICK_SETTINGS["max_new_tokens"]

    check_ratings(stored, load)


def check_ratings(stored: Stored, load: Load) -> None:
    """One row per rated run, with the planned value and comment, owned like its thread, and no other."""
    rated = {rating.run_id: rating for rating in load.ratings}
    assert len(rated) == len(load.ratings) == USERS * MESSAGES
    assert len(stored.feedbacks) == len(rated)
    check_acknowledged_kept(stored, load.ratings)


def check_acknowledged_kept(stored: Stored, ratings: list[Rating]) -> None:
    """Each rating the server acknowledged is stored under its id, with its value and comment."""
    feedbacks = {feedback.for_id: feedback for feedback in stored.feedbacks}
    assert len(feedbacks) == len(stored.feedbacks), "two ratings for one step"
    owners = {thread.id: thread.user_id for thread in stored.threads}
    steps = {step.id: step for step in stored.steps}
    missing = [rating for rating in ratings if rating.run_id not in feedbacks]
    assert not missing, f"{len(missing)} acknowledged ratings lost, e.g. {missing[:3]}"
    for rating in ratings:
        feedback = feedbacks[rating.run_id]
        assert (feedback.id, feedback.value, feedback.comment) == (
            rating.feedback_id,
            *planned_rating(rating.user, rating.index),
        )
        assert steps[rating.run_id].type == "run"
        assert feedback.thread_id == steps[rating.run_id].thread_id
        assert stored.users[feedback.user_id] == rating.user == stored.users[owners[feedback.thread_id]]


async def check_new_chat(url: str, account: Account) -> None:
    """Log in, ask, get a finished answer, and rate it."""
    async with ChatClient(url, username=account.name, password=account.password) as client:
        await client.change_settings(QUICK_SETTINGS)
        reply = await client.ask("Still there after the crash?")
        answer = ended_answer(reply.messages, account.name, 0)
        async with httpx.AsyncClient(base_url=url, cookies=client.cookies, timeout=60) as http:
            rating = await rate(http, client.session_id, account.name, 0, answer["parentId"])
    assert rating.acknowledged, rating


# The data layer alone: writes in the order Chainlit starts them ---------------------------------


def notice_step(thread_id: str, output: str, step_id: str | None = None, kind: str = "assistant_message") -> dict:
    return {"id": step_id or str(uuid.uuid4()), "threadId": thread_id, "type": kind, "name": "Loupe", "output": output}


async def stored_step(layer: LoupeDataLayer, step_id: str) -> Step | None:
    async with layer.sessions() as session:
        return await session.get(Step, step_id)


async def test_a_late_update_does_not_bring_back_a_deleted_step(layer: LoupeDataLayer) -> None:
    """Message.send, .update, .remove: three tasks; the update used to commit after the delete."""
    created = notice_step(str(uuid.uuid4()), "2 ahead of you")
    await asyncio.gather(
        asyncio.create_task(layer.create_step(created)),
        asyncio.create_task(layer.update_step({**created, "output": "1 ahead of you"})),
        asyncio.create_task(layer.delete_step(created["id"])),
    )
    assert await stored_step(layer, created["id"]) is None


async def test_a_rating_waits_for_the_rated_step_and_the_owner_being_written(layer: LoupeDataLayer) -> None:
    """The browser can rate as soon as the answer shows, before the run step and owner are stored."""
    user = await layer.create_user(ChainlitUser(identifier=f"quick-{uuid.uuid4()}"))
    thread_id = str(uuid.uuid4())
    run = notice_step(thread_id, "", kind="run")
    writes = [
        asyncio.create_task(layer.create_step(run)),
        asyncio.create_task(layer.update_thread(thread_id, user_id=user.id)),
    ]
    await asyncio.sleep(0)  # the writes have started, as they have when the browser learns the id
    await layer.settle_step(run["id"])
    feedback_id = await layer.upsert_feedback(ChainlitFeedback(forId=run["id"], value=1, comment="fast"))
    assert feedback_id and all(write.done() for write in writes)


async def test_closing_waits_for_writes_under_way(layer: LoupeDataLayer) -> None:
    """Chainlit calls close() on shutdown, then os._exit(0): a write still under way was lost."""
    answer = notice_step(str(uuid.uuid4()), "the last answer")
    write = asyncio.create_task(layer.create_step(answer))
    await asyncio.sleep(0)
    await layer.close()
    assert write.done() and await stored_step(layer, answer["id"]) is not None
