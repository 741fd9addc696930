"""Accounts on both databases: hashed passwords, sign-in providers' identities and their links, how long a
login lasts, the first admin, and the `users` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import chainlit as cl
import jwt
import pytest
from sqlalchemy import select

from chat.store.accounts import (
    ADMIN,
    AccountError,
    PasswordChecks,
    account_of,
    add_user,
    ensure_admin,
    link,
    list_accounts,
    set_password,
    unlink,
)
from chat.store.logins import LOGIN_AT, TOKEN_VERSION, is_current, token_version
from chat.store.rows import utcnow
from chat.store.schema import User
from tests.helpers.server import REPO


async def test_passwords_are_hashed_and_checked(layer) -> None:
    await add_user(layer.sessions, "ada", "correct horse")
    async with layer.sessions() as session:
        stored = await session.scalar(select(User.password_hash).where(User.identifier == "ada"))
    assert stored.startswith("$argon2") and "correct horse" not in stored
    checks = PasswordChecks(layer.sessions, at_once=1)
    assert await checks.check("ada", "correct horse")
    assert not await checks.check("ada", "wrong horse")
    assert not await checks.check("nobody", "correct horse")


async def test_password_checks_run_at_most_so_many_at_once(layer) -> None:
    """argon2 is CPU and memory by design: logins arriving together take turns, not every core."""
    await add_user(layer.sessions, "ada", "correct horse")
    checks, running = PasswordChecks(layer.sessions, at_once=2), []

    async def watch() -> None:
        while True:
            running.append(checks.running)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    passwords = ["correct horse", "wrong horse"] * 3
    results = await asyncio.gather(*(checks.check("ada", password) for password in passwords))
    watcher.cancel()
    assert results == [True, False] * 3
    assert max(running) == 2


async def test_password_change_and_refusals(layer) -> None:
    await add_user(layer.sessions, "ada", "first-password")
    await set_password(layer.sessions, "ada", "second-password")
    assert await PasswordChecks(layer.sessions, at_once=1).check("ada", "second-password")
    with pytest.raises(AccountError, match="already exists"):
        await add_user(layer.sessions, "ada", "another-password")
    with pytest.raises(AccountError, match="at least 8"):
        await add_user(layer.sessions, "bob", "short")
    with pytest.raises(AccountError, match="no user"):
        await set_password(layer.sessions, "nobody", "long-enough")


async def test_first_run_creates_admin_once(layer) -> None:
    generated = await ensure_admin(layer.sessions, None)
    assert generated and await PasswordChecks(layer.sessions, at_once=1).check(ADMIN, generated)
    assert await ensure_admin(layer.sessions, "ignored-now") is None
    assert [account.identifier for account in await list_accounts(layer.sessions)] == [ADMIN]


async def test_a_login_ends_its_lifetime_after_signing_in_whatever_its_expiry(layer) -> None:
    """A token still unexpired, as tokens issued under a longer lifetime setting are, ends with its login."""
    await add_user(layer.sessions, "ada", "correct horse")
    secret, hour = "test-secret-" * 4, 3600

    def token(signed_in_ago: float, **metadata: float) -> str:
        now = time.time()
        signed = {"identifier": "ada", "metadata": {TOKEN_VERSION: 0, **metadata}, "iat": int(now - signed_in_ago)}
        return jwt.encode({**signed, "exp": int(now + hour)}, secret, algorithm="HS256")

    now = time.time()
    assert await is_current(layer.sessions, token(0, **{LOGIN_AT: now - 0.9 * hour}), secret, hour)
    assert not await is_current(layer.sessions, token(0, **{LOGIN_AT: now - 1.1 * hour}), secret, hour)
    # Tokens from before sign-in times were recorded count from when they were made.
    assert await is_current(layer.sessions, token(0.9 * hour), secret, hour)
    assert not await is_current(layer.sessions, token(1.1 * hour), secret, hour)


async def test_a_provider_identity_is_an_account_of_its_own_until_an_admin_links_it(layer) -> None:
    sessions = layer.sessions
    await add_user(sessions, "alice", "alice-password")
    assert await account_of(sessions, "github:alice") == "github:alice"  # never 'alice'
    await layer.create_user(cl.User(identifier="github:alice"))  # its first sign-in (Chainlit stores the user)
    assert not await PasswordChecks(sessions, at_once=1).check("github:alice", "alice-password")
    with pytest.raises(AccountError, match="kept for the accounts of sign-in providers"):
        await add_user(sessions, "google:alice", "alice-password")
    with pytest.raises(AccountError, match="kept for the accounts of sign-in providers"):
        await set_password(sessions, "github:alice", "alice-password")

    identity_version = await token_version(sessions, "github:alice")
    await link(sessions, "github:alice", "alice")
    await link(sessions, "gitlab:alice", "alice")  # before its first sign-in
    assert await account_of(sessions, "github:alice") == await account_of(sessions, "gitlab:alice") == "alice"
    assert await token_version(sessions, "github:alice") > identity_version  # its own logins ended
    listed = {account.identifier: account.linked_to for account in await list_accounts(sessions)}
    assert listed == {"alice": None, "github:alice": "alice", "gitlab:alice": "alice"}

    account_version = await token_version(sessions, "alice")
    assert await unlink(sessions, "github:alice") == "alice"
    assert await account_of(sessions, "github:alice") == "github:alice"
    assert await token_version(sessions, "alice") > account_version  # logins made through the identity end

    for identity, account, refusal in [
        ("alice", "github:alice", "not a sign-in provider's identity"),
        ("github:bob", "gitlab:alice", "by password or header"),
        ("github:bob", "nobody", "no user 'nobody'"),
    ]:
        with pytest.raises(AccountError, match=refusal):
            await link(sessions, identity, account)
    with pytest.raises(AccountError, match="not linked"):
        await unlink(sessions, "github:alice")


async def test_a_provider_never_signs_in_to_a_password_account_named_like_its_identity(layer) -> None:
    """A password account named `github:carol`, made before such names were refused, is not GitHub's carol."""
    async with layer.sessions.begin() as session:
        session.add(User(id="legacy", identifier="github:carol", password_hash="$argon2id$x", created_at=utcnow()))
    assert await account_of(layer.sessions, "github:carol") is None


def test_users_command(tmp_path: Path) -> None:
    env = {**os.environ, "LOUPE_DATA_DIR": str(tmp_path)}

    def users(*args: str, password: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "chat", "users", *args],
            input=password,
            text=True,
            capture_output=True,
            cwd=REPO,
            env=env,
        )

    assert users("add", "ada", password="ada-password\n").stdout == "Created user 'ada'.\n"
    refused = users("add", "ada", password="ada-password\n")
    assert refused.returncode != 0 and "already exists" in refused.stderr
    assert users("passwd", "ada", password="new-password\n").returncode == 0
    assert users("list").stdout.startswith("ada\t")
    refused = users("add", "github:ada", password="ada-password\n")
    assert refused.returncode != 0 and "kept for the accounts of sign-in providers" in refused.stderr
    assert (
        users("link", "github:ada", "ada").stdout
        == "'github:ada' now signs in to 'ada'; its earlier logins have ended.\n"
    )
    assert "github:ada\t" in users("list").stdout and users("list").stdout.endswith("\tsigns in as ada\n")
    unlinked = users("unlink", "github:ada").stdout
    assert unlinked == "'github:ada' signs in to its own account again; every login of 'ada' has ended.\n"
    refused = users("link", "github:ada", "nobody")
    assert refused.returncode != 0 and refused.stderr == "Error: no user 'nobody'.\n"
