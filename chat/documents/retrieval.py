"""Which pages of the user's documents the model sees for a question, and how they are cited.

Retrieval ranks the pages of the conversation's documents (or of the user's whole library) for the
question and the turn before it; a conversation whose documents are short enough goes whole, in
order. Each page is shown to the model twice over: as an image rendered at Loupe's pixel budget
(tables, plots and schematics survive it) and as its text layer, labelled with the citation the
answer should use; a page the document workers cannot draw within their limits goes as its text
alone. The pages an answer was shown are its `sources`, in its generation record.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import HumanMessage
from PIL import Image

from chat.conversation import turn_images, turn_text
from chat.prompts import pages_prompt
from chat.store.documents import Documents, PageHit
from chat.store.files import ContentStore
from chat.store.generations import Source
from models.images import ImageBudget
from models.pdf import DocumentRejected
from models.pdf_pool import PdfPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShownPage:
    source: Source
    text: str
    image: Image.Image | None  # a PDF page as rendered for the model; none for text (or a page too costly to draw)


async def pages_for(
    documents: Documents, user: str, question: str, within: list[str] | None, limit: int
) -> list[PageHit]:
    """The pages to show for `question`: the documents `within` whole when they have at most `limit`
    pages in all, else the `limit` best matches among them (`within` None: the user's whole library).
    Only the user's own documents are ever read."""
    if within is not None:
        owned = {entry.sha256: entry for entry in await documents.library(user)}
        within = [sha256 for sha256 in within if sha256 in owned]
        if sum(owned[sha256].page_count for sha256 in within) <= limit:
            return await documents.pages(
                user, [(sha256, number) for sha256 in within for number in range(1, owned[sha256].page_count + 1)]
            )
    return await documents.search(user, question, limit, within)


async def shown_pages(
    hits: list[PageHit], user: str, store: ContentStore, pdfs: PdfPool, budget: ImageBudget
) -> list[ShownPage]:
    """The pages as the model sees them: PDF pages rendered within the pixel budget, as `user`'s jobs."""

    async def render(hit: PageHit) -> Image.Image | None:
        if hit.kind != "pdf":
            return None
        data = await asyncio.to_thread(store.path(hit.sha256).read_bytes)
        try:
            return await pdfs.render_page(user, data, hit.number, budget)
        except DocumentRejected as refused:  # read once within the limits, but too costly to draw
            log.warning("%s, p. %d (%s) is shown as its text: %s", hit.name, hit.number, hit.sha256, refused)
            return None

    async with asyncio.TaskGroup() as renders:  # a failure cancels the others: no job outlives the question
        rendered = [renders.create_task(render(hit)) for hit in hits]
    images = [task.result() for task in rendered]
    sources = [Source(hit.name, hit.sha256, hit.number, hit.kind) for hit in hits]
    return [ShownPage(source, hit.text, image) for source, hit, image in zip(sources, hits, images, strict=True)]


def with_pages(turn: HumanMessage, pages: list[ShownPage]) -> HumanMessage:
    """The user's turn as the model gets it: the user's images, then the page images, then the pages'
    text under their citations, then the question (prompts/documents/)."""
    if not pages:
        return turn
    asked = pages_prompt(turn_text(turn), [(page.source.label, page.text) for page in pages])
    content: list[str | dict[str, Any]] = [{"type": "image", "image": image} for image in turn_images(turn)]
    content += [{"type": "image", "image": page.image} for page in pages if page.image is not None]
    content.append({"type": "text", "text": asked})
    return HumanMessage(content=content, id=turn.id)
