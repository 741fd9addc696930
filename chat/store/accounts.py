"""Password accounts: argon2 hashes in the users table, the first admin, and Chainlit's auth secret."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.rows import utcnow
from chat.store.schema import User

ADMIN = "admin"
hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_UNKNOWN_USER_HASH = hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user-management request that cannot be done; the message says why."""


@dataclass
class Account:
    identifier: str
    created_at: datetime
    has_password: bool


async def add_user(sessions: async_sessionmaker[AsyncSession], identifier: str, password: str) -> None:
    if not identifier.strip():
        raise AccountError("a user name cannot be empty")
    _check_strength(password)
    try:
        async with sessions.begin() as session:
            session.add(
                User(
                    id=str(uuid.uuid4()),
                    identifier=identifier,
                    password_hash=hasher.hash(password),
                    metadata_={},
                    created_at=utcnow(),
                )
            )
    except IntegrityError:
        raise AccountError(f"user '{identifier}' already exists; use `passwd` to change the password") from None


async def set_password(sessions: async_sessionmaker[AsyncSession], identifier: str, password: str) -> None:
    _check_strength(password)
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.identifier == identifier))
        if user is None:
            raise AccountError(f"no user '{identifier}'")
        user.password_hash = hasher.hash(password)
        user.token_version += 1  # a new password ends every login made with the old one (chat/store/logins.py)


async def list_accounts(sessions: async_sessionmaker[AsyncSession]) -> list[Account]:
    async with sessions() as session:
        users = await session.scalars(select(User).order_by(User.identifier))
        return [Account(user.identifier, user.created_at, user.password_hash is not None) for user in users]


async def check_password(sessions: async_sessionmaker[AsyncSession], identifier: str, password: str) -> bool:
    """Verify in a worker thread: argon2 costs ~0.1-0.2 s of CPU by design, and on the event loop
    every login would freeze every chat's stream for that long (50 users logging in: seconds)."""
    async with sessions() as session:
        stored = await session.scalar(select(User.password_hash).where(User.identifier == identifier))
    return await asyncio.to_thread(_verify, stored, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return hasher.verify(stored or _UNKNOWN_USER_HASH, password) and stored is not None
    except VerificationError:
        return False


async def ensure_admin(sessions: async_sessionmaker[AsyncSession], password: str | None) -> str | None:
    """On a first run (no users at all) create `admin`; return its password if we generated it."""
    async with sessions() as session:
        if await session.scalar(select(func.count()).select_from(User)):
            return None
    generated = None if password else secrets.token_urlsafe(12)
    try:
        await add_user(sessions, ADMIN, password or generated)
    except AccountError:  # another process made the first user at the same moment
        return None
    return generated


def auth_secret(data_dir: Path) -> str:
    """Chainlit signs its session tokens with CHAINLIT_AUTH_SECRET; keep one per installation so
    logins survive restarts without anyone configuring it."""
    if secret := os.environ.get("CHAINLIT_AUTH_SECRET"):
        return secret
    path = data_dir / "auth_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _check_strength(password: str) -> None:
    if len(password) < 8:
        raise AccountError("a password needs at least 8 characters")
