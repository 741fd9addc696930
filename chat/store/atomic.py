"""Files that several Loupe processes write and read at once (the login secret, the export salt, the promoted
profile, images): written so that a reader sees a whole file or none, never an empty or half-written one.

Each is written to a private temporary file beside it (same folder, so same filesystem), flushed to disk,
and then moved into place in one step: os.replace to overwrite, os.link to create it only if it is still
missing, so that of processes racing to create it the first one's content is everyone's.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_atomically(target: Path, data: bytes) -> None:
    """Write `target`, replacing it if it exists: a reader at any moment reads the old bytes or the new."""
    with _written_beside(target, data) as written:
        os.replace(written, target)


def create_exclusively(target: Path, data: bytes) -> bool:
    """Create `target` with `data`, whole, unless it exists: False if another process (or an earlier run)
    made it first, whose content stays."""
    with _written_beside(target, data) as written:
        try:
            os.link(written, target)  # fails if the name exists, unlike a rename
        except FileExistsError:
            return False
    return True


def kept_secret(target: Path, size: int) -> str:
    """The secret in `target`, made of `size` random bytes (URL-safe text) by the first process that asks, and
    the same for every process and run after it. OSError where it cannot be made or read."""
    if not target.exists():
        create_exclusively(target, secrets.token_urlsafe(size).encode())
    return target.read_text().strip()


@contextmanager
def _written_beside(target: Path, data: bytes) -> Iterator[Path]:
    """`data` in a new file in `target`'s folder, this process's alone (created exclusively, mode 0600) and on
    disk (fsync); removed afterwards, unless the body renamed it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    written = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        yield written
    finally:
        written.unlink(missing_ok=True)
