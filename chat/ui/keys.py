"""API keys on the page: the logged-in user lists, makes and revokes their own (chat/store/keys.py).

The API keys command lists the user's keys, with a button to make one and one to revoke each. A new key is
shown once, in a message that reaches the browser only and is never stored: the chat's history, its
exports and a database backup never hold it.
"""

from __future__ import annotations

import chainlit as cl

from chat.store.keys import add_key, list_keys, revoke_key
from chat.store.rows import utcnow
from chat.ui.chainlit_fixes import browser_only_message, without_thumbs
from chat.ui.runtime import serving
from chat.ui.texts import text

NEW_KEY = "new_api_key"
REVOKE_KEY = "revoke_api_key"


async def show_keys(user: str, language: str) -> None:
    """The user's keys (names, dates, never the keys), a button to make one and one to revoke each."""
    keys, now = await list_keys(serving().sessions, user), utcnow()

    def expiry(expires_at: object) -> str:
        if expires_at is None:
            return text("keys_never_expires", language)
        return text("keys_expired" if expires_at <= now else "keys_expires", language, date=f"{expires_at:%Y-%m-%d}")

    lines = [
        text(
            "keys_entry",
            language,
            name=key.name,
            made=f"{key.created_at:%Y-%m-%d}",
            expires=expiry(key.expires_at),
            used=text("keys_used", language, date=f"{key.last_used_at:%Y-%m-%d}")
            if key.last_used_at
            else text("keys_never_used", language),
        )
        for key in keys
    ]
    listing = (
        text("keys_list", language, count=len(keys), entries="\n".join(lines)) if keys else text("keys_none", language)
    )
    actions = [cl.Action(name=NEW_KEY, payload={}, label=text("keys_new", language), icon="key-round")]
    actions += [
        cl.Action(
            name=REVOKE_KEY,
            payload={"name": key.name},
            label=text("keys_revoke", language, name=key.name),
            icon="trash-2",
        )
        for key in keys
    ]
    await without_thumbs(cl.Message(content=listing, actions=actions)).send()


async def make_key(user: str, language: str) -> None:
    """A new key, shown once, to this browser only; then the list again."""
    name, key = await add_key(serving().sessions, user)
    await cl.context.emitter.send_step(browser_only_message(text("keys_made", language, name=name, secret=key)))
    await show_keys(user, language)


async def revoke(action: cl.Action, user: str, language: str) -> None:
    """End the key of a Revoke button (as the button issued it), and say so."""
    name = action.payload["name"]
    revoked = await revoke_key(serving().sessions, user, name)
    await action.remove()
    said = text("keys_revoked", language, name=name) if revoked else text("keys_not_there", language)
    await without_thumbs(cl.Message(content=said)).send()
