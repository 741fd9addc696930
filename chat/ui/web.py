"""What every HTTP response and connection of Loupe's server is held to, beyond Chainlit's defaults.

- Security headers on every response: a Content-Security-Policy that Chainlit's page works
  under (its two inline scripts allowed by hash, nothing else inline), no framing, no sniffing,
  no referrer to other sites.
- Origins: CORS and socket.io accept the app's own origin and LOUPE_ALLOWED_ORIGINS only
  (Chainlit's config allowed any origin with credentials, so any site could read a user's chats).
- Request bodies are limited while they arrive: an upload over the cap is refused after
  reading at most the cap, never read whole first.
- Login tokens are checked against their user's token version (chat/store/logins.py) on every request
  and socket connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import chainlit.auth
import chainlit.server
import chainlit.socket
from chainlit.auth import reuseable_oauth
from fastapi import Depends, FastAPI, HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 1024 * 1024
# A request other than an upload is JSON of a few KB (a rating with its comment, a renamed thread)
# or a socket.io polling packet (engine.io's own cap is 1 MB).
MAX_BODY_BYTES = 1 * MB
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around an uploaded file
# A body declared over its limit by at most this much is read and dropped before the 413: a client still
# sending it would otherwise find the connection closed under it and never read the answer. A bigger one
# is not worth the bandwidth: its connection is closed at once.
DRAINED_EXCESS_BYTES = 16 * MB
API_PATH = "/v1/"  # chat/api/openai.py
UPLOAD_PATH = "/project/file"  # POST uploads here; GET /project/file/<id> serves a session's upload back
# For every file served (ours and Chainlit's session uploads): should a browser ever render one as
# a page, it runs sandboxed with nothing allowed.
SANDBOX_POLICY = "default-src 'none'; sandbox"

# Chainlit's page loads its fonts and KaTeX's stylesheet from these two CDNs, and draws with
# inline styles (React); scripts come only from this server, plus its two inline scripts by hash.
CSP_SOURCES = {
    "default-src": "'self'",
    "style-src": "'self' 'unsafe-inline' https://fonts.googleapis.com https://cdn.jsdelivr.net",
    "font-src": "'self' data: https://fonts.gstatic.com https://cdn.jsdelivr.net",
    "img-src": "'self' data: blob:",
    "media-src": "'self' blob:",
    "connect-src": "'self'",
    "worker-src": "'self' blob:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def content_security_policy() -> str:
    """The policy for Chainlit's page as this server renders it, inline scripts allowed by their hash."""
    page = chainlit.server.get_html_template("")
    inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'" for script in inline
    )
    # 'unsafe-eval': Chainlit compiles custom elements (public/elements/*.jsx, the arena's side-by-side
    # view) in the page with `new Function`. Scripts still load only from this server.
    sources = {**CSP_SOURCES, "script-src": f"'self' {hashes} 'unsafe-eval'"}
    return "; ".join(f"{directive} {value}" for directive, value in sources.items())


class BodyTooLarge(HTTPException):
    """Raised while a body arrives; an HTTPException, so routes that parse bodies answer 413 with it."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"The request is too large: at most {limit // MB} MB.")


class Guard:
    """ASGI middleware: security headers on every response, and request bodies held to a limit."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_images: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        # An API call carries its images in its JSON, as base64 (4 characters for 3 bytes).
        self.max_api_bytes = max_images * max_upload_bytes * 4 // 3 + MAX_BODY_BYTES
        self.policy: str | None = None  # built on the first request, once Chainlit's config is read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.policy is None:
            self.policy = content_security_policy()
        limit = MAX_BODY_BYTES
        if scope["path"].endswith(UPLOAD_PATH):
            limit = self.max_upload_bytes
        elif scope["path"].startswith(API_PATH):
            limit = self.max_api_bytes
        policy = SANDBOX_POLICY if f"{UPLOAD_PATH}/" in scope["path"] else self.policy
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > limit:
            if int(declared) <= limit + DRAINED_EXCESS_BYTES:
                await self._drain(receive)
            await self._too_large(send, limit)
            return
        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = {**HEADERS, "Content-Security-Policy": policy}
                message["headers"] = list(message.get("headers", [])) + [
                    (name.lower().encode(), value.encode())
                    for name, value in extra.items()
                    if name.lower().encode() not in present  # a route's own policy wins (files: sandbox)
                ]
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, limit)

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read the rest of the request's body and drop it."""
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass

    async def _too_large(self, send: Send, limit: int) -> None:
        detail = BodyTooLarge(limit).detail  # as the page reads it, and as OpenAI's clients do
        error = {"message": detail, "type": "invalid_request_error", "code": "request_too_large", "param": None}
        body = json.dumps({"detail": detail, "error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *((name.lower().encode(), value.encode()) for name, value in HEADERS.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def same_or_allowed_origin(allowed: list[str]) -> Callable[..., bool]:
    """socket.io's origin check: the page's own host (whatever scheme a proxy in front changes), or a listed origin."""

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin or origin in allowed:
            return True
        hosts = {environ.get("HTTP_HOST"), environ.get("HTTP_X_FORWARDED_HOST")}
        return urlsplit(origin).netloc in hosts - {None}

    return check


def secure(
    app: FastAPI,
    chainlit_app: FastAPI,
    allowed_origins: list[str],
    max_upload_bytes: int,
    max_images: int,
    login_is_current: Callable[[str | None], Awaitable[bool]],
) -> None:
    """Install all of the above on Loupe's `app`, and on Chainlit's, mounted in it; called before it serves."""
    # Chainlit's CORS allowed any origin with credentials; one policy, Loupe's, now covers Chainlit's routes too.
    chainlit_app.user_middleware = [entry for entry in chainlit_app.user_middleware if entry.cls is not CORSMiddleware]
    app.add_middleware(
        CORSMiddleware, allow_origins=allowed_origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    chainlit.socket.sio.eio.cors_allowed_origins = same_or_allowed_origin(allowed_origins)
    app.add_middleware(
        Guard, max_upload_bytes=max_upload_bytes, max_images=max_images
    )  # outermost: its limits hold before anything reads

    async def current_user(token: str | None = Depends(reuseable_oauth)) -> Any:
        if not await login_is_current(token):
            raise HTTPException(status_code=401, detail="This login has ended; log in again.")
        return await chainlit.auth.get_current_user(token)

    async def current_user_for_socket(token: str) -> Any:
        return await chainlit.auth.get_current_user(token) if await login_is_current(token) else None

    for served in (app, chainlit_app):  # Loupe's routes ask for the user as Chainlit's do
        served.dependency_overrides[chainlit.auth.get_current_user] = current_user
    chainlit.socket.get_current_user = current_user_for_socket  # the socket's connect looks it up by name
