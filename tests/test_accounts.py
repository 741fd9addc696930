"""Accounts on both databases: hashed passwords, the first admin, and the `users` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from sqlalchemy import select

from chat.store.accounts import ADMIN, AccountError, add_user, check_password, ensure_admin, list_accounts, set_password
from chat.store.logins import LOGIN_AT, TOKEN_VERSION, is_current
from chat.store.schema import User
from tests.helpers.server import REPO


async def test_passwords_are_hashed_and_checked(layer) -> None:
    await add_user(layer.sessions, "ada", "correct horse")
    async with layer.sessions() as session:
        stored = await session.scalar(select(User.password_hash).where(User.identifier == "ada"))
    assert stored.startswith("$argon2") and "correct horse" not in stored
    assert await check_password(layer.sessions, "ada", "correct horse")
    assert not await check_password(layer.sessions, "ada", "wrong horse")
    assert not await check_password(layer.sessions, "nobody", "correct horse")


async def test_password_change_and_refusals(layer) -> None:
    await add_user(layer.sessions, "ada", "first-password")
    await set_password(layer.sessions, "ada", "second-password")
    assert await check_password(layer.sessions, "ada", "second-password")
    with pytest.raises(AccountError, match="already exists"):
        await add_user(layer.sessions, "ada", "another-password")
    with pytest.raises(AccountError, match="at least 8"):
        await add_user(layer.sessions, "bob", "short")
    with pytest.raises(AccountError, match="no user"):
        await set_password(layer.sessions, "nobody", "long-enough")


async def test_first_run_creates_admin_once(layer) -> None:
    generated = await ensure_admin(layer.sessions, None)
    assert generated and await check_password(layer.sessions, ADMIN, generated)
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
