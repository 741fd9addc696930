"""Documents into a user's library, for the page and the API alike.

A document is read once per content: one already in the database (anyone's upload of the same bytes) only
joins this user's library. A PDF is read by the document workers (models/pdf_pool.py) as the user's jobs,
reporting its progress; a text file off the event loop. A batch with a file that cannot be read is refused
whole: none of its files is stored, so that an answer never silently ignores one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from chat.documents.reading import DocumentFile, Kind, text_pages
from chat.store.documents import Documents
from chat.store.files import ContentStore
from models.pdf import DocumentRejected, PageText
from models.pdf_pool import PdfPool

# progress(file, first page of the part being read, pages in all), while a PDF is read
Progress = Callable[[DocumentFile, int, int], Awaitable[None]]


async def read_into_library(
    files: list[DocumentFile],
    user: str,
    documents: Documents,
    store: ContentStore,
    pdfs: PdfPool,
    max_pages: int,
    progress: Progress | None = None,
) -> list[tuple[str, DocumentRejected]]:
    """Read each new document and put every one into `user`'s library; returns the files that cannot be read
    (name, why), and then stores none of them."""
    read: list[tuple[DocumentFile, list[PageText] | None]] = []
    problems = []
    for file in files:
        try:
            pages = (
                None if await documents.known(file.sha256) else await read_pages(file, user, pdfs, max_pages, progress)
            )
        except DocumentRejected as rejected:
            problems.append((file.name, rejected))
            continue
        read.append((file, pages))
    if problems:
        return problems
    for file, pages in read:
        # Its pages are rendered from the content store as soon as a question asks about them: store it now.
        await asyncio.to_thread(store.put, file.data)
        await documents.ingest(user, file.sha256, file.name, file.kind, pages)
    return []


async def read_pages(
    file: DocumentFile, user: str, pdfs: PdfPool, max_pages: int, progress: Progress | None
) -> list[PageText]:
    """The pages of a PDF, read by the document workers as `user`'s jobs (a long one in parts), or of a text file."""
    if file.kind != Kind.PDF:
        return await asyncio.to_thread(text_pages, file.data, max_pages)

    async def show(first: int, total: int) -> None:
        if progress is not None:
            await progress(file, first, total)

    return await pdfs.read(user, file.data, max_pages, show)
