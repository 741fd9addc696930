"""Accounts: passwords (argon2 hashes in the users table), sign-in providers' identities and the accounts
an admin links them to, the first admin, and Chainlit's auth secret.

Someone a sign-in provider (OAuth) signs in gets an account of their own, named `<provider>:<their name
there>` (`github:alice`), never the password account of the same name (`alice`): a provider vouches
only for its own names, and anyone may pick any name there. Only an admin joins the two, by linking
the identity to the account (`python -m chat users link github:alice alice`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.atomic import kept_secret
from chat.store.keys import end_keys
from chat.store.rows import utcnow
from chat.store.schema import User

ADMIN = "admin"
PROVIDER_SEPARATOR = ":"  # between a sign-in provider's id and the name it gives someone: github:alice
LINKED_TO = "signs_in_as"  # in a provider identity's users.metadata: the account an admin linked it to
SECRET_FILE = "auth_secret"  # in the data directory, shared by every process that serves it
SECRET_BYTES = 48  # random bytes in a new login secret: 64 characters, as long as `chainlit create-secret` makes
log = logging.getLogger("loupe.accounts")
hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_UNKNOWN_USER_HASH = hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user-management request that cannot be done; the message says why."""


class SecretUnavailable(RuntimeError):
    """The login secret cannot be made or read: the server cannot sign logins, and must not start."""


@dataclass
class Account:
    identifier: str
    created_at: datetime
    has_password: bool
    linked_to: str | None  # for a provider identity an admin linked: the account it signs in to


def provider_identity(provider_id: str, name: str) -> str:
    """The account of someone a provider signs in as `name`, until an admin links it to another."""
    return f"{provider_id}{PROVIDER_SEPARATOR}{name}"


def is_provider_identity(identifier: str) -> bool:
    return PROVIDER_SEPARATOR in identifier


async def add_user(sessions: async_sessionmaker[AsyncSession], identifier: str, password: str) -> None:
    if not identifier.strip():
        raise AccountError("a user name cannot be empty")
    _check_password_account(identifier)
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
    _check_password_account(identifier)
    _check_strength(password)
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.identifier == identifier))
        if user is None:
            raise AccountError(f"no user '{identifier}'")
        user.password_hash = hasher.hash(password)
        user.token_version += 1  # a new password ends every login made with the old one (chat/store/logins.py)
        await end_keys(session, user.id)  # and every API key made while the old one was in use


async def list_accounts(sessions: async_sessionmaker[AsyncSession]) -> list[Account]:
    async with sessions() as session:
        users = await session.scalars(select(User).order_by(User.identifier))
        return [
            Account(user.identifier, user.created_at, user.password_hash is not None, user.metadata_.get(LINKED_TO))
            for user in users
        ]


async def account_of(sessions: async_sessionmaker[AsyncSession], identity: str) -> str | None:
    """The account a provider identity signs in to: the one an admin linked it to, else its own (made
    at its first sign-in). None where a password account bears the identity's name (one made before
    such names were refused): a provider never signs anyone in to a password account."""
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.identifier == identity))
    if user is None:
        return identity
    if linked := user.metadata_.get(LINKED_TO):
        return linked
    return identity if user.password_hash is None else None


async def link(sessions: async_sessionmaker[AsyncSession], identity: str, account: str) -> None:
    """From now on `identity` (github:alice) signs in to `account` (alice), and its logins so far end.

    Its own account, if it has one, keeps its conversations; unlinking makes it reachable again.
    """
    if not is_provider_identity(identity):
        raise AccountError(f"'{identity}' is not a sign-in provider's identity (provider:name, e.g. github:alice)")
    if is_provider_identity(account):
        raise AccountError(f"link '{identity}' to an account that signs in by password or header, not '{account}'")
    async with sessions.begin() as session:
        if await session.scalar(select(User.id).where(User.identifier == account)) is None:
            raise AccountError(f"no user '{account}'")
        user = await session.scalar(select(User).where(User.identifier == identity))
        if user is None:  # linked before its first sign-in
            user = User(id=str(uuid.uuid4()), identifier=identity, metadata_={}, created_at=utcnow(), token_version=0)
            session.add(user)
        user.metadata_ = {**user.metadata_, LINKED_TO: account}
        user.token_version += 1  # its logins as an account of its own end (chat/store/logins.py)


async def unlink(sessions: async_sessionmaker[AsyncSession], identity: str) -> str:
    """`identity` signs in to its own account again; every login of the account it was linked to ends
    (some of them were made through the identity). Returns that account."""
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.identifier == identity))
        if user is None or not (account := user.metadata_.get(LINKED_TO)):
            raise AccountError(f"'{identity}' is not linked to an account")
        user.metadata_ = {key: value for key, value in user.metadata_.items() if key != LINKED_TO}
        await session.execute(
            update(User).where(User.identifier == account).values(token_version=User.token_version + 1)
        )
    return account


class PasswordChecks:
    """Password checks, at most `at_once` at a time, each in a worker thread.

    argon2 costs ~0.25 s of CPU and 64 MiB a check by design. On the event loop every login would freeze
    every chat's stream for that long; in as many threads as logins arrive, sixty at once took the CPU
    from the answers streaming meanwhile (one took 34.6 s instead of 0.7 s). The others wait their turn
    on the event loop, holding no thread and none of argon2's memory.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], at_once: int) -> None:
        self.sessions, self.at_once = sessions, at_once
        self.running = 0
        self._turns = asyncio.Semaphore(at_once)

    async def check(self, identifier: str, password: str) -> bool:
        async with self.sessions() as session:
            stored = await session.scalar(select(User.password_hash).where(User.identifier == identifier))
        async with self._turns:
            self.running += 1
            log.info("Checking the password of %r (%d of at most %d at once)", identifier, self.running, self.at_once)
            try:
                return await asyncio.to_thread(_verify, stored, password)
            finally:
                self.running -= 1


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
    logins survive restarts without anyone configuring it.

    Processes starting together on one data directory all read the first one's secret: it is created
    whole or not at all (chat/store/atomic.py), so none reads an empty one and answers every login with
    a 500. SecretUnavailable, saying what to do, where it cannot be made or read.
    """
    if secret := os.environ.get("CHAINLIT_AUTH_SECRET"):
        return secret
    path = data_dir / SECRET_FILE
    try:
        secret = kept_secret(path, SECRET_BYTES)
    except OSError as error:
        raise SecretUnavailable(
            f"cannot make or read the login secret {path} ({error.strerror or error}); let this user write "
            "LOUPE_DATA_DIR and read the file, or set CHAINLIT_AUTH_SECRET"
        ) from error
    if not secret:  # written by a Loupe from before secrets were created whole
        raise SecretUnavailable(
            f"the login secret {path} is empty; delete it (a new one is made, and every login ends), "
            "or set CHAINLIT_AUTH_SECRET"
        )
    return secret


def _check_password_account(identifier: str) -> None:
    if is_provider_identity(identifier):
        raise AccountError(
            f"'{PROVIDER_SEPARATOR}' is kept for the accounts of sign-in providers (github:alice), which have no "
            "password; to let one sign in to a password account, link it: `users link IDENTITY ACCOUNT`"
        )


def _check_strength(password: str) -> None:
    if len(password) < 8:
        raise AccountError("a password needs at least 8 characters")
