"""Loupe's HTTP routes, and guards in front of some of Chainlit's own (Chainlit is mounted behind them:
chat/server.py, so a route here of the same path as one of Chainlit's takes its requests).

Chainlit checks the thread's author on its thread routes but not on `/feedback`, has no route
for files kept by a storage client, no login throttling, and takes uploads without a per-user
quota. Here only the owner of a thread may rate, un-rate, or download what is in it; anyone
else gets 404, so ids reveal nothing. Stored files are served as what their content is to Loupe
(an image as the type it decoded, a PDF as a download, text as plain text), never as the type a
client declared, so an uploaded HTML page can never render as one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import chainlit.server as chainlit_server
from chainlit.config import config as chainlit_config
from chainlit.server import UserParam
from chainlit.session import WebsocketSession
from chainlit.types import CallActionRequest, DeleteFeedbackRequest, ElementRequest, UpdateFeedbackRequest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import Select, exists, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile

from chat.documents.reading import Kind, file_kind
from chat.store.files import ContentStore
from chat.store.outages import CLICKS, RETRY_AFTER_S, Unavailable, patient, unreachable
from chat.store.rows import NotYours, owned_by
from chat.store.schema import Element, Feedback, Step, Thread
from chat.ui.chainlit_fixes import failure_reference, issued_action
from chat.ui.limits import DATABASE_ERRORS, LoginThrottle, UploadQuota, retry_after
from chat.ui.texts import language_of, text
from chat.ui.web import MB, SANDBOX_POLICY
from models.images import ImageRejected, image_mime

STARTING = "Loupe is starting: migrating its database and loading its model. Try again in a few seconds."
VOTE_FIRST = "Vote in the battle first: its answers can be rated once you know who wrote them."
UNREACHABLE = "The database cannot be reached right now, so nothing was changed. Try again in a few seconds."
LIMITS_UNAVAILABLE = "Loupe cannot reach its database to count this request against its limits; try again shortly."

log = logging.getLogger("loupe.routes")
# Served files are never HTML or script: the browser must not guess (nosniff) and, should it
# render one anyway, it runs sandboxed with nothing allowed.
JSON = "application/json"
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": SANDBOX_POLICY,
    "Content-Disposition": "inline",
    "Cache-Control": "private, max-age=86400",  # content-addressed: a key's bytes never change
}


def add_routes(
    server: FastAPI,
    sessions: async_sessionmaker[AsyncSession],
    store: ContentStore,
    status: Callable[[], dict[str, Any] | None],
    settle_step: Callable[[str], Awaitable[None]],
    settle_writes: Callable[[], Awaitable[None]],
    awaiting_vote: Callable[[str], Awaitable[bool]],
    throttle: LoginThrottle,
    quota: UploadQuota,
) -> None:
    """`settle_step(step_id)` waits for the writes of a step still on their way to the database
    (LoupeDataLayer.settle_step), so that an answer rated the moment it is shown can be found;
    `settle_writes()` for all of them, so that a file shown the moment its element is sent can be;
    `awaiting_vote(run_id)` says whether the run's answer is in a battle not yet voted (Preferences)."""

    @patient(CLICKS, "an ownership check")
    async def owns(user: Any, query: Select) -> bool:
        """Whether `query` (a select of thread ids) names a thread of this logged-in user."""
        if user is None:
            return False
        owned = query.where(Thread.id.in_(owned_by(user.identifier)))
        async with sessions() as session:
            return bool(await session.scalar(select(exists(owned))))

    @server.get("/loupe/model")
    async def model_status() -> Any:
        """Read by public/loupe.js to show the permanent demo-model banner, and by load balancers: 503 until
        the server has started (migrated, loaded its model)."""
        if (current := status()) is None:
            return JSONResponse({"detail": STARTING}, status_code=503, headers={"Retry-After": "5"})
        return current

    @patient(CLICKS, "an ownership check")
    async def shown_as(user: Any, object_key: str) -> set[str]:
        """The types of this logged-in user's elements that show the stored file `object_key`: none, not theirs."""
        if user is None:
            return set()
        query = select(Element.type).where(
            Element.object_key == object_key, Element.thread_id.in_(owned_by(user.identifier))
        )
        async with sessions() as session:
            return set(await session.scalars(query))

    @server.get("/loupe/files/{object_key}")
    async def stored_file(object_key: str, current_user: UserParam) -> Response:
        if not (types := await shown_as(current_user, object_key)):
            await settle_writes()  # its element (a cited page's preview, say) may still be on its way
            if not (types := await shown_as(current_user, object_key)):
                raise HTTPException(status_code=404, detail="File not found")
        try:
            mime, disposition = await asyncio.to_thread(served_as, store.path(object_key))
        except (ImageRejected, OSError):  # stored as sent, but neither an image nor a document: not served
            raise HTTPException(status_code=404, detail="File not found") from None
        if types == {"plotly"} and mime.startswith("text/plain"):
            mime = JSON  # a chart's figure: Chainlit's Plotly element draws only what is served as JSON
        headers = FILE_HEADERS | {"Content-Disposition": disposition}
        return FileResponse(store.path(object_key), media_type=mime, headers=headers)

    @server.put("/feedback")
    async def rate(request: Request, update: UpdateFeedbackRequest, current_user: UserParam) -> Response:
        if current_user is not None:
            await settle_step(update.feedback.forId)
        query = select(Thread.id).join(Step, Step.thread_id == Thread.id).where(Step.id == update.feedback.forId)
        if not await owns(current_user, query):
            raise HTTPException(status_code=404, detail="Message not found")
        if await awaiting_vote(update.feedback.forId):  # a thumb now would be cast blind, and show who wrote it
            raise HTTPException(status_code=409, detail=VOTE_FIRST)
        try:
            return await chainlit_server.update_feedback(request, update, current_user)
        except HTTPException as failed:  # Chainlit answers any failure of the data layer with a 500
            if isinstance(failed.__cause__, Unavailable):
                raise failed.__cause__ from None
            raise

    @server.delete("/feedback")
    async def unrate(request: Request, payload: DeleteFeedbackRequest, current_user: UserParam) -> Response:
        query = (
            select(Thread.id).join(Feedback, Feedback.thread_id == Thread.id).where(Feedback.id == payload.feedbackId)
        )
        if not await owns(current_user, query):
            raise HTTPException(status_code=404, detail="Feedback not found")
        return await chainlit_server.delete_feedback(request, payload, current_user)

    @server.post("/login")
    async def login(request: Request, response: Response) -> Response:
        """Chainlit's password login, refused with 429 for a while after repeated failures.

        The wait is answered at once (no argon2 work, nothing held), so guessing costs the
        guesser time and the server nothing; the name and the address are counted apart, and
        an attempt counts from before its check, so guesses sent at once are held back too (logins
        past the free failures wait a moment for the earlier ones' outcome: LoginThrottle.admit).
        """
        form = await request.form()
        name, address = str(form.get("username", "")), request.client.host if request.client else ""
        try:
            ticket, wait = await throttle.admit(name, address)
        except DATABASE_ERRORS:
            return limits_unavailable(f"a login for {name!r} from {address}")
        if wait:
            log.warning("Login throttled for %r from %s: %.0f s to wait", name, address, wait)
            return JSONResponse(
                {"detail": "Too many login attempts; try again later."},
                status_code=429,
                headers={"Retry-After": retry_after(wait)},
            )
        credentials = OAuth2PasswordRequestForm(username=name, password=str(form.get("password", "")))
        right: bool | None = None  # None: the check itself failed, which counts neither way
        try:
            answer = await chainlit_server.login(request, response, credentials)
            right = True
            return answer
        except HTTPException as refused:
            right = False if refused.status_code == 401 else None
            if right is False:  # Chainlit's detail is a key ("credentialssignin"), shown raw in the page's toast
                language = language_of(request.headers.get("accept-language", "").split(",")[0])
                raise HTTPException(status_code=401, detail=text("login_failed", language)) from None
            raise
        finally:
            await count_check(name, address, ticket, right)

    async def count_check(name: str, address: str, ticket: str, right: bool | None) -> None:
        """Count a checked login's outcome. The login's answer stands if the database fails here: its
        reservation then counts until it expires (limits.IN_FLIGHT_MEMORY_S), its failure not at all."""
        try:
            if wait := await throttle.checked(name, address, ticket, right):
                log.warning("Failed login for %r from %s: the next try waits %.0f s", name, address, wait)
        except DATABASE_ERRORS:
            log.exception("Could not count the checked login of %r from %s", name, address)

    @server.post("/project/file")
    async def upload(
        request: Request, current_user: UserParam, session_id: str, ask_parent_id: str | None = None
    ) -> Response:
        """Chainlit's upload, within the user's quota of files waiting to be sent.

        An upload's size is known from its Content-Length before it is read (the body limit in
        chat/ui/web.py holds it to that), so parallel uploads are counted while they arrive.
        """
        if current_user is None:
            raise HTTPException(status_code=401, detail="Not authenticated")
        user, size = current_user.identifier, int(request.headers.get("content-length") or 0)
        try:
            upload = await quota.admit(user, session_id, size)
        except DATABASE_ERRORS:
            return limits_unavailable(f"an upload of {user}")
        if upload is None:
            log.warning("Upload refused for %s: over the quota of uploads waiting to be sent", user)
            detail = (
                f"Too many files waiting to be sent (at most {quota.max_files} files, "
                f"{quota.max_bytes // MB} MB): send your message or remove some first."
            )
            raise HTTPException(status_code=429, detail=detail)
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                file = form.get("file")
                # Chainlit asserts both, which answers 500 to a raw client that leaves one out.
                if not isinstance(file, UploadFile) or not file.filename or not file.content_type:
                    raise HTTPException(status_code=400, detail="The upload needs a file with a name and a type.")
                answer = await chainlit_server.upload_file(current_user, session_id, file, ask_parent_id)
        except BaseException:
            await uncount(upload)
            raise
        file_id = json.loads(answer.body)["id"]
        try:
            await quota.stored(upload, file_id, WebsocketSession.get_by_id(session_id).files[file_id]["size"])
        except DATABASE_ERRORS:  # stored in the session, but counted by its declared size until the session ends
            return limits_unavailable(f"an upload of {user}")
        return answer

    async def uncount(upload: str) -> None:
        """An upload that was not stored no longer counts; if the database fails here, it counts until it
        expires with the session (by its declared bytes, never as a file)."""
        try:
            await quota.failed(upload)
        except DATABASE_ERRORS:
            log.exception("Could not uncount the failed upload %s", upload)

    @server.put("/project/element")
    async def update_element(payload: ElementRequest, current_user: UserParam) -> Response:
        """Refused: Chainlit lets a page update (or add) a custom element, storing what it sends. Loupe's
        custom elements are drawn by the server and never update themselves, so any such write is forged."""
        raise HTTPException(status_code=403, detail="Elements are drawn by the server.")

    @server.delete("/project/element")
    async def delete_element(payload: ElementRequest, current_user: UserParam) -> Response:
        """Chainlit's element delete, only of an element in one of the user's threads."""
        owner = select(Thread.id).join(Element, Element.thread_id == Thread.id)
        if not await owns(current_user, owner.where(Element.id == payload.element.get("id"))):
            raise HTTPException(status_code=404, detail="Element not found")
        return await chainlit_server.delete_thread_element(payload, current_user)

    @server.post("/project/action")
    async def click(payload: CallActionRequest, current_user: UserParam) -> Response:
        """Chainlit's action call, for a button this session was shown, with the server's own payload."""
        session = WebsocketSession.get_by_id(payload.sessionId)
        if (
            session is None
            or current_user is None
            or session.user is None
            or session.user.identifier != current_user.identifier
        ):
            raise HTTPException(status_code=404, detail="Session not found")
        if (issued := issued_action(session, payload.action)) is None:
            log.warning(
                "Refused a click on a button never shown: user=%s action=%s",
                current_user.identifier,
                str(payload.action)[:200],
            )
            raise HTTPException(status_code=404, detail="That button is not on the page any more.")
        return await chainlit_server.call_action(CallActionRequest(action=issued, sessionId=session.id), current_user)

    @server.exception_handler(Unavailable)
    @server.exception_handler(DBAPIError)
    @server.exception_handler(ConnectionError)
    async def database_unreachable(request: Request, error: Exception) -> Response:
        """A request that found the database unreachable (a write waited for it, chat/store/outages.py): 503
        with Retry-After, which tells a client, a load balancer and a person alike to come back shortly."""
        if not unreachable(error):
            raise error
        log.warning("%s %s: database unreachable (%r)", request.method, request.url.path, error)
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return JSONResponse({"detail": UNREACHABLE}, status_code=503, headers=headers)

    @server.exception_handler(NotYours)
    async def not_found(request: Request, refused: NotYours) -> Response:
        """A write the data layer refused (chat/ui/datalayer.py logged who and what): 404, as for a missing row."""
        return JSONResponse({"detail": "Not found"}, status_code=404)

    def limits_unavailable(what: str) -> Response:
        """503 with Retry-After, for a request its limits could not be counted for: the database failed."""
        reference = failure_reference()
        log.exception("Failure %s while counting %s against its limits", reference, what)
        return JSONResponse(
            {"detail": f"{LIMITS_UNAVAILABLE} (reference {reference})"},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    if not chainlit_config.features.allow_thread_sharing:

        @server.put("/project/thread/share")
        @server.get("/project/share/{thread_id}")
        async def sharing_is_off() -> Response:
            """Thread sharing is off (.chainlit/config.toml); a shared thread is readable without login."""
            raise HTTPException(status_code=404, detail="Not found")


def stored_file_url(content: bytes | str) -> str:
    """Where the page loads content the data layer keeps in the content store (by its sha256), from Loupe's
    own route: an element given this url is not also kept among the session's files by Chainlit, where it
    would count against the user's quota of uploads waiting to be sent."""
    data = content.encode() if isinstance(content, str) else content
    return file_url(hashlib.sha256(data).hexdigest())


def file_url(sha256: str) -> str:
    """Where the page loads the stored file of that sha256 (a document of the user's library, say)."""
    return f"/loupe/files/{sha256}"


@lru_cache(maxsize=4096)
def served_as(path: Path) -> tuple[str, str]:
    """The type and disposition a stored file is served with, from its content (the key is the content's
    hash, so the answer never changes): an image as decoded, inline; a PDF as a download, never rendered
    in Loupe's origin; text (a cited part of a text file) as plain text. ImageRejected for anything else."""
    kind = file_kind(path)
    if kind == Kind.PDF:
        return "application/pdf", "attachment"
    if kind == Kind.TEXT:
        return "text/plain; charset=utf-8", "inline"
    return image_mime(path), "inline"
