"""Two Loupe processes on one PostgreSQL database and one data directory hold a user to one set of limits
(issue 22, item 3): each process counted its own, so alternating between two doubled every limit.

The two servers are started once for the module; each test uses a user of its own, so that no test's
counts reach another's (the address, 127.0.0.1, is shared: only the login test fails a password).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from chat.store.accounts import auth_secret
from chat.store.database import upgrade
from chat.ui.limits import FREE_FAILURES
from tests.helpers.client import ChatClient, Reply
from tests.helpers.databases import postgres_database
from tests.helpers.server import Server, add_account, start_server, stop_server

MESSAGES_PER_MINUTE = 4
LIMITS = {"LOUPE_MESSAGES_PER_MINUTE": str(MESSAGES_PER_MINUTE), "LOUPE_PENDING_UPLOADS_MB": "2"}
SHORT = {"max_new_tokens": 16}  # these tests are about what is let through, not about answers
PASSWORD = "team-limits-password-1"
RATE_NOTICE = "You are sending messages faster"


@pytest.fixture(scope="module")
async def team(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Server, Server]]:
    """Two servers, each on its own port, on one new PostgreSQL database and one data directory."""
    root = tmp_path_factory.mktemp("team")
    async with postgres_database() as url:
        # Migrated, and the login secret made, before both start: two processes doing either at once is
        # issue 22's item 4, not what is tested here.
        await asyncio.to_thread(upgrade, url)
        auth_secret(root / "data")
        started = []
        try:
            for n in range(2):
                (root / f"app-{n}").mkdir()
                started.append(
                    await asyncio.to_thread(
                        start_server, root / f"app-{n}", root / "data", LOUPE_DATABASE_URL=url, **LIMITS
                    )
                )
            yield started[0][1], started[1][1]
        finally:
            for process, _ in started:
                await asyncio.to_thread(stop_server, process)


async def test_messages_alternating_between_the_processes_count_in_one_window(team: tuple[Server, Server]):
    add_account(team[0], "chatter", PASSWORD)
    async with (
        ChatClient(team[0].url, username="chatter", password=PASSWORD) as first,
        ChatClient(team[1].url, username="chatter", password=PASSWORD) as second,
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


async def test_wrong_passwords_alternating_between_the_processes_are_held_back_as_on_one(team: tuple[Server, Server]):
    add_account(team[0], "guarded", PASSWORD)
    statuses = []
    async with httpx.AsyncClient(timeout=60) as http:
        for n in range(FREE_FAILURES + 2):
            guess = {"username": "guarded", "password": "a-wrong-guess"}
            statuses.append((await http.post(f"{team[n % 2].url}/login", data=guess)).status_code)
        # The free failures, then one whose failure starts the first wait: as on one process (test_hostile.py).
        assert statuses == [401] * (FREE_FAILURES + 1) + [429]
        assert (
            await http.post(f"{team[1].url}/login", data={"username": "guarded", "password": PASSWORD})
        ).status_code == 429


async def test_uploads_waiting_in_either_process_count_against_one_quota(team: tuple[Server, Server]):
    add_account(team[0], "hoarder", PASSWORD)
    megabyte = os.urandom(2**20 - 4096)  # the quota here is 2 MB: two fit, with their form headers
    async with (
        ChatClient(team[0].url, username="hoarder", password=PASSWORD) as first,
        ChatClient(team[1].url, username="hoarder", password=PASSWORD) as second,
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
