"""One answer to one turn, below every front end: retrieval, prompt, the backend's stream, the generation record.

A turn goes in (the conversation so far, the question with its images, the profile's adapter, the
sampling settings and system prompt); the pages of the user's documents it asks about are found,
the prompt is built within the context (the least relevant page gives way first), the backend
writes, and the answer's generation record (chat/store/generations.py) says how it was made. The
page (chat/ui/answers.py) and the API (chat/api/) only show and store what this yields, so a
message asked in either is answered, and recorded for training, the same way (LLaMA-Factory's
`ChatModel.stream_chat` is the model). Nothing here knows Chainlit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from chat.conversation import PromptBuilder, PromptTooLong, turn_text
from chat.documents.retrieval import ShownPage, pages_for, shown_pages, with_pages
from chat.prompts import system_prompt
from chat.store.documents import Documents
from chat.store.files import ContentStore
from chat.store.generations import GenerationRecord
from models.adapters import Adapter
from models.backend import Backend, Ended, SamplingSettings, Usage
from models.images import ImageBudget
from models.pdf_pool import PdfPool


@dataclass
class Question:
    """A turn to answer and all that decides its answer. `earlier` is the conversation before `turn`, as the
    model's history holds it; `pages` the document pages it asks about, best first."""

    earlier: list[BaseMessage]
    turn: HumanMessage
    adapter: Adapter | None
    sampling: SamplingSettings
    prompt_name: str
    pages: list[ShownPage] = field(default_factory=list)


@dataclass
class Answer:
    """An answer being written: the prompt that fit, with the pages it kept; `usage` is final when `stream` ends."""

    question: Question
    prompt: list[dict[str, Any]]
    pages: list[ShownPage]
    backend: Backend
    usage: Usage = field(default_factory=Usage)

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The pages the model was shown, as the record and the citations name them."""
        return [asdict(page.source) for page in self.pages]

    def stream(self, waiting: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[str]:
        """The model's text, piece by piece; consume it inside `contextlib.aclosing` (models/backend.py).
        `waiting(ahead)` is awaited while the request waits behind `ahead` others."""
        question = self.question
        return self.backend.stream(self.prompt, question.sampling, self.usage, waiting, question.adapter)

    def record(self, completion: str, ended: Ended) -> dict[str, Any]:
        """The generation record of the answer `completion`, ended as `ended`, for its step's metadata."""
        question, adapter = self.question, self.question.adapter
        return GenerationRecord(
            model=self.backend.name,
            backend=self.backend.kind,
            prompt_id=question.turn.id,
            completion=completion,
            adapter=adapter.name if adapter else None,
            adapter_version=adapter.version if adapter else None,
            context=[message.id for message in question.earlier if isinstance(message, AIMessage)],
            settings={**asdict(question.sampling), "system_prompt": question.prompt_name},
            sources=self.sources,
            **{**asdict(self.usage), "ended": ended},
        ).as_metadata()


@dataclass
class Answering:
    """What answering needs of a server: its model, its prompt builder and context, and the users' documents."""

    backend: Backend
    prompts: PromptBuilder
    context_tokens: int  # prompt plus answer
    documents: Documents
    store: ContentStore
    pdfs: PdfPool
    document_pages: int  # at most this many pages shown with a question
    budget: ImageBudget  # of each page shown

    async def pages(
        self, user: str, earlier: list[BaseMessage], turn: HumanMessage, within: list[str] | None
    ) -> list[ShownPage]:
        """The pages for this question and the one before it, as the model sees them: from the documents
        `within` (the conversation's, by sha256), or from all of the user's documents (None)."""
        if within == []:
            return []
        asked_before = [turn_text(message) for message in earlier if isinstance(message, HumanMessage)][-1:]
        question = " ".join([*asked_before, turn_text(turn)])
        hits = await pages_for(self.documents, user, question, within, self.document_pages)
        return await shown_pages(hits, user, self.store, self.pdfs, self.budget)

    async def pages_again(self, user: str, sources: list[dict[str, Any]]) -> list[ShownPage]:
        """The pages an earlier answer was shown (its record's sources), for another answer to the same question."""
        hits = await self.documents.pages(user, [(source["sha256"], source["page"]) for source in sources])
        return await shown_pages(hits, user, self.store, self.pdfs, self.budget)

    async def prepare(self, question: Question) -> Answer:
        """The answer's prompt, within the context: the least relevant page gives way first. Raises PromptTooLong
        when the question alone does not fit. Tokenizing a long conversation takes long enough to stall every other
        chat, so it runs off the event loop."""
        pages = list(question.pages)
        budget = self.context_tokens - question.sampling.max_new_tokens
        while True:
            asked = [*question.earlier, with_pages(question.turn, pages)]
            try:
                prompt = await asyncio.to_thread(self.prompts.build, system_prompt(question.prompt_name), asked, budget)
                return Answer(question, prompt, pages, self.backend)
            except PromptTooLong:
                if not pages:
                    raise
                pages.pop()
