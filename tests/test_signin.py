"""Signing in, end to end on SQLite and PostgreSQL (issue 21): a login ends on time however often its
token is traded, and a sign-in provider's users get accounts of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import socketio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.database import create_engine, session_factory
from tests.helpers.client import login
from tests.helpers.databases import postgres_database
from tests.helpers.server import ADMIN_PASSWORD, Server, start_server, stop_server

# Long enough for a login and a few trades on a loaded machine, short enough to wait out in a test.
LIFETIME_S = 8


@dataclass
class Running:
    server: Server
    sessions: async_sessionmaker[AsyncSession]


async def serve(stack: AsyncExitStack, database: str, app_root: Any, **env: str) -> Running:
    """A Loupe server on a new database of `database`'s kind, stopped when `stack` closes."""
    if database == "postgresql":
        url = env["LOUPE_DATABASE_URL"] = await stack.enter_async_context(postgres_database("loupe_signin"))
    else:
        url = f"sqlite+aiosqlite:///{app_root / '.data' / 'loupe.db'}"
    process, server = await asyncio.to_thread(start_server, app_root, **env)
    stack.callback(stop_server, process)
    engine = create_engine(url)
    stack.push_async_callback(engine.dispose)
    return Running(server, session_factory(engine))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def short_logins(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    """A server whose logins last LIFETIME_S."""
    async with AsyncExitStack() as stack:
        app_root = tmp_path_factory.mktemp(f"short-logins-{request.param}")
        yield await serve(stack, request.param, app_root, LOUPE_LOGIN_LIFETIME_HOURS=str(LIFETIME_S / 3600))


def content(token: str) -> dict[str, Any]:
    """What a token says (its signature is the server's to check)."""
    return jwt.decode(token, options={"verify_signature": False})


async def open_socket(url: str, token: str) -> None:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        url,
        socketio_path="/ws/socket.io",
        transports=["websocket"],
        headers={"Cookie": f"access_token={token}"},
        auth={"sessionId": "s", "clientType": "webapp", "userEnv": "{}"},
        wait_timeout=30,
    )
    await client.disconnect()


# 9. A token traded at POST /auth/jwt expires with its login ---------------------------------------


async def trade(url: str, token: str) -> httpx.Response:
    """Chainlit's token exchange: a new token for a valid one."""
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post("/auth/jwt", headers={"Authorization": f"Bearer {token}"})


async def user_status(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, cookies={"access_token": token}) as http:
        return (await http.get("/user")).status_code


async def test_trading_a_token_never_extends_the_login(short_logins: Running) -> None:
    url = short_logins.server.url
    token = (await login(url, "admin", ADMIN_PASSWORD))["access_token"]
    ends = content(token)["exp"]
    traded = 0
    while time.time() < ends - 2:  # traded every second while the login lasts: the chain an attacker keeps up
        await asyncio.sleep(1)
        response = await trade(url, token)
        assert response.status_code == 200, response.text
        token = response.cookies["access_token"]
        assert content(token)["exp"] == ends  # the new token ends with the login, not LIFETIME_S from now
        assert await user_status(url, token) == 200
        traded += 1
    assert traded >= 2
    await asyncio.sleep(ends - time.time() + 1)
    assert await user_status(url, token) == 401
    refused = await trade(url, token)
    assert refused.status_code == 401 and "access_token" not in refused.cookies
    with pytest.raises(socketio.exceptions.ConnectionError):
        await open_socket(url, token)
    assert await user_status(url, (await login(url, "admin", ADMIN_PASSWORD))["access_token"]) == 200
