"""A small OAuth 2 / OpenID Connect sign-in provider for tests, and a browser's walk through its sign-in.

The provider serves the authorization-code flow the way a real one does: its authorize page takes a
user's name and password and redirects back to the app with a one-time code, its token endpoint trades
the code (for the same client, secret and redirect address) for an access token, and its userinfo
endpoint names the token's user. It runs in the test's process (uvicorn in a thread) on 127.0.0.1;
Loupe reaches it through Chainlit's generic provider (OAUTH_GENERIC_* variables).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import uvicorn
from fastapi import FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tests.helpers.server import free_port

PROVIDER_ID = "generic"  # Chainlit's generic provider, unless OAUTH_GENERIC_NAME names it otherwise


@dataclass
class Provider:
    url: str
    users: dict[str, str]  # name -> password, at the provider
    client_id: str = "loupe"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def env(self) -> dict[str, str]:
        """The settings that make Loupe offer this provider on its login page."""
        return {
            "OAUTH_GENERIC_CLIENT_ID": self.client_id,
            "OAUTH_GENERIC_CLIENT_SECRET": self.client_secret,
            "OAUTH_GENERIC_AUTH_URL": f"{self.url}/authorize",
            "OAUTH_GENERIC_TOKEN_URL": f"{self.url}/token",
            "OAUTH_GENERIC_USER_INFO_URL": f"{self.url}/userinfo",
            "OAUTH_GENERIC_SCOPES": "openid profile email",
            "OAUTH_GENERIC_USER_IDENTIFIER": "preferred_username",
        }


def provider_app(provider: Provider) -> FastAPI:
    app = FastAPI()
    codes: dict[str, tuple[str, str]] = {}  # one-time code -> (user, the redirect address it was issued for)
    tokens: dict[str, str] = {}  # access token -> user

    @app.get("/authorize")
    async def sign_in_page(client_id: str, redirect_uri: str, state: str, response_type: str) -> HTMLResponse:
        if client_id != provider.client_id or response_type != "code":
            raise HTTPException(status_code=400, detail="unknown client or flow")
        return HTMLResponse('<form method="post"><input name="username"><input name="password" type="password"></form>')

    @app.post("/authorize")
    async def sign_in(
        request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()]
    ) -> RedirectResponse:
        query = request.query_params
        if query.get("client_id") != provider.client_id or provider.users.get(username) != password:
            raise HTTPException(status_code=401, detail="wrong name or password")
        code = secrets.token_urlsafe(16)
        codes[code] = (username, query["redirect_uri"])
        return RedirectResponse(f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}", 302)

    @app.post("/token")
    async def token(
        client_id: Annotated[str, Form()],
        client_secret: Annotated[str, Form()],
        code: Annotated[str, Form()],
        grant_type: Annotated[str, Form()],
        redirect_uri: Annotated[str, Form()],
    ) -> dict[str, Any]:
        user, issued_for = codes.pop(code, (None, None))  # a code works once
        if (client_id, client_secret) != (provider.client_id, provider.client_secret):
            raise HTTPException(status_code=401, detail="invalid_client")
        if user is None or grant_type != "authorization_code" or redirect_uri != issued_for:
            raise HTTPException(status_code=400, detail="invalid_grant")
        access_token = secrets.token_urlsafe(24)
        tokens[access_token] = user
        return {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600, "scope": "openid profile"}

    @app.get("/userinfo")
    async def userinfo(authorization: Annotated[str, Header()] = "") -> dict[str, str]:
        if (user := tokens.get(authorization.removeprefix("Bearer "))) is None:
            raise HTTPException(status_code=401, detail="invalid_token")
        return {"sub": f"id-{user}", "preferred_username": user, "email": f"{user}@provider.test", "name": user}

    return app


@contextmanager
def oauth_provider(users: dict[str, str]) -> Iterator[Provider]:
    """The provider, serving on a free port of 127.0.0.1 until the block ends."""
    port = free_port()
    provider = Provider(f"http://127.0.0.1:{port}", users)
    server = uvicorn.Server(uvicorn.Config(provider_app(provider), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the test OAuth provider did not start on port {port}")
        time.sleep(0.05)
    try:
        yield provider
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def sign_in_through(provider: Provider, app_url: str, username: str, password: str) -> httpx.Response:
    """What a browser does when its user picks the provider on Loupe's login page and signs in there:
    the app's last answer (a redirect that sets the login cookie, or one back to the login page)."""
    async with httpx.AsyncClient(timeout=60) as browser:
        start = await browser.get(f"{app_url}/auth/oauth/{PROVIDER_ID}")
        assert start.is_redirect and start.headers["location"].startswith(provider.url), start.text
        page = await browser.get(start.headers["location"])
        assert page.status_code == 200, page.text
        signed_in = await browser.post(start.headers["location"], data={"username": username, "password": password})
        assert signed_in.is_redirect, signed_in.text
        return await browser.get(signed_in.headers["location"])  # the app's callback, with the state cookie
