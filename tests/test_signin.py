"""Signing in, end to end on SQLite and PostgreSQL (issue 21): a login ends on time however often its
token is traded, and a sign-in provider's users get accounts of their own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import socketio
from sqlalchemy import select

from chat.store.schema import Thread, User
from tests.helpers.client import ChatClient, login
from tests.helpers.oauth import Provider, oauth_provider, sign_in_through
from tests.helpers.server import ADMIN_PASSWORD, REPO, Running, Server, add_account, serve

SHORT = {"max_new_tokens": 16}  # these tests are about who signs in to what, not about answers
PASSWORD = "password-at-loupe-1"  # each password account's
AT_PROVIDER = "password-at-provider-1"  # each provider user's, at the provider
# Long enough for a login and a few trades on a loaded machine, short enough to wait out in a test.
LIFETIME_S = 15


@dataclass
class WithProvider(Running):
    provider: Provider


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def short_logins(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Running]:
    """A server whose logins last LIFETIME_S."""
    async with AsyncExitStack() as stack:
        app_root = tmp_path_factory.mktemp(f"short-logins-{request.param}")
        yield await serve(stack, request.param, app_root, LOUPE_LOGIN_LIFETIME_HOURS=str(LIFETIME_S / 3600))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def with_provider(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WithProvider]:
    """A server that offers sign-in through an OAuth provider running beside it."""
    async with AsyncExitStack() as stack:
        provider = stack.enter_context(oauth_provider({"alice": AT_PROVIDER, "carol": AT_PROVIDER}))
        app_root = tmp_path_factory.mktemp(f"oauth-{request.param}")
        running = await serve(stack, request.param, app_root, **provider.env())
        yield WithProvider(running.server, running.sessions, provider)


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
    while time.time() < ends - 5:  # traded every second while the login lasts: the chain an attacker keeps up
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


# 10. A sign-in provider's user has an account of their own ----------------------------------------


async def provider_login(running: WithProvider, name: str) -> dict[str, str]:
    """Signs `name` in at the provider, as a browser does; the login cookie Loupe sets."""
    answer = await sign_in_through(running.provider, running.server.url, name, AT_PROVIDER)
    assert answer.is_redirect and answer.headers["location"].startswith("/login/callback?success"), (
        answer.headers.get("location"),
        running.server.log.read_text()[-3000:],
    )
    return {"access_token": answer.cookies["access_token"]}


async def request(url: str, cookies: dict[str, str], method: str, path: str, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, cookies=cookies, timeout=60) as http:
        return await http.request(method, path, **options)


async def signed_in_as(url: str, cookies: dict[str, str]) -> str | int:
    """The account a login is of, or the refusal's status."""
    response = await request(url, cookies, "GET", "/user")
    return response.json()["identifier"] if response.status_code == 200 else response.status_code


async def thread_ids(url: str, cookies: dict[str, str]) -> set[str]:
    """The conversations the sidebar lists."""
    listed = await request(url, cookies, "POST", "/project/threads", json={"pagination": {"first": 50}, "filter": {}})
    return {thread["id"] for thread in listed.json()["data"]}


async def chat_once(url: str, question: str, **login_as: Any) -> str:
    """A conversation of one question; its thread id."""
    async with ChatClient(url, **login_as) as client:
        await client.change_settings(SHORT)
        assert (await client.ask(question)).messages[-1]["metadata"]["ended"] == "finished"
    return client.thread_id


def users_command(server: Server, *args: str) -> str:
    """`python -m chat users ...` against the server's database."""
    done = subprocess.run(
        [sys.executable, "-m", "chat", "users", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "LOUPE_DATA_DIR": str(server.data_dir), **server.env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def owner_of(running: Running, thread_id: str) -> str | None:
    async with running.sessions() as session:
        query = select(User.identifier).join(Thread, Thread.user_id == User.id).where(Thread.id == thread_id)
        return await session.scalar(query)


async def test_a_providers_user_is_not_the_password_account_of_the_same_name(with_provider: WithProvider) -> None:
    url = with_provider.server.url
    add_account(with_provider.server, "alice", PASSWORD)
    alices = await chat_once(url, "Alice's own question", username="alice", password=PASSWORD)

    provided = await provider_login(with_provider, "alice")
    assert await signed_in_as(url, provided) == "generic:alice"
    theirs = await chat_once(url, "Whose chat is this?", cookies=provided)  # the login works on the socket too
    assert await owner_of(with_provider, theirs) == "generic:alice"
    assert await owner_of(with_provider, alices) == "alice"
    async with with_provider.sessions() as session:
        accounts = dict((await session.execute(select(User.identifier, User.password_hash))).all())
    assert accounts["alice"] and accounts["generic:alice"] is None  # two accounts; the provider's has no password

    # Not alice's conversations: neither listed, read, renamed, deleted nor resumed.
    assert await thread_ids(url, provided) == {theirs}
    for method, path, options in [
        ("GET", f"/project/thread/{alices}", {}),
        ("PUT", "/project/thread", {"json": {"threadId": alices, "name": "taken"}}),
        ("DELETE", "/project/thread", {"json": {"threadId": alices}}),
    ]:
        assert (await request(url, provided, method, path, **options)).status_code in (401, 403, 404)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await ChatClient(url, cookies=provided, thread_id=alices).__aenter__()
    alice = await login(url, "alice", PASSWORD)
    assert alices in await thread_ids(url, alice) and theirs not in await thread_ids(url, alice)

    # Nor the other way round: the provider's account takes no password, alice's least of all.
    refused = await request(url, {}, "POST", "/login", data={"username": "generic:alice", "password": PASSWORD})
    assert refused.status_code == 401


async def test_an_admin_links_a_providers_user_to_an_account_and_unlinks_it(with_provider: WithProvider) -> None:
    url, server = with_provider.server.url, with_provider.server
    add_account(server, "carol", PASSWORD)
    carols = await chat_once(url, "Carol's question", username="carol", password=PASSWORD)
    own = await provider_login(with_provider, "carol")
    assert await signed_in_as(url, own) == "generic:carol"

    assert users_command(server, "link", "generic:carol", "carol").startswith("'generic:carol' now signs in to 'carol'")
    assert await signed_in_as(url, own) == 401  # the login as an account of its own has ended
    linked = await provider_login(with_provider, "carol")
    assert await signed_in_as(url, linked) == "carol"
    assert carols in await thread_ids(url, linked)
    assert "generic:carol\t" in users_command(server, "list")

    users_command(server, "unlink", "generic:carol")
    assert await signed_in_as(url, linked) == 401  # logins made through the link end
    again = await provider_login(with_provider, "carol")
    assert await signed_in_as(url, again) == "generic:carol"
    assert carols not in await thread_ids(url, again)
