"""What a user's next chat starts with: the chat settings they last chose and the profile they last picked.

Kept with the user (in users.metadata), not in the browser, so a new chat, another tab or another computer
starts as the last one was left; a resumed chat keeps its own settings (its thread's metadata). A profile is
remembered only while it differs from the team's default: a user who goes back to the default follows it
again when an adapter is promoted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.outages import CLICKS, patient
from chat.store.schema import User

LAST_CHAT = "last_chat"  # the users.metadata key: {"settings": {...}, "profile": "name"}


@patient(CLICKS, "a user's last chat settings")
async def last_chat(sessions: async_sessionmaker[AsyncSession], identifier: str) -> dict[str, Any]:
    """The user's remembered choices: "settings" (unchecked: check them before use) and "profile", where set."""
    return _remembered(await _metadata(sessions, identifier) or {})


@patient(CLICKS, "a user's last chat settings")
async def remember(sessions: async_sessionmaker[AsyncSession], identifier: str, **choices: Any) -> None:
    """Remember the user's `choices` (settings=..., profile=...); a choice of None forgets that one.

    Read, then written in one statement only if it changed: a user's tabs may change their settings at once,
    and the last change wins, as it would have anyway; the write transaction is that one statement, so it holds
    SQLite's one writer no longer than it must."""
    if (metadata := await _metadata(sessions, identifier)) is None:
        return
    before = _remembered(metadata)
    after = {name: value for name, value in {**before, **choices}.items() if value is not None}
    if after == before:
        return
    async with sessions.begin() as session:
        await session.execute(
            update(User).where(User.identifier == identifier).values(metadata_={**metadata, LAST_CHAT: after})
        )


async def _metadata(sessions: async_sessionmaker[AsyncSession], identifier: str) -> dict[str, Any] | None:
    async with sessions() as session:
        return await session.scalar(select(User.metadata_).where(User.identifier == identifier))


def _remembered(metadata: dict[str, Any]) -> dict[str, Any]:
    remembered = metadata.get(LAST_CHAT)
    return remembered if isinstance(remembered, dict) else {}
