"""Durable, content-addressed storage for uploaded images.

Chainlit keeps uploads in `.files/`, which it wipes at shutdown; history and preference datasets
need the images for good. Each file is stored once under its sha256 in the data directory, and
served only through Loupe's authenticated route (chat/ui/routes.py), never by a guessable public URL.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from chat.store.atomic import replace_atomically


class ContentStore:
    """Files in a local folder under their sha256 (the object key); a file is written once and never deleted.

    Never deleted: elements with the same bytes share one file, and preference datasets may
    still need an image after its chat is gone.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a sha256 object key: {key!r}")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        """Store `data` (once) and return its key. Written atomically, so a crash never leaves a partial
        file under a valid key."""
        key = hashlib.sha256(data).hexdigest()
        target = self.path(key)
        if not target.exists():
            replace_atomically(target, data)
        return key
