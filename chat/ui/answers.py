"""One answer, streamed into the chat: prompt, generation, what the page shows, what is stored.

The answer's step carries its generation record (chat/store/generations.py) in its metadata;
the data layer stores both in one transaction. The page shows the answer decorated (its label,
a stop marker), the record keeps the model's own text. While it streams, the answer is saved
every few seconds as interrupted, so a server killed mid-answer keeps what the user saw, marked
for what it is; its end overwrites that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Any, Protocol

import chainlit as cl
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from PIL import Image

from chat.answering import Question
from chat.conversation import PromptTooLong, history_from_thread, user_turn
from chat.documents.reading import Kind, file_kind
from chat.documents.retrieval import ShownPage
from chat.ui.chainlit_fixes import browser_only_message, failure_reference, without_thumbs
from chat.ui.choices import ask_without_files_action, regenerate_action
from chat.ui.documents import add_to_library, page_elements
from chat.ui.panel import arena_sampling, chosen_sampling
from chat.ui.runtime import serving
from chat.ui.texts import shown_answer, text
from chat.ui.uploads import Upload, UploadsRejected, load_fitted_image, read_attachments
from models.adapters import Adapter
from models.backend import AdapterRefused, BackendUnavailable, Ended, OutOfMemory

log = logging.getLogger("loupe")
STREAM_INTERVAL_S = 0.05  # 20 updates a second reads as smooth; fewer emits leave the CPU to the model
# A killed server loses at most this much of an answer the user saw; each save is one small write.
SAVE_INTERVAL_S = 3.0


async def user_turn_of(message: cl.Message, user: str, language: str, across_library: bool) -> HumanMessage | None:
    """The user's message as a turn of the history, its images checked and fitted to the budget, its
    documents read into the library; None, with the reason told in the chat, when it cannot be answered
    (or has nothing to answer: documents sent without a question are only read). A question whose
    attachments are refused can be asked without them by a click (`across_library` as it was sent)."""
    uploads = [Upload(element.name, Path(element.path)) for element in message.elements if element.path]
    try:
        images, files = await asyncio.to_thread(read_attachments, uploads, serving().image_limits, language)
        await add_to_library(files, user, language)
    except UploadsRejected as rejected:
        question = message.content.strip()
        actions = [ask_without_files_action(message.id, question, across_library, language)] if question else []
        await without_thumbs(cl.Message(content=str(rejected), actions=actions)).send()
        return None
    if not message.content.strip():
        if not images and not files:
            await without_thumbs(cl.Message(content=text("empty_message", language))).send()
        elif files:
            names = ", ".join(f.name for f in files)
            await without_thumbs(cl.Message(content=text("documents_read", language, names=names))).send()
        if not images:
            return None
    return user_turn(message.content, images, message.id)


async def respond(
    earlier: list[BaseMessage],
    turn: HumanMessage,
    language: str,
    keep: Callable[[cl.Message], None],
    adapter: Adapter | None,
    label: str | None = None,
    regenerable: bool = True,
    pages: list[ShownPage] | None = None,
    shown_in: Callable[[cl.Message], AnswerStream] | None = None,
    blind: bool = False,
) -> cl.Message | None:
    """Answer `turn` after the `earlier` conversation, streaming, with the chat's current settings,
    from the base model or `adapter`, shown the document `pages` (best first) that fit the context.

    `keep(reply)` is called with an answer that belongs in the model's history (finished, or
    stopped with some text), also when Stop cancels this task. `label` goes on the answer's
    first line ("Answer 2 of 2", "Answer A"). The answer streams into its own message, or into
    `shown_in(reply)` (an arena column); either way the reply is sent and stored once it ends. A `blind`
    answer (the arena's) is sampled as the arena samples (`arena_sampling`), and reaches the browser without
    the name of who wrote it (chat/ui/chainlit_fixes.py).
    Returns the answer sent, if one was.
    """
    runtime = serving()
    sampling, prompt_name = chosen_sampling(runtime.backend.default_sampling)
    if blind:
        sampling = arena_sampling(sampling, runtime.backend.default_sampling, runtime.settings)
    try:
        answer = await runtime.answering.prepare(Question(earlier, turn, adapter, sampling, prompt_name, pages or []))
    except PromptTooLong as too_long:
        refusal = text("prompt_too_long", language, needed=too_long.needed, budget=too_long.budget)
        await without_thumbs(cl.Message(content=refusal)).send()
        return None
    sources, usage = answer.sources, answer.usage
    reply = cl.Message(
        content="",
        actions=[regenerate_action(turn.id, language)] if regenerable else [],
        elements=page_elements(answer.pages),
    )
    stream = shown_in(reply) if shown_in else MessageStream(reply, language)

    def metadata(completion: str, ended: Ended) -> dict[str, Any]:
        """The generation record, marked blind in the arena, for the answer's (or the failure's) metadata."""
        return {"generation": answer.record(completion, ended), **({"blind": True} if blind else {})}

    def draft() -> dict[str, Any]:
        """The answer so far as stored until it ends: interrupted, unless its end overwrites it."""
        step = dict(reply.to_dict())
        step["output"] = shown_answer(stream.text, Ended.INTERRUPTED, language, label, sources)
        step["metadata"] = {"ended": Ended.INTERRUPTED, **metadata(stream.text, Ended.INTERRUPTED)}
        return step

    saved_at, saving = time.monotonic(), None
    try:
        async with aclosing(answer.stream(stream.waiting)) as pieces:
            async for piece in pieces:
                await stream.add(piece)
                # In the background, like Chainlit's own writes, and one at a time: a slow database slows no answer.
                if time.monotonic() - saved_at >= SAVE_INTERVAL_S and (saving is None or saving.done()):
                    saving = asyncio.create_task(runtime.data_layer.save_draft(draft()))
                    saved_at = time.monotonic()
    except Exception as error:
        reference = failure_reference()
        log.exception("Generation failed (%s)", reference)
        await stream.flush()
        failure = cl.ErrorMessage(content=explain_failure(error, reference, language))
        if stream.text:  # what was written stays, marked as failed, with its record; the notice follows
            reply.metadata = {"ended": usage.ended, **metadata(stream.text, usage.ended)}
            await reply.send()
        else:
            failure.metadata = metadata(stream.text, usage.ended)
        await failure.send()
    finally:  # also runs on Stop, which cancels this task; Chainlit then posts its own notice
        await stream.end(usage.ended, sources)
        if usage.ended == Ended.FINISHED or (usage.ended == Ended.STOPPED and stream.text):
            reply.metadata = {"ended": usage.ended, **metadata(stream.text, usage.ended)}
            keep(reply)
            reply.content = shown_answer(stream.text, usage.ended, language, label, sources)
            await reply.send()
            # Chainlit stores it in the background: wait, so that the buttons offered about it next (compare, vote)
            # find it stored, however soon they are clicked.
            await runtime.data_layer.settle_step(reply.id)
    return reply if usage.ended != Ended.ERROR else None


async def stored_history(thread: dict[str, Any]) -> list[BaseMessage]:
    """The model's history of a stored thread, with its images fitted to the budget (read off the event loop)."""
    runtime = serving()
    images: dict[str, list[str]] = {}
    for element in thread.get("elements") or []:
        if element.get("objectKey") and element.get("forId"):
            images.setdefault(element["forId"], []).append(element["objectKey"])

    def images_of(step_id: str) -> list[Image.Image]:
        """The message's images; its documents reach the model as pages, chosen per question."""
        paths = [runtime.store.path(key) for key in images.get(step_id, [])]
        return [load_fitted_image(path, runtime.image_limits) for path in paths if file_kind(path) == Kind.IMAGE]

    return await asyncio.to_thread(history_from_thread, thread["steps"], images_of)


def model_turn(reply: cl.Message) -> AIMessage:
    """An answer as the model's history holds it: what the model wrote, under the message's id."""
    return AIMessage(content=reply.metadata["generation"]["completion"], id=reply.id)


async def as_stoppable_task(work: Coroutine[Any, Any, cl.Message | None], language: str) -> cl.Message | None:
    """Run an action's work as the session's current task, so the Stop button shows and cancels it.

    Chainlit runs action callbacks inside the HTTP request, where Stop cannot reach them.
    """
    task = asyncio.create_task(work)
    cl.context.session.current_task = task
    await cl.context.emitter.task_start()
    try:
        await asyncio.wait([task])
    finally:
        await cl.context.emitter.task_end()
    if task.cancelled():
        return None
    if error := task.exception():
        reference = failure_reference()
        log.error("Action failed (%s)", reference, exc_info=error)
        await cl.ErrorMessage(content=explain_failure(error, reference, language)).send()
        return None
    return task.result()


def explain_failure(error: BaseException, reference: str, language: str) -> str:
    """What the user is told of a failure: what to do, and the reference its details are logged under."""
    if isinstance(error, OutOfMemory):
        return text("out_of_memory", language)
    if isinstance(error, BackendUnavailable):
        return text("model_unavailable", language, reference=reference)
    if isinstance(error, AdapterRefused):
        return text("adapter_refused", language, reason=str(error))
    return text("model_error", language, reference=reference)


class AnswerStream(Protocol):
    """Where an answer shows while the model writes it; `text` is everything written so far."""

    text: str

    async def waiting(self, ahead: int) -> None:
        """The request waits behind `ahead` others for the model."""

    async def add(self, piece: str) -> None:
        """The model wrote `piece`."""

    async def flush(self) -> None:
        """Show everything written so far now."""

    async def end(self, ended: Ended, sources: list[dict[str, Any]]) -> None:
        """The generation ended (also when stopped or failed): show all of it, and how it ended."""


class MessageStream:
    """An answer streaming into its own message, with the queue notice while it waits."""

    def __init__(self, message: cl.Message, language: str) -> None:
        self.batched = BatchedStream(message)
        self.queue_notice = QueueNotice(language)

    @property
    def text(self) -> str:
        return self.batched.text

    async def waiting(self, ahead: int) -> None:
        await self.queue_notice.show(ahead)

    async def add(self, piece: str) -> None:
        await self.queue_notice.clear()
        await self.batched.add(piece)

    async def flush(self) -> None:
        await self.batched.flush()

    async def end(self, ended: Ended, sources: list[dict[str, Any]]) -> None:
        await self.queue_notice.clear()
        await self.batched.flush()


class BatchedStream:
    """Streams text to the browser at most once per STREAM_INTERVAL_S, the first piece at once.

    One socket.io emit per token costs the server about as much CPU as a small model spends
    generating it, so emitting each token would slow the answer down (bench/RESULTS.md).
    `text` is everything the model wrote so far.
    """

    def __init__(self, message: cl.Message) -> None:
        self.message = message
        self.text = ""
        self.pending = ""
        self.sent_at = 0.0

    async def add(self, piece: str) -> None:
        self.text += piece
        self.pending += piece
        if time.monotonic() - self.sent_at >= STREAM_INTERVAL_S:
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            await self.message.stream_token(self.pending)
            self.pending = ""
            self.sent_at = time.monotonic()


class QueueNotice:
    """A message telling a waiting user their place in the model's queue, removed when served.

    Sent to the browser only, never stored: it is stale once the answer starts. Stored, it cost a
    database write for every waiting user each time the queue moved (50 waiting users: ~40 writes
    per answer), and those fire-and-forget writes could re-insert it after its deletion.
    """

    def __init__(self, language: str) -> None:
        self.language = language
        self.step: dict[str, Any] | None = None

    async def show(self, ahead: int) -> None:
        content = text("queued", self.language, ahead=ahead)
        if self.step is None:
            self.step = dict(browser_only_message(content))
            await cl.context.emitter.send_step(self.step)
        else:
            self.step["output"] = content
            await cl.context.emitter.update_step(self.step)

    async def clear(self) -> None:
        if self.step is not None:
            await cl.context.emitter.delete_step(self.step)
            self.step = None
