"""Accounts on both databases: hashed passwords, the first admin, and the `users` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from chat.store.accounts import ADMIN, AccountError, add_user, check_password, ensure_admin, list_accounts, set_password
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
