"""Two Loupe processes on one PostgreSQL database and one data directory hold a user to one set of limits
(issue 22, item 3): each process counted its own, so alternating between two doubled every limit.

The two servers are started once for the module; each test uses a user of its own, so that no test's
counts reach another's (the address, 127.0.0.1, is shared: only the login test fails a password).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from chat.store.accounts import auth_secret
from chat.store.database import create_engine, upgrade
from chat.ui.limits import FREE_FAILURES
from tests.helpers.client import ChatClient, Reply
from tests.helpers.databases import postgres_database
from tests.helpers.server import Server, add_account, start_server, stop_server

MESSAGES_PER_MINUTE = 4
LIMITS = {"LOUPE_MESSAGES_PER_MINUTE": str(MESSAGES_PER_MINUTE), "LOUPE_PENDING_UPLOADS_MB": "2"}
SHORT = {"max_new_tokens": 16}  # these tests are about what is let through, not about answers
PASSWORD = "team-limits-password-1"
RATE_NOTICE = "You are sending messages faster"


@dataclass
class Team:
    servers: tuple[Server, Server]
    database_url: str


@pytest.fixture(scope="module")
async def team(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Team]:
    """Two servers, each on its own port, on one new PostgreSQL database and one data directory."""
    root = tmp_path_factory.mktemp("team")
    async with postgres_database() as url:
        # Migrated, and the login secret made, before both start at once: two processes doing either at once
        # is issue 22's item 4, not what is tested here.
        await asyncio.to_thread(upgrade, url)
        auth_secret(root / "data")
        for n in range(2):
            (root / f"app-{n}").mkdir()
        started = await asyncio.gather(
            *(
                asyncio.to_thread(start_server, root / f"app-{n}", root / "data", LOUPE_DATABASE_URL=url, **LIMITS)
                for n in range(2)
            ),
            return_exceptions=True,
        )
        try:
            if failed := [outcome for outcome in started if isinstance(outcome, BaseException)]:
                raise failed[0]
            yield Team((started[0][1], started[1][1]), url)
        finally:
            for outcome in started:
                if not isinstance(outcome, BaseException):
                    await asyncio.to_thread(stop_server, outcome[0])


async def test_messages_alternating_between_the_processes_count_in_one_window(team: Team):
    servers = team.servers
    add_account(servers[0], "chatter", PASSWORD)
    async with (
        ChatClient(servers[0].url, username="chatter", password=PASSWORD) as first,
        ChatClient(servers[1].url, username="chatter", password=PASSWORD) as second,
    ):
        shown = Reply()
        for client in (first, second):
            await client.change_settings(SHORT)
        for n in range(2 * MESSAGES_PER_MINUTE):  # one by one, each process in turn
            client = (first, second)[n % 2]
            await client.send(f"Message {n}")
            shown.events += (await client.collect()).events
    answers = [message for message in shown.messages if (message.get("metadata") or {}).get("ended") == "finished"]
    notices = [message for message in shown.messages if message["output"].startswith(RATE_NOTICE)]
    assert (len(answers), len(notices)) == (MESSAGES_PER_MINUTE, MESSAGES_PER_MINUTE)


async def test_wrong_passwords_alternating_between_the_processes_are_held_back_as_on_one(team: Team):
    servers = team.servers
    add_account(servers[0], "guarded", PASSWORD)
    statuses = []
    async with httpx.AsyncClient(timeout=60) as http:
        for n in range(FREE_FAILURES + 2):
            guess = {"username": "guarded", "password": "a-wrong-guess"}
            statuses.append((await http.post(f"{servers[n % 2].url}/login", data=guess)).status_code)
        # The free failures, then one whose failure starts the first wait: as on one process (test_hostile.py).
        assert statuses == [401] * (FREE_FAILURES + 1) + [429]
        assert (
            await http.post(f"{servers[1].url}/login", data={"username": "guarded", "password": PASSWORD})
        ).status_code == 429


async def test_uploads_waiting_in_either_process_count_against_one_quota(team: Team):
    servers = team.servers
    add_account(servers[0], "hoarder", PASSWORD)
    megabyte = os.urandom(2**20 - 4096)  # the quota here is 2 MB: two fit, with their form headers
    async with (
        ChatClient(servers[0].url, username="hoarder", password=PASSWORD) as first,
        ChatClient(servers[1].url, username="hoarder", password=PASSWORD) as second,
    ):
        kept = await first.upload("1.png", megabyte)
        assert await second.upload("2.png", megabyte)
        for client in (first, second):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await client.upload("3.png", megabyte)
            assert refused.value.response.status_code == 429
        await first.change_settings(SHORT)
        await first.ask("Here it is.", [kept])  # sent with a message: no longer waiting, in either process
        assert await second.upload("3.png", megabyte)


async def test_a_limit_the_database_cannot_count_says_so(team: Team):
    """With the limits' table gone (as good as a database that fails), a login and an upload get 503 with
    Retry-After and a message that says why, and a chat message a notice with a reference: no bare 500."""
    servers = team.servers
    add_account(servers[0], "unlucky", PASSWORD)
    engine = create_engine(team.database_url)
    async with ChatClient(servers[0].url, username="unlucky", password=PASSWORD) as client:
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE limit_records RENAME TO limit_records_away"))
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                login = await http.post(f"{servers[1].url}/login", data={"username": "unlucky", "password": PASSWORD})
            with pytest.raises(httpx.HTTPStatusError) as upload:
                await client.upload("1.png", b"not counted")
            await client.send("Counted?")
            notice = await client.wait_for_message("Something went wrong on the server")
        finally:
            async with engine.begin() as connection:
                await connection.execute(text("ALTER TABLE limit_records_away RENAME TO limit_records"))
            await engine.dispose()
    for refused in (login, upload.value.response):
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["detail"].startswith("Loupe cannot reach its database to count this request")
    assert "reference" in notice["output"]
