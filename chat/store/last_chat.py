"""What a user's next chat starts with: the chat settings they last chose and the profile they last picked.

Kept with the user (in users.metadata), not in the browser, so a new chat, another tab or another computer
starts as the last one was left; a resumed chat keeps its own settings (its thread's metadata). A profile is
remembered only while it differs from the team's default: a user who goes back to the default follows it
again when an adapter is promoted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.outages import CLICKS, patient
from chat.store.schema import User

LAST_CHAT = "last_chat"  # the users.metadata key: {"settings": {...}, "profile": "name"}


@patient(CLICKS, "a user's last chat settings")
async def last_chat(sessions: async_sessionmaker[AsyncSession], identifier: str) -> dict[str, Any]:
    """The user's remembered choices: "settings" (unchecked: check them before use) and "profile", where set."""
    async with sessions() as session:
        metadata = await session.scalar(select(User.metadata_).where(User.identifier == identifier))
    remembered = (metadata or {}).get(LAST_CHAT)
    return remembered if isinstance(remembered, dict) else {}


@patient(CLICKS, "a user's last chat settings")
async def remember(sessions: async_sessionmaker[AsyncSession], identifier: str, **choices: Any) -> None:
    """Remember the user's `choices` (settings=..., profile=...); a choice of None forgets that one."""
    async with sessions.begin() as session:
        user = await session.scalar(select(User).where(User.identifier == identifier).with_for_update())
        if user is None:
            return
        remembered = {**(user.metadata_ or {}).get(LAST_CHAT, {}), **choices}
        remembered = {name: value for name, value in remembered.items() if value is not None}
        user.metadata_ = {**(user.metadata_ or {}), LAST_CHAT: remembered}
