"""HTTP routes Loupe adds to Chainlit's server, and ownership guards on two of Chainlit's own.

Chainlit checks the thread's author on its thread routes but not on `/feedback`, and it has no
route for files kept by a storage client. Here only the owner of a thread may rate, un-rate,
or download what is in it; anyone else gets 404, so ids reveal nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import chainlit.server as chainlit_server
from chainlit.server import UserParam
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.schema import Element, Feedback, Step, Thread, User
from chat.storage import ContentStore


def add_routes(
    server: FastAPI,
    sessions: async_sessionmaker[AsyncSession],
    store: ContentStore,
    status: Callable[[], Any],
    settle_step: Callable[[str], Awaitable[None]],
) -> None:
    """`settle_step(step_id)` waits for the writes of a step still on their way to the database
    (LoupeDataLayer.settle_step), so that an answer rated the moment it is shown can be found."""

    async def owns(user: Any, query: Select) -> bool:
        """Whether `query` (a select of thread ids) names a thread of this logged-in user."""
        if user is None:
            return False
        owned = query.join(User, Thread.user_id == User.id).where(User.identifier == user.identifier)
        async with sessions() as session:
            return bool(await session.scalar(select(exists(owned))))

    @server.get("/loupe/model")
    async def model_status() -> Any:
        """Read by public/loupe.js to show the permanent demo-model banner."""
        return status()

    @server.get("/loupe/files/{object_key}")
    async def stored_file(object_key: str, current_user: UserParam) -> Response:
        query = select(Thread.id).join(Element, Element.thread_id == Thread.id).where(Element.object_key == object_key)
        if not await owns(current_user, query):
            raise HTTPException(status_code=404, detail="File not found")
        async with sessions() as session:
            mime = await session.scalar(select(Element.mime).where(Element.object_key == object_key).limit(1))
        return FileResponse(store.path(object_key), media_type=mime or "application/octet-stream")

    @server.put("/feedback")
    async def rate(request: Request, update: UpdateFeedbackRequest, current_user: UserParam) -> Response:
        if current_user is not None:
            await settle_step(update.feedback.forId)
        query = select(Thread.id).join(Step, Step.thread_id == Thread.id).where(Step.id == update.feedback.forId)
        if not await owns(current_user, query):
            raise HTTPException(status_code=404, detail="Message not found")
        return await chainlit_server.update_feedback(request, update, current_user)

    @server.delete("/feedback")
    async def unrate(request: Request, payload: DeleteFeedbackRequest, current_user: UserParam) -> Response:
        query = (
            select(Thread.id).join(Feedback, Feedback.thread_id == Thread.id).where(Feedback.id == payload.feedbackId)
        )
        if not await owns(current_user, query):
            raise HTTPException(status_code=404, detail="Feedback not found")
        return await chainlit_server.delete_feedback(request, payload, current_user)

    # Chainlit matches routes in order and ends with a catch-all for its frontend: ours go first.
    ours = {model_status, stored_file, rate, unrate}
    server.router.routes.sort(key=lambda route: getattr(route, "endpoint", None) not in ours)
