"""What an attachment is, by its content, and its pages as the library stores them.

A message's files are images, PDFs or text, told apart by their bytes alone: the browser's
declared type and the file name are a client's word. A PDF gives one page per PDF page, read by the
document workers (models/pdf_pool.py).
A text file (UTF-8: notes, logs, CSV, source) is cut into pages of about TEXT_PAGE_CHARS at line
breaks, so a long log is retrieved and cited by the part that matters ("server.log, part 3").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from chat.settings import Settings
from models.pdf import SLACK, DocumentRejected, PageText, is_pdf
from models.pdf_pool import PdfPool

TEXT_PAGE_CHARS = 3000  # ~800 tokens of English: a few of them fit beside page images in the context
# Control characters that never occur in text people write (all but tab, line feed, form feed and
# carriage return); NUL in particular marks a binary file.
BINARY_BYTES = frozenset(range(32)) - {9, 10, 12, 13}


class Kind(StrEnum):
    IMAGE = "image"
    PDF = "pdf"
    TEXT = "text"


@dataclass
class DocumentFile:
    """A PDF or text file attached to a message, not read yet."""

    name: str
    kind: Kind
    data: bytes
    sha256: str


def kind_of(head: bytes) -> Kind:
    """PDF by its header, text by decoding as UTF-8 with no binary bytes, anything else is for the image check."""
    if is_pdf(head):
        return Kind.PDF
    if head and not BINARY_BYTES & set(head) and _utf8(head):
        return Kind.TEXT
    return Kind.IMAGE


def file_kind(path: Path) -> Kind:
    """What the file at `path` is, from its first bytes (kind_of)."""
    with path.open("rb") as file:
        return kind_of(file.read(SLACK))


def pdf_workers(settings: Settings) -> PdfPool:
    """The document workers that read the PDFs of a server of these settings, within its limits."""
    return PdfPool(
        workers=settings.pdf_workers,
        memory_mb=settings.pdf_worker_memory_mb,
        page_seconds=settings.pdf_page_seconds,
        document_seconds=settings.pdf_document_seconds,
    )


def text_pages(data: bytes, max_pages: int) -> list[PageText]:
    """The pages of a text file; DocumentRejected when it cannot be used."""
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentRejected("not_text") from None
    if not content.strip():
        raise DocumentRejected("empty")
    parts = split_text(content)
    if len(parts) > max_pages:
        raise DocumentRejected("text_too_long", pages=len(parts), limit=max_pages)
    return [PageText(number, part, 0.0, 0.0) for number, part in enumerate(parts, start=1)]


def split_text(content: str) -> list[str]:
    """Pieces of at most about TEXT_PAGE_CHARS, cut after a line where one ends near the limit."""
    parts, start = [], 0
    while start < len(content):
        end = start + TEXT_PAGE_CHARS
        if end < len(content):
            line_end = content.rfind("\n", start + TEXT_PAGE_CHARS // 2, end)
            end = line_end + 1 if line_end >= 0 else end
        if part := content[start:end].strip():
            parts.append(part)
        start = end
    return parts


def _utf8(head: bytes) -> bool:
    """Whether `head` is UTF-8, allowing a character cut off at its end (head is a file's first bytes)."""
    for cut in range(4):
        try:
            head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False
