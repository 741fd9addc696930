"""Durable, content-addressed storage for uploaded images.

Chainlit keeps uploads in `.files/`, which it wipes at shutdown; history and preference datasets
need the images for good. Each file is stored once under its sha256 in the data directory, and
served only through Loupe's authenticated route (chat/app.py), never by a guessable public URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from chainlit.data.storage_clients.base import BaseStorageClient


class ContentStore(BaseStorageClient):
    """Chainlit storage client over a local folder; the object key is the content's sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a sha256 object key: {key!r}")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its key. Written to a temporary file and renamed, so a
        crash never leaves a partial file under a valid key."""
        key = hashlib.sha256(data).hexdigest()
        target = self.path(key)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as temporary:
                temporary.write(data)
                temporary.flush()
                os.fsync(temporary.fileno())
            os.replace(temporary.name, target)
        return key

    async def upload_file(
        self,
        object_key: str,
        data: bytes | str,
        mime: str = "application/octet-stream",
        overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        content = data.encode() if isinstance(data, str) else data
        key = await asyncio.to_thread(self.put, content)
        return {"object_key": key, "url": await self.get_read_url(key)}

    async def delete_file(self, object_key: str) -> bool:
        """Never deletes: elements with the same bytes share one file, and preference datasets
        may still need an image after its chat is gone."""
        return False

    async def get_read_url(self, object_key: str) -> str:
        return f"/loupe/files/{object_key}"

    async def close(self) -> None:
        return None
