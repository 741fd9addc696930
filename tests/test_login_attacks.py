"""Attacks on logging in (issue 21, round 2), made as they were found against a running server.

Forged X-Forwarded-For addresses. Each test checks what the attacker gets back. The servers
here are their own: a test that uses up the login throttle of 127.0.0.1 holds back every later
login from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.database import create_engine, session_factory
from chat.ui.limits import FREE_FAILURES_PER_ADDRESS
from tests.helpers.databases import postgres_database
from tests.helpers.server import Server, start_server, stop_server


@dataclass
class Attacked:
    server: Server
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def attacked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Attacked]:
    """A server that trusts no proxy (the default), on each database."""
    app_root = tmp_path_factory.mktemp(f"logins-{request.param}")
    async with AsyncExitStack() as stack:
        env: dict[str, str] = {}
        if request.param == "postgresql":
            url = env["LOUPE_DATABASE_URL"] = await stack.enter_async_context(postgres_database("loupe_logins"))
        else:
            url = f"sqlite+aiosqlite:///{app_root / '.data' / 'loupe.db'}"
        process, server = await asyncio.to_thread(start_server, app_root, **env)
        stack.callback(stop_server, process)
        engine = create_engine(url)
        stack.push_async_callback(engine.dispose)
        yield Attacked(server, session_factory(engine))


async def guess(http: httpx.AsyncClient, name: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return await http.post("/login", data={"username": name, "password": "a-wrong-guess"}, headers=headers)


# 8. X-Forwarded-For counts only from a proxy named in LOUPE_TRUSTED_PROXIES --------------------------
# Last in the module: it uses up the free failures of 127.0.0.1.


async def test_forged_forwarded_addresses_from_an_untrusted_peer_are_ignored(attacked: Attacked):
    """No proxy is trusted by default, loopback included: guesses for ever-new names, each claiming to be
    forwarded for a new address, still count against the one address they come from."""
    async with httpx.AsyncClient(base_url=attacked.server.url) as http:
        for n in range(FREE_FAILURES_PER_ADDRESS + 2):
            answer = await guess(http, f"nobody-{n}", f"198.51.100.{n}")
            if answer.status_code == 429:
                break
            assert answer.status_code == 401
    assert answer.status_code == 429, "each forged address got free failures of its own"
    await asyncio.sleep(int(answer.headers["retry-after"]))  # the wait sat out: the address may log in again


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server behind a proxy on this host (no storage involved: SQLite only)."""
    process, server = start_server(tmp_path_factory.mktemp("behind-proxy"), LOUPE_TRUSTED_PROXIES="127.0.0.1,::1")
    yield server
    stop_server(process)


async def test_a_trusted_proxy_names_the_client_by_the_right_most_address_it_did_not_add(behind_proxy: Server):
    client, neighbour = "203.0.113.7", "203.0.113.8"
    async with httpx.AsyncClient(base_url=behind_proxy.url) as http:
        # The client writes what it likes left of the address the proxy appended: only that one counts.
        statuses = [
            (await guess(http, f"nobody-{n}", f"198.51.100.{n}, {client}")).status_code
            for n in range(FREE_FAILURES_PER_ADDRESS + 2)
        ]
        assert statuses == [401] * (FREE_FAILURES_PER_ADDRESS + 1) + [429]
        assert (await guess(http, "nobody-else", f"{client}, 127.0.0.1")).status_code == 429  # trusted hops skipped
        assert (await guess(http, "nobody-else", neighbour)).status_code == 401  # another client of the proxy
        assert (await guess(http, "nobody-else")).status_code == 401  # the proxy itself, sending no header
