"""Login tokens that end: a per-user token version, signed into each token and checked on every use,
and a sign-in time that no token outlives.

Chainlit's login token is a signed JWT that stays valid until it expires, whatever happens to the
account. Loupe signs the user's `token_version` (users table) into the token's user metadata at
login; logout and a password change raise the version, so every token issued before stops
working at once, on HTTP and on socket.io, in every server process that shares the database.

Chainlit also trades any valid token for a fresh one (`POST /auth/jwt`), which would let a login
last forever without its password. So the metadata also carries the sign-in time (`login_at`),
which a trade copies into the new token: a login ends LOUPE_LOGIN_LIFETIME_HOURS after it, however
often its token was traded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.schema import User

TOKEN_VERSION = "token_version"  # the key in a token's user metadata
LOGIN_AT = "login_at"  # the key in a token's user metadata: when its user signed in (Unix time, seconds)
log = logging.getLogger("loupe.logins")


async def token_version(sessions: async_sessionmaker[AsyncSession], identifier: str) -> int:
    """The version a login of `identifier` signs into its token now (0 for a user not stored yet)."""
    return await _stored_version(sessions, identifier) or 0


async def _stored_version(sessions: async_sessionmaker[AsyncSession], identifier: str | None) -> int | None:
    async with sessions() as session:
        return await session.scalar(select(User.token_version).where(User.identifier == identifier))


async def revoke(sessions: async_sessionmaker[AsyncSession], identifier: str) -> None:
    """End every login of `identifier`: tokens issued before now are refused from now on."""
    async with sessions.begin() as session:
        await session.execute(
            update(User).where(User.identifier == identifier).values(token_version=User.token_version + 1)
        )
    log.info("Revoked every login of %s", identifier)


def claims(token: str, secret: str) -> dict[str, Any] | None:
    """The token's content if its signature and expiry hold, else None."""
    try:
        return jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.InvalidTokenError:
        return None


def login_ends(content: dict[str, Any], lifetime_s: float) -> float:
    """When the login that a token's content (or the user a token is made for) belongs to ends, in Unix time.

    Tokens from before sign-in times were recorded count from when they were made (`iat`); content
    with neither has ended.
    """
    started = (content.get("metadata") or {}).get(LOGIN_AT, content.get("iat"))
    valid = isinstance(started, int | float) and not isinstance(started, bool)
    return started + lifetime_s if valid else 0.0


async def is_current(
    sessions: async_sessionmaker[AsyncSession], token: str | None, secret: str, lifetime_s: float
) -> bool:
    """Whether a (validly signed) token was issued at its user's current token version, within
    `lifetime_s` of its sign-in (which also ends logins at once when the lifetime setting is lowered).

    Tokens that are missing or badly signed are Chainlit's to refuse; this answers True for them so
    that Chainlit's own message stays the one the client sees. Tokens from before token versions
    existed carry none and count as version 0, the version every account starts with.
    """
    content = claims(token, secret) if token else None
    if content is None:
        return True
    if login_ends(content, lifetime_s) <= time.time():
        return False
    version = (content.get("metadata") or {}).get(TOKEN_VERSION, 0)
    stored = await _stored_version(sessions, content.get("identifier"))
    return stored is not None and stored == version
