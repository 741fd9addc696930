"""Many logged-in users chatting and rating at once against a running Loupe, and what the database kept.

Shared by tests/test_load.py (nothing lost or duplicated, crash safety) and bench/bench_feedback.py
(feedback latency under the same load), so both drive exactly the same traffic: each user opens
one chat, asks for short greedy answers, and rates every answer through PUT /feedback as soon as
it has ended, the way a quick user clicks the thumb.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from chat.store.accounts import add_user
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.schema import Feedback, Generation, Step, Thread, User
from tests.helpers.client import ChatClient
from tests.helpers.server import Server, start_server

# Short greedy answers: the demo model answers in tens of milliseconds, so the database is the load.
QUICK_SETTINGS: dict[str, Any] = {"max_new_tokens": 16, "temperature": 0}  # 16: the settings panel's least
ANSWER_TIMEOUT_S = 300  # a user behind 49 others in the model's queue waits for all of them
HTTP_TIMEOUT_S = 60
QUIET_S = 1.5  # Chainlit writes in background tasks: the database is read once it stops changing


@dataclass(frozen=True)
class Account:
    name: str
    password: str


def question(user: str, index: int) -> str:
    """Unique per user and message, so the stored user messages can be matched to what was sent."""
    return f"{user}: question {index}"


def planned_rating(user: str, index: int) -> tuple[int, str | None]:
    """Thumbs up and down alternately; every third rating carries a comment."""
    return (1 if index % 2 == 0 else 0), (f"{user} on answer {index}" if index % 3 == 0 else None)


@dataclass
class Rating:
    """One PUT /feedback as the client saw it; status None means no response came back."""

    user: str
    index: int
    run_id: str
    value: int
    comment: str | None
    status: int | None
    feedback_id: str | None
    seconds: float
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.status == 200 and bool(self.feedback_id)


@dataclass
class Answer:
    user: str
    index: int
    message_id: str
    run_id: str
    thread_id: str | None


@dataclass
class Load:
    """What the clients saw, appended as it happened, so a run cut short still has its record."""

    answers: list[Answer] = field(default_factory=list)
    ratings: list[Rating] = field(default_factory=list)
    threads: dict[str, str] = field(default_factory=dict)  # user -> the thread id Chainlit gave them
    rating_now: int = 0  # PUT /feedback requests sent and not yet answered
    seconds: float = 0.0

    def acknowledged(self) -> list[Rating]:
        return [rating for rating in self.ratings if rating.acknowledged]


# Accounts and servers ----------------------------------------------------------------------------


async def add_accounts(database_url: str, count: int, prefix: str = "user") -> list[Account]:
    """Migrate the database and create `count` password users in it, before any server opens it."""
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    accounts = [Account(f"{prefix}{number:02d}", f"password-{prefix}-{number:02d}") for number in range(count)]
    try:
        for account in accounts:
            await add_user(session_factory(engine), account.name, account.password)
    finally:
        await engine.dispose()
    return accounts


def sqlite_url(data_dir: Path) -> str:
    """The app's own default database: loupe.db in its data directory."""
    return f"sqlite+aiosqlite:///{data_dir / 'loupe.db'}"


def start_on(app_root: Path, database_url: str, data_dir: Path | None = None, **env: str) -> tuple[Any, Server]:
    """start_server on `database_url`; `data_dir` reuses another run's (auth secret, images)."""
    app_root.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        env["LOUPE_DATA_DIR"] = str(data_dir)
    return start_server(app_root, LOUPE_DATABASE_URL=database_url, **env)


# Driving the users -------------------------------------------------------------------------------


async def run_users(url: str, accounts: list[Account], messages: int, load: Load) -> None:
    """All users at once; the first failure cancels the others and is raised (in an ExceptionGroup)."""
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as users:
            for account in accounts:
                users.create_task(chat_and_rate(url, account, messages, load))
    finally:
        load.seconds = time.perf_counter() - started


async def chat_and_rate(url: str, account: Account, messages: int, load: Load) -> None:
    """One user's session: short answers, each rated as soon as it has ended."""
    async with ChatClient(url, username=account.name, password=account.password) as client:
        await client.change_settings(QUICK_SETTINGS)
        # A fresh connection per rating: a kept-alive one sits idle while the user waits for the next
        # answer, and the server closing it (uvicorn, after 5 s) just as a rating is sent loses that
        # request with no response. Browsers retry such a request; httpx does not.
        no_keep_alive = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=url, cookies=client.cookies, timeout=HTTP_TIMEOUT_S, limits=no_keep_alive
        ) as http:
            for index in range(messages):
                reply = await client.ask(question(account.name, index), timeout=ANSWER_TIMEOUT_S)
                load.threads[account.name] = client.thread_id or ""
                answer = ended_answer(reply.messages, account.name, index)
                load.answers.append(Answer(account.name, index, answer["id"], answer["parentId"], client.thread_id))
                load.rating_now += 1
                try:
                    rating = await rate(http, client.session_id, account.name, index, answer["parentId"])
                finally:
                    load.rating_now -= 1
                load.ratings.append(rating)


def ended_answer(messages: list[dict[str, Any]], user: str, index: int) -> dict[str, Any]:
    """The model's answer among the run's messages (the queue notice is one too, until removed)."""
    ended = [message for message in messages if (message.get("metadata") or {}).get("ended")]
    if len(ended) != 1 or ended[0]["metadata"]["ended"] != "finished":
        raise AssertionError(f"{user}, message {index}: expected one finished answer, got {messages}")
    return ended[0]


async def rate(http: httpx.AsyncClient, session_id: str, user: str, index: int, run_id: str) -> Rating:
    """PUT /feedback for the run step, timed from send to response; a dead server gives status None."""
    value, comment = planned_rating(user, index)
    payload = {"feedback": {"forId": run_id, "value": value, "comment": comment}, "sessionId": session_id}
    started = time.perf_counter()
    try:
        response = await http.put("/feedback", json=payload)
    except httpx.HTTPError as error:
        return Rating(user, index, run_id, value, comment, None, None, time.perf_counter() - started, repr(error))
    seconds = time.perf_counter() - started
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    error = "" if response.status_code == 200 else response.text
    return Rating(user, index, run_id, value, comment, response.status_code, body.get("feedbackId"), seconds, error)


async def cancel(task: asyncio.Task) -> None:
    """Stop a load whose server is gone: its clients fail or hang on a dead socket."""
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task


# Reading the database back -----------------------------------------------------------------------


@dataclass
class Stored:
    """Every row the checks look at, read in one go after the load."""

    users: dict[str, str]  # id -> identifier
    threads: list[Thread]
    steps: list[Step]
    feedbacks: list[Feedback]
    generations: list[Generation]


async def read_database(database_url: str) -> Stored:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return Stored(
                users={user.id: user.identifier for user in await session.scalars(select(User))},
                threads=list(await session.scalars(select(Thread))),
                steps=list(await session.scalars(select(Step))),
                feedbacks=list(await session.scalars(select(Feedback))),
                generations=list(await session.scalars(select(Generation))),
            )
    finally:
        await engine.dispose()


async def read_when_quiet(database_url: str, timeout: float = 60) -> Stored:
    """Read the database once its row counts stop changing (the last answers' writes are async)."""
    deadline = time.monotonic() + timeout
    stored = await read_database(database_url)
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_S)
        again = await read_database(database_url)
        if counts(again) == counts(stored):
            return again
        stored = again
    return stored


def counts(stored: Stored) -> tuple[int, ...]:
    return len(stored.threads), len(stored.steps), len(stored.feedbacks), len(stored.generations)


# (table, column, referenced table): a row whose referenced row is gone is an orphan. The foreign
# keys should make that impossible; these queries check it, on both backends.
REFERENCES = (
    ("steps", "thread_id", "threads"),
    ("elements", "thread_id", "threads"),
    ("feedbacks", "for_id", "steps"),
    ("feedbacks", "thread_id", "threads"),
    ("feedbacks", "user_id", "users"),
    ("generations", "step_id", "steps"),
    ("generations", "thread_id", "threads"),
    ("threads", "user_id", "users"),
)
# A rating or generation record must sit in the thread of the step it belongs to.
MISFILED = {
    "feedbacks in another thread than their step": "feedbacks x JOIN steps s ON s.id = x.for_id",
    "generations in another thread than their step": "generations x JOIN steps s ON s.id = x.step_id",
}


def orphan_queries() -> dict[str, str]:
    queries = {
        f"{table}.{column} -> missing {parent}": (
            f"SELECT count(*) FROM {table} x LEFT JOIN {parent} p ON p.id = x.{column} "
            f"WHERE x.{column} IS NOT NULL AND p.id IS NULL"
        )
        for table, column, parent in REFERENCES
    }
    for name, join in MISFILED.items():
        queries[name] = f"SELECT count(*) FROM {join} WHERE s.thread_id <> x.thread_id"
    return queries


async def orphans(database_url: str) -> dict[str, int]:
    """The orphan and misfiled-row checks that found rows, with their counts; empty when consistent."""
    engine = create_engine(database_url)
    counts = {}
    try:
        async with engine.connect() as connection:
            for name, query in orphan_queries().items():
                counts[name] = (await connection.execute(text(query))).scalar_one()
    finally:
        await engine.dispose()
    return {name: count for name, count in counts.items() if count}


def sqlite_integrity(database_url: str) -> tuple[list[str], list[tuple]]:
    """SQLite's own checks: integrity_check's lines (['ok'] when sound) and foreign_key_check's rows."""
    with sqlite3.connect(make_url(database_url).database) as connection:
        integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        foreign_keys = list(connection.execute("PRAGMA foreign_key_check"))
    return integrity, foreign_keys


# Problems in the server's log: Chainlit logs, rather than raises, what fails in its background tasks.
LOG_PROBLEMS = ("Traceback", "Error", "database is locked", "Task exception was never retrieved")


def log_problems(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if any(p in line for p in LOG_PROBLEMS)]
