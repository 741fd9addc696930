"""Who may sign in, the user a login token is made for, and when the token expires.

Passwords are always accepted (chat/app.py). A header set by an authenticating proxy, and the
OAuth providers configured in Chainlit's OAUTH_<PROVIDER>_* variables, are accepted only when
configured: Chainlit offers a way to log in exactly when its callback is registered. A provider's
users sign in to accounts of their own (chat/store/accounts.py). Every token, whichever way it was
signed in and however often it was traded at `POST /auth/jwt`, expires LOUPE_LOGIN_LIFETIME_HOURS
after its sign-in (chat/store/logins.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import chainlit as cl
import chainlit.server as chainlit_server
import jwt
from chainlit.auth import get_jwt_secret
from chainlit.oauth_providers import get_configured_oauth_providers
from fastapi import HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.accounts import account_of, provider_identity
from chat.store.logins import LOGIN_AT, TOKEN_VERSION, login_ends, token_version

log = logging.getLogger("loupe.signin")


async def signed_in(
    sessions: async_sessionmaker[AsyncSession], identifier: str, metadata: dict[str, Any] | None = None
) -> cl.User:
    """The user a login token is made for: with their current token version, so logout can end it, and
    the time of this sign-in, which every token traded for this one carries on, so the login ends on time."""
    version = await token_version(sessions, identifier)
    return cl.User(
        identifier=identifier, metadata={**(metadata or {}), TOKEN_VERSION: version, LOGIN_AT: int(time.time())}
    )


def expire_tokens_with_their_login(lifetime_hours: float) -> None:
    """Make every token Chainlit issues (at a login, or in trade for a token at `POST /auth/jwt`) expire
    `lifetime_hours` after its sign-in, not after the moment it is made: traded again and again, a token
    of Chainlit's own would never expire. A token whose login has ended, or that carries no sign-in time
    (one made before Loupe recorded it), is not traded: 401, log in again."""

    def create_jwt(user: cl.User) -> str:
        expires = login_ends(user.to_dict(), lifetime_hours * 3600)
        if expires <= time.time():
            raise HTTPException(status_code=401, detail="This login has ended; log in again.")
        content = {**user.to_dict(), "exp": int(expires), "iat": int(time.time())}
        return jwt.encode(content, get_jwt_secret(), algorithm="HS256")

    chainlit_server.create_jwt = create_jwt  # the one place Chainlit makes a token (_authenticate_user)


def enable_external_logins(sessions: async_sessionmaker[AsyncSession], trusted_user_header: str | None) -> None:
    if trusted_user_header:

        @cl.header_auth_callback
        async def header_login(headers: Any) -> cl.User | None:
            """Behind a proxy that authenticates users and names them in a header."""
            identifier = headers.get(trusted_user_header)
            return await signed_in(sessions, identifier) if identifier else None

    if get_configured_oauth_providers():

        @cl.oauth_callback
        async def oauth_login(
            provider_id: str,
            token: str,
            raw_user_data: dict[str, Any],
            default_user: cl.User,
            id_token: str | None = None,  # passed only by Azure AD's hybrid flow
        ) -> cl.User | None:
            """Anyone a configured provider signs in gets an account of their own, `<provider>:<name>`
            (github:alice), never the password account `alice`; or the account an admin linked it to."""
            if not default_user.identifier.strip():
                log.warning("Sign-in refused: %s named no user", provider_id)
                return None
            identity = provider_identity(provider_id, default_user.identifier)
            if (account := await account_of(sessions, identity)) is None:
                log.warning("Sign-in refused: %s names a password account; an admin may link it (users link)", identity)
                return None
            return await signed_in(sessions, account, default_user.metadata)
