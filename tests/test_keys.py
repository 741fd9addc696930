"""API keys on both databases: made, listed, revoked, expired, ended with the password, and the `keys` command."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from chat.store.accounts import add_user, set_password
from chat.store.keys import PREFIX, KeyRefused, add_key, key_owner, list_keys, revoke_key
from chat.store.rows import utcnow
from chat.store.schema import ApiKey, User
from tests.helpers.server import REPO


async def test_a_key_is_its_users_until_revoked_and_only_its_hash_is_stored(layer) -> None:
    await add_user(layer.sessions, "ada", "ada-password")
    await add_user(layer.sessions, "bob", "bob-password")
    name, key = await add_key(layer.sessions, "ada", "laptop")
    assert name == "laptop" and key.startswith(PREFIX) and len(key) > 40
    assert await key_owner(layer.sessions, key) == "ada"
    async with layer.sessions() as session:
        stored = (await session.scalars(select(ApiKey))).all()
    assert [row.name for row in stored] == ["laptop"] and key not in {row.digest for row in stored}
    assert [info.name for info in await list_keys(layer.sessions, "ada")] == ["laptop"]
    assert (await list_keys(layer.sessions, "ada"))[0].last_used_at is not None, "its use is recorded"
    assert await list_keys(layer.sessions, "bob") == []
    assert not await revoke_key(layer.sessions, "bob", "laptop"), "another user cannot revoke it"
    assert await key_owner(layer.sessions, key) == "ada"
    assert await revoke_key(layer.sessions, "ada", "laptop")
    assert await key_owner(layer.sessions, key) is None
    for forged in ("", PREFIX, key[:-1], "Bearer " + key):
        assert await key_owner(layer.sessions, forged) is None


async def test_unnamed_keys_take_the_first_free_name_and_names_are_per_user(layer) -> None:
    await add_user(layer.sessions, "ada", "ada-password")
    await add_user(layer.sessions, "bob", "bob-password")
    assert [(await add_key(layer.sessions, "ada"))[0] for _ in range(2)] == ["key-1", "key-2"]
    await revoke_key(layer.sessions, "ada", "key-1")
    assert (await add_key(layer.sessions, "ada"))[0] == "key-1"
    assert (await add_key(layer.sessions, "bob", "key-2"))[0] == "key-2"
    with pytest.raises(KeyRefused, match="already has a key named 'key-2'"):
        await add_key(layer.sessions, "ada", "key-2")
    with pytest.raises(KeyRefused, match="no user 'nobody'"):
        await add_key(layer.sessions, "nobody")
    with pytest.raises(KeyRefused, match="positive"):
        await add_key(layer.sessions, "ada", expires_days=0)


async def test_an_expired_key_is_refused(layer) -> None:
    await add_user(layer.sessions, "ada", "ada-password")
    _, key = await add_key(layer.sessions, "ada", "ci", expires_days=1)
    assert await key_owner(layer.sessions, key) == "ada"
    async with layer.sessions.begin() as session:
        await session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await key_owner(layer.sessions, key) is None
    assert (await list_keys(layer.sessions, "ada"))[0].name == "ci", "listed until revoked, so its owner sees why"


async def test_a_new_password_or_removing_the_account_ends_every_key(layer) -> None:
    await add_user(layer.sessions, "ada", "ada-password")
    await add_user(layer.sessions, "bob", "bob-password")
    _, ada = await add_key(layer.sessions, "ada")
    _, bob = await add_key(layer.sessions, "bob")
    await set_password(layer.sessions, "ada", "new-password")
    assert await key_owner(layer.sessions, ada) is None and await list_keys(layer.sessions, "ada") == []
    assert await key_owner(layer.sessions, bob) == "bob", "only that user's keys end"
    async with layer.sessions.begin() as session:
        await session.delete(await session.scalar(select(User).where(User.identifier == "bob")))
    assert await key_owner(layer.sessions, bob) is None


def test_keys_command(tmp_path: Path) -> None:
    env = {**os.environ, "LOUPE_DATA_DIR": str(tmp_path)}

    def run(*args: str, password: str = "") -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "chat", *args]
        return subprocess.run(command, input=password, text=True, capture_output=True, cwd=REPO, env=env)

    assert run("users", "add", "ada", password="ada-password\n").returncode == 0
    made = run("keys", "add", "ada", "--name", "laptop", "--expires", "30")
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith(PREFIX) and "expiring in 30 days" in made.stdout
    listed = run("keys", "list", "ada").stdout
    assert listed.startswith("laptop\t") and "never used" in listed and key not in listed
    refused = run("keys", "add", "nobody")
    assert refused.returncode != 0 and refused.stderr.strip() == "Error: no user 'nobody'."
    assert run("keys", "revoke", "ada", "laptop").returncode == 0
    missing = run("keys", "revoke", "ada", "laptop")
    assert missing.returncode != 0 and "has no API key named 'laptop'" in missing.stderr
    assert run("keys", "list", "ada").stdout == ""
