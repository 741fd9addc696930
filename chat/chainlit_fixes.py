"""Work-arounds for Chainlit 2.12 behaviour that would break a promise Loupe makes to its users."""

from __future__ import annotations

import uuid
from pathlib import Path

from chainlit.session import WebsocketSession


def accept_empty_uploads() -> None:
    """Let a zero-byte upload through, so the chat can say "the file is empty".

    Chainlit's `persist_file` treats empty content as missing content and the upload fails with
    a 500, which the user sees only as a failed attachment. An empty file on disk is accepted.
    """
    persist_file = WebsocketSession.persist_file

    async def persist_file_allowing_empty(
        self: WebsocketSession, name: str, mime: str, path: str | None = None, content: bytes | str | None = None
    ) -> dict:
        if path is None and content is not None and len(content) == 0:
            self.files_dir.mkdir(parents=True, exist_ok=True)
            empty = Path(self.files_dir, f"empty-{uuid.uuid4()}")
            empty.touch()
            path = str(empty)
        return await persist_file(self, name, mime, path=path, content=content)

    WebsocketSession.persist_file = persist_file_allowing_empty
