"""API keys: what a program calls Loupe's API with, as the user who made the key.

A key is shown once, when it is made, and only its sha256 is stored: a key is 256 random bits, so
a fast hash is as safe as a slow one (there is nothing to guess by trying), and the check costs one
indexed lookup per request. A key ends when its user revokes it, when it expires, and when its user's
password changes or the account is removed (chat/store/accounts.py deletes the keys with the password).
A user names their keys; the name is how a key is listed and revoked, never the key itself.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.rows import utcnow
from chat.store.schema import ApiKey, User

PREFIX = "loupe-"  # tells a Loupe key at a glance (in a config file, a leaked log) from other services' keys
KEY_BYTES = 32  # 256 random bits
MAX_NAME_CHARS = 64  # api_keys.name
# A key's last use is written at most this often: once a minute tells an owner whether it is in use, without
# a write on every request of a busy script.
LAST_USED_PRECISION = timedelta(minutes=1)


class KeyRefused(ValueError):
    """A key request that cannot be done; the message says why."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def add_key(
    sessions: async_sessionmaker[AsyncSession], user: str, name: str | None = None, expires_days: float | None = None
) -> tuple[str, str]:
    """A new key of `user` (its name and the key itself, which is shown once and never stored). Without a name
    the key is named key-1, key-2, ...: the first free one."""
    if name is not None and not name.strip():
        raise KeyRefused("a key's name cannot be empty")
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise KeyRefused(f"a key's name has at most {MAX_NAME_CHARS} characters")
    if expires_days is not None and expires_days <= 0:
        raise KeyRefused("a key expires after a positive number of days")
    key, now = PREFIX + secrets.token_urlsafe(KEY_BYTES), utcnow()
    try:
        async with sessions.begin() as session:
            user_id = await session.scalar(select(User.id).where(User.identifier == user))
            if user_id is None:
                raise KeyRefused(f"no user '{user}'")
            if name is None:
                taken = set(await session.scalars(select(ApiKey.name).where(ApiKey.user_id == user_id)))
                name = next(f"key-{number}" for number in range(1, len(taken) + 2) if f"key-{number}" not in taken)
            session.add(
                ApiKey(
                    id=str(uuid.uuid4()),
                    user_id=user_id,
                    name=name,
                    digest=digest(key),
                    created_at=now,
                    expires_at=now + timedelta(days=expires_days) if expires_days is not None else None,
                )
            )
    except IntegrityError:
        raise KeyRefused(f"'{user}' already has a key named '{name}': revoke it or pick another name") from None
    return name, key


async def list_keys(sessions: async_sessionmaker[AsyncSession], user: str) -> list[KeyInfo]:
    """The keys of `user`, oldest first (expired ones too, until revoked: their owner sees why a script stopped)."""
    async with sessions() as session:
        keys = await session.scalars(
            select(ApiKey)
            .join(User, User.id == ApiKey.user_id)
            .where(User.identifier == user)
            .order_by(ApiKey.created_at)
        )
        return [KeyInfo(key.name, key.created_at, key.expires_at, key.last_used_at) for key in keys]


async def revoke_key(sessions: async_sessionmaker[AsyncSession], user: str, name: str) -> bool:
    """End `user`'s key `name` at once; False if they have no key of that name."""
    async with sessions.begin() as session:
        owner = select(User.id).where(User.identifier == user).scalar_subquery()
        result = await session.execute(delete(ApiKey).where(ApiKey.user_id == owner, ApiKey.name == name))
    return result.rowcount > 0


async def end_keys(session: AsyncSession, user_id: str) -> None:
    """Every key of the user, ended (in the caller's transaction: a password change)."""
    await session.execute(delete(ApiKey).where(ApiKey.user_id == user_id))


async def key_owner(sessions: async_sessionmaker[AsyncSession], key: str) -> str | None:
    """The identifier of the user `key` belongs to, if it is a current key; None for any other string."""
    if not key.startswith(PREFIX):
        return None
    now = utcnow()
    async with sessions.begin() as session:
        found = (
            await session.execute(
                select(ApiKey.id, ApiKey.expires_at, ApiKey.last_used_at, User.identifier)
                .join(User, User.id == ApiKey.user_id)
                .where(ApiKey.digest == digest(key))
            )
        ).first()
        if found is None or (found.expires_at is not None and found.expires_at <= now):
            return None
        if found.last_used_at is None or now - found.last_used_at >= LAST_USED_PRECISION:
            await session.execute(update(ApiKey).where(ApiKey.id == found.id).values(last_used_at=now))
    return found.identifier
