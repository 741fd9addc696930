"""Who may sign in, and the user a login token is made for.

Passwords are always accepted (chat/app.py). A header set by an authenticating proxy, and the
OAuth providers configured in Chainlit's OAUTH_<PROVIDER>_* variables, are accepted only when
configured: Chainlit offers a way to log in exactly when its callback is registered.
"""

from __future__ import annotations

from typing import Any

import chainlit as cl
from chainlit.oauth_providers import get_configured_oauth_providers
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.logins import TOKEN_VERSION, token_version


async def signed_in(
    sessions: async_sessionmaker[AsyncSession], identifier: str, metadata: dict[str, Any] | None = None
) -> cl.User:
    """The user a login token is made for: with their current token version, so logout can end it."""
    version = await token_version(sessions, identifier)
    return cl.User(identifier=identifier, metadata={**(metadata or {}), TOKEN_VERSION: version})


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
            provider_id: str, token: str, raw_user_data: dict[str, str], default_user: cl.User, id_token: str | None
        ) -> cl.User | None:
            """Anyone the configured provider signs in gets an account, named as the provider names them."""
            return await signed_in(sessions, default_user.identifier, default_user.metadata)
