"""OpenAI's chat completions API, spoken by Loupe: what the `openai` SDK, LangChain's ChatOpenAI and editor
plug-ins call, with the key of a Loupe user (`Authorization: Bearer loupe-...`).

A call is a message of that user's, answered as the page answers one (chat/answering.py) and stored as the
page stores one: a conversation in their history (marked as from the API, resumable in the browser), its
images as attachments, the answer with its generation record. So its feedback (`POST /v1/feedback`, as the
page's thumbs, reasons and corrections) reaches the exports and the next adapter. The completion's `id` is
the stored answer's id. A call continues a stored conversation when it names it (`loupe.conversation`, as
every response says it) or sends its turns again before the new message (as clients that keep their own
history do); otherwise it starts one. Only what Loupe stored reaches the model and the training data: turns a
client sends again only find their conversation, and turns Loupe did not store are refused.

What a client sends is checked as an upload is: images only as data URLs (a remote URL is refused, not
fetched), within the same count, size and pixel limits; a key reads and writes only its user's data (404
otherwise) and counts against its user's message rate. Failures are OpenAI-shaped: {"error": {"message",
"type", "code"}} with 400, 401, 404, 413 or 429.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Any, Literal, NamedTuple

from chainlit.context import init_http_context
from chainlit.element import File as ChainlitFile
from chainlit.element import Image as ChainlitImage
from chainlit.types import Feedback as ChainlitFeedback
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from chat.answering import Answer, Question
from chat.arena.profiles import UnknownAdapter
from chat.conversation import PromptTooLong, turn_index, turn_text, user_turn
from chat.documents.library import read_into_library
from chat.documents.reading import DocumentFile, Kind, kind_of
from chat.prompts import DEFAULT_PROMPT
from chat.settings import SLIDERS
from chat.store.documents import LibraryEntry
from chat.store.generations import BASE
from chat.store.keys import key_owner
from chat.store.preferences import CHOICES
from chat.store.rows import NotYours, iso, utcnow
from chat.ui.answers import STREAM_INTERVAL_S, stored_history
from chat.ui.choices import reasons_for
from chat.ui.documents import thread_documents
from chat.ui.runtime import Runtime
from chat.ui.texts import shown_answer
from chat.ui.uploads import Upload, UploadsRejected, read_attachments
from chat.ui.web import MB
from models.backend import Ended, SamplingSettings

log = logging.getLogger("loupe.api")
PREFIX = "/v1"
LANGUAGE = "en"  # of the messages a program is told (a refused upload's reasons); the page speaks the user's
API_SOURCE = "api"  # a conversation's metadata "source": where it was started
API_MARK = "API · "  # before a conversation's name in the history's list
# The conversations ending in a resent history's last answer that are read to find it, newest first: a client
# resends the one it is in, and a short answer ("Yes.") may end many.
RESENT_CANDIDATES = 20


class ApiError(Exception):
    """A refusal, as OpenAI words one: `status`, and a body {"error": {"message", "type", "code"}}."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": None}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


MODEL_FAILED = ApiError(
    500, "The model failed while answering; it is stored as failed. Try again.", "model_error", "server_error"
)


class LoupeOptions(BaseModel):
    """Loupe's extension of a chat call: continue a stored conversation, or answer a message of one again."""

    conversation: str | None = None  # a conversation's id, as every response gives it under `loupe`
    regenerate_of: str | None = None  # a completion's id: another answer to its message, beside it
    files: list[str] = Field(default_factory=list)  # documents of the caller's library (/v1/files ids)
    library: bool = False  # answer from all of the caller's documents (the page's Library command)


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that Loupe reads; others are accepted and ignored, as
    OpenAI-compatible servers do, so that clients sending their defaults (n=1, a user tag) work unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    loupe: LoupeOptions = Field(default_factory=LoupeOptions)


class FeedbackRequest(BaseModel):
    """A rating of a completion (by its `id`), as the page's thumbs, reasons and correction store it."""

    id: str
    value: Literal[1, -1] | None = None
    reasons: list[str] = Field(default_factory=list)
    comment: str | None = None
    correction: str | None = None
    compared_with: str | None = None  # another completion of the same message ("a"; this one is "b")
    choice: Literal[*CHOICES] | None = None


def api_routes(app: FastAPI, runtime: Runtime) -> None:
    """Loupe's /v1 routes on `app`, answered from `runtime`."""
    router = APIRouter(prefix=PREFIX)
    settings = runtime.settings

    async def caller(request: Request) -> str:
        """The user whose key the request carries; 401 for none, an unknown, revoked or expired one."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "No API key: send it as `Authorization: Bearer <key>`.", "missing_api_key")
        if (user := await key_owner(runtime.sessions, key.strip())) is None:
            raise ApiError(
                401, "This API key is not valid: it was revoked, has expired, or never existed.", "invalid_api_key"
            )
        return user

    @router.get("/models")
    async def models(user: str = Depends(caller)) -> dict[str, Any]:
        """The base model and each adapter by name, the one new chats start with marked `loupe.default`."""
        default = runtime.profiles.default().adapter
        names = [BASE, *(adapter.name for adapter in runtime.profiles.adapters.list())]
        default_name = default.name if default else BASE
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "loupe",
                    "loupe": {"default": name == default_name},
                }
                for name in names
            ],
        }

    @router.post("/chat/completions")
    async def chat_completions(call: ChatRequest, user: str = Depends(caller)) -> Response:
        """Answer the call's last user message (or again the one of `loupe.regenerate_of`), streamed as
        server-sent events or whole."""
        adapter, profile_name = choose_model(call.model, runtime)
        sampling = sampling_of(call, runtime.backend.default_sampling)
        if call.loupe.regenerate_of is not None:
            thread_id, earlier, turn, pages = await asked_again(call.loupe.regenerate_of, user, runtime)
            sent: tuple[str, list[bytes], list[LibraryEntry]] | None = None
        else:
            text, images, data = await parse_turn(call, runtime)
            continued = await conversation(call, user, runtime)
            thread_id, earlier = continued.id, continued.earlier
            files = await owned_documents(call.loupe.files, user, runtime)
            turn, sent = user_turn(text, images, str(uuid.uuid4())), (text, data, files)
            attached = continued.documents + [entry.sha256 for entry in files]
            within = None if call.loupe.library else list(dict.fromkeys(attached))
            pages = await runtime.answering.pages(user, earlier, turn, within)
        if (wait := await runtime.message_rate.admit(user)) is not None:  # the page's limit, shared with it
            message = f"Too many messages: try again in {wait:.0f} s."
            raise ApiError(429, message, "rate_limit_exceeded", "rate_limit_error")
        try:
            answer = await runtime.answering.prepare(Question(earlier, turn, adapter, sampling, DEFAULT_PROMPT, pages))
        except PromptTooLong as too_long:
            raise ApiError(400, str(too_long), "context_length_exceeded") from None
        persisted = await runtime.data_layer.get_user(user)
        init_http_context(thread_id=thread_id, user=persisted)  # the data layer writes as this user, into their own
        question = None
        if sent is not None:
            question = store_question(runtime, thread_id, persisted.id, turn.id, *sent, profile_name, continued.new)
        stops = [call.stop] if isinstance(call.stop, str) else list(call.stop or [])
        exchange = Exchange(runtime, answer, thread_id, profile_name, stops, question)
        if call.stream:
            include_usage = bool((call.stream_options or {}).get("include_usage"))
            return StreamingResponse(exchange.events(include_usage), media_type="text/event-stream")
        return JSONResponse(await exchange.whole())

    @router.post("/feedback")
    async def feedback(rating: FeedbackRequest, user: str = Depends(caller)) -> dict[str, Any]:
        """A thumb on a completion, with its reasons, comment and correction, and its comparison with an earlier
        completion of the same message (`compared_with`: "a" is that one, "b" this one), stored as the page's are."""
        value = None if rating.value is None else int(rating.value == 1)  # Chainlit stores a thumbs down as 0
        if rating.value is None and rating.choice is None:
            raise ApiError(
                400, "Send a `value` (1 or -1), a comparison (`compared_with` and `choice`), or both.", "empty_feedback"
            )
        if unknown := [reason for reason in rating.reasons if reason not in reasons_for(value, settings)]:
            offered = ", ".join(reasons_for(value, settings)) or "none without a value"
            raise ApiError(400, f"Unknown reasons {unknown} for this thumb; offered: {offered}.", "invalid_reason")
        for written in (rating.comment, rating.correction):
            if written is not None and len(written) > settings.max_message_chars:
                raise ApiError(400, f"At most {settings.max_message_chars} characters.", "message_too_long")
        if (rating.choice is None) != (rating.compared_with is None):
            raise ApiError(400, "A comparison needs both `compared_with` and `choice`.", "invalid_comparison")
        try:
            answer = await runtime.preferences.answer(user, rating.id)
            if rating.choice is not None:
                await runtime.preferences.compare(user, rating.compared_with, answer.id, rating.choice)
        except NotYours:
            raise ApiError(
                404, f"No completion '{rating.id}' of yours to compare with that one.", "not_found"
            ) from None
        if value is not None:
            step = await runtime.data_layer.get_step(answer.id)
            init_http_context(thread_id=step["threadId"], user=await runtime.data_layer.get_user(user))
            await runtime.data_layer.upsert_feedback(
                ChainlitFeedback(forId=step["parentId"], value=value, comment=rating.comment)
            )
            await runtime.preferences.set_reasons(user, answer.id, rating.reasons)
        if rating.correction and rating.correction.strip():
            await runtime.preferences.correct(user, answer.id, rating.correction.strip())
        return {"id": answer.id, "object": "loupe.feedback", "stored": True}

    @router.post("/files")
    async def upload(request: Request, user: str = Depends(caller)) -> dict[str, Any]:
        """A PDF or text file into the caller's library (`purpose` is read and ignored); its `id` attaches it to a
        chat call (`loupe.files`). Read as the page reads an attachment: by content, within the same limits."""
        async with request.form(max_files=1, max_fields=8) as form:
            file, purpose = form.get("file"), form.get("purpose")
            if not isinstance(file, UploadFile):
                raise ApiError(400, "Send the document as the multipart field `file`.", "invalid_request")
            data, name = await file.read(), file.filename or "document"
        if len(data) > settings.max_upload_mb * MB:
            raise ApiError(413, f"The file is larger than {settings.max_upload_mb:g} MB.", "file_too_large")
        if (kind := kind_of(data)) == Kind.IMAGE:
            message = "Only PDFs and UTF-8 text files go into the library; send images in a message, as data URLs."
            raise ApiError(400, message, "unsupported_file")
        document = DocumentFile(name, kind, data, hashlib.sha256(data).hexdigest())
        library = runtime.documents, runtime.store, runtime.pdfs, settings.max_pdf_pages
        if problems := await read_into_library([document], user, *library):
            raise ApiError(400, str(UploadsRejected.naming(problems, LANGUAGE)), "unreadable_file")
        return {
            "id": document.sha256,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose if isinstance(purpose, str) else "assistants",
            "status": "processed",
        }

    app.include_router(router)

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> Response:
        return error.response()

    default_validation = app.exception_handlers.get(RequestValidationError)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> Response:
        """A /v1 body that is not JSON or misses a field: OpenAI's 400; elsewhere FastAPI's own 422."""
        if not request.url.path.startswith(PREFIX):
            return await default_validation(request, error)
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in error.errors())
        return ApiError(400, f"The request is malformed: {problems}.", "invalid_request").response()


async def parse_turn(call: ChatRequest, runtime: Runtime) -> tuple[str, list[Image.Image], list[bytes]]:
    """The last message's text and images (checked and fitted as uploads are, and their bytes, to store)."""
    last = call.messages[-1]
    if last.get("role") != "user":
        raise ApiError(400, "The last message must be the user's: it is the one answered.", "invalid_messages")
    if any(message.get("role") not in ("user", "assistant") for message in call.messages):
        raise ApiError(
            400,
            "Loupe answers with its own system prompt; send user and assistant messages only.",
            "unsupported_role",
        )
    text, urls = content_of(last)
    data = [image_data(url) for url in urls]
    if len(text) > runtime.settings.max_message_chars:
        raise ApiError(
            400, f"The message is longer than {runtime.settings.max_message_chars} characters.", "message_too_long"
        )
    if not text.strip() and not data:
        raise ApiError(400, "The message is empty.", "empty_message")
    images = await asyncio.to_thread(checked_images, data, runtime)
    return text, images, data


def content_of(message: dict[str, Any]) -> tuple[str, list[object]]:
    """A message's text (its text parts, a line each) and the URLs of its image parts."""
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise ApiError(400, "A message's content is a string or a list of parts.", "invalid_content")
    texts, urls = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            urls.append(image_url.get("url") if isinstance(image_url, dict) else None)
        else:
            raise ApiError(400, f"Unsupported content part: {str(part)[:80]}.", "invalid_content")
    return "\n".join(texts), urls


def image_data(url: object) -> bytes:
    """The bytes of an image sent as a data URL; anything else refused (Loupe never fetches a remote URL)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(
            400,
            "Images are sent as data URLs (data:image/png;base64,...); remote URLs are not fetched.",
            "invalid_image_url",
        )
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ApiError(
            400, "A data URL in an image part must be a base64 image (data:image/...;base64,...).", "invalid_image_url"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "An image's data URL is not valid base64.", "invalid_image_url") from None


def checked_images(data: list[bytes], runtime: Runtime) -> list[Image.Image]:
    """The images, checked as the page checks uploads (count, size, decoded whole, pixel budget)."""
    if not data:
        return []
    with tempfile.TemporaryDirectory() as folder:
        uploads = []
        for number, content in enumerate(data, 1):
            path = Path(folder) / f"image-{number}"
            path.write_bytes(content)
            uploads.append(Upload(f"image {number}", path))
        try:
            images, documents = read_attachments(uploads, runtime.image_limits, LANGUAGE)
        except UploadsRejected as rejected:
            raise ApiError(400, str(rejected), "invalid_image") from None
    if documents:
        raise ApiError(400, "An image part holds a document, not an image.", "invalid_image")
    return images


class Conversation(NamedTuple):
    """Where a call's message goes: a conversation, its history so far and the documents attached to it."""

    id: str
    earlier: list[BaseMessage]
    documents: list[str]  # by sha256
    new: bool


async def conversation(call: ChatRequest, user: str, runtime: Runtime) -> Conversation:
    """The conversation a call goes into: the user's stored one it names, or the one whose turns it sends again
    before its message, or a new one."""
    if call.loupe.conversation is not None:
        return await stored_conversation(call.loupe.conversation, user, runtime)
    if len(call.messages) > 1:
        return await resent_conversation(call.messages[:-1], user, runtime)
    return Conversation(str(uuid.uuid4()), [], [], new=True)


async def stored_conversation(thread_id: str, user: str, runtime: Runtime) -> Conversation:
    """The user's conversation `thread_id`; 404 for another user's or none."""
    thread = await runtime.data_layer.get_thread(thread_id)
    if thread is None or thread.get("userIdentifier") != user:
        raise ApiError(404, f"No conversation '{thread_id}' of yours.", "not_found")
    return Conversation(thread["id"], await stored_history(thread), thread_documents(thread), new=False)


async def resent_conversation(turns: list[dict[str, Any]], user: str, runtime: Runtime) -> Conversation:
    """The user's stored conversation whose history `turns` are, turn by turn (their texts and Loupe's answers,
    as a client that keeps its own history sends them again). The model is given the stored turns, images
    included: the sent ones only find them. Turns that are not a stored conversation of the user's are refused,
    so an answer Loupe did not write never reaches the training data as Loupe's."""
    sent = [(turn.get("role"), content_of(turn)[0]) for turn in turns]
    answers = [text for role, text in sent if role == "assistant"]
    found = await runtime.preferences.conversations_answered(user, answers[-1], RESENT_CANDIDATES) if answers else []
    for thread_id in found:
        stored = await stored_conversation(thread_id, user, runtime)
        if [(role_of(turn), turn_text(turn)) for turn in stored.earlier] == sent:
            return stored
    raise ApiError(
        400,
        "These messages are not a conversation of yours as Loupe stored it (Loupe answers with its own system "
        "prompt and keeps its own answers). Send only the new user message to start a conversation, or name one "
        "to continue in `loupe.conversation` (every response gives it).",
        "unknown_conversation",
    )


def role_of(turn: BaseMessage) -> str:
    return "assistant" if isinstance(turn, AIMessage) else "user"


async def owned_documents(ids: list[str], user: str, runtime: Runtime) -> list[LibraryEntry]:
    """The caller's library entries of these /v1/files ids; 404 for one that is not in their library."""
    if not ids:
        return []
    library = {entry.sha256: entry for entry in await runtime.documents.library(user)}
    if missing := [sha256 for sha256 in ids if sha256 not in library]:
        raise ApiError(404, f"No file {missing[0]!r} in your library (upload it with /v1/files).", "not_found")
    return [library[sha256] for sha256 in dict.fromkeys(ids)]


async def asked_again(answer_id: str, user: str, runtime: Runtime) -> tuple[str, list[BaseMessage], HumanMessage, list]:
    """The conversation, history and message a completion answered, and the pages it was shown: what another
    answer to that message is asked with (chat/ui/siblings.py does the same for the page's Regenerate)."""
    step = await runtime.data_layer.get_step(answer_id)
    missing = ApiError(404, f"No completion '{answer_id}' of yours to answer again.", "not_found")
    if step is None or not (record := (step.get("metadata") or {}).get("generation")):
        raise missing
    thread_id, history, _, _ = await stored_conversation(step["threadId"], user, runtime)
    at = turn_index(history, record["prompt_id"])
    if at is None:  # an answer on a side branch: its conversation went on from another
        raise ApiError(400, f"'{answer_id}' answers a message the conversation did not go on from.", "not_regenerable")
    pages = await runtime.answering.pages_again(user, record.get("sources", []))
    return thread_id, history[:at], history[at], pages


def choose_model(model: str, runtime: Runtime) -> tuple[Any, str]:
    """The adapter of the model named (None: the base model) and the profile the conversation is kept under."""
    try:
        adapter = runtime.profiles.named(model)
    except UnknownAdapter:
        names = ", ".join([BASE, *(adapter.name for adapter in runtime.profiles.adapters.list())])
        raise ApiError(404, f"The model '{model}' does not exist; models: {names}.", "model_not_found") from None
    return adapter, (adapter.name if adapter else runtime.profiles.all()[0].name)


def sampling_of(call: ChatRequest, defaults: SamplingSettings) -> SamplingSettings:
    """The call's sampling, within the page's ranges (chat/settings.py SLIDERS), the model's defaults elsewhere."""
    wanted = {
        "temperature": call.temperature,
        "top_p": call.top_p,
        "max_new_tokens": call.max_completion_tokens or call.max_tokens,
    }
    for name, value in wanted.items():
        low, high, _ = SLIDERS[name]
        low = 1 if name == "max_new_tokens" else low
        if value is not None and not low <= value <= high:
            field = {"max_new_tokens": "max_tokens"}.get(name, name)
            raise ApiError(400, f"`{field}` must be between {low:g} and {high:g}.", "invalid_value")
    return SamplingSettings(
        temperature=defaults.temperature if call.temperature is None else call.temperature,
        top_p=defaults.top_p if call.top_p is None else call.top_p,
        max_new_tokens=int(wanted["max_new_tokens"] or defaults.max_new_tokens),
        repetition_penalty=defaults.repetition_penalty,
        seed=call.seed,
    )


async def store_question(
    runtime: Runtime,
    thread_id: str,
    user_id: str,
    prompt_id: str,
    text: str,
    images: list[bytes],
    documents: list[LibraryEntry],
    profile: str,
    new: bool,
) -> None:
    """The user's message, with its images and the documents it attached, in their conversation, as the page
    stores one (a resumed chat then asks about those documents too)."""
    data_layer = runtime.data_layer
    if new:
        metadata = {"source": API_SOURCE, "chat_profile": profile}
        name = f"{API_MARK}{text.strip() or 'Image'}"  # the history's list shows where it was asked
        await data_layer.update_thread(thread_id, name=name, user_id=user_id, metadata=metadata)
    now = iso(utcnow())
    await data_layer.create_step(
        {
            "id": prompt_id,
            "threadId": thread_id,
            "type": "user_message",
            "name": "API",
            "output": text,
            "createdAt": now,
            "start": now,
            "end": now,
            "metadata": {"source": API_SOURCE},
        }
    )
    for number, content in enumerate(images, 1):
        element = ChainlitImage(name=f"image-{number}", content=content, display="inline", for_id=prompt_id)
        element.thread_id = thread_id
        await data_layer.create_element(element)
    for entry in documents:
        content = await asyncio.to_thread(runtime.store.path(entry.sha256).read_bytes)
        attached = ChainlitFile(name=entry.name, content=content, display="inline", for_id=prompt_id)
        attached.thread_id = thread_id
        await data_layer.create_element(attached)


def in_background(runtime: Runtime, write: Coroutine[Any, Any, None]) -> asyncio.Task:
    """`write` as a task of its own, which the request's end (a client gone) does not cancel."""
    task = asyncio.create_task(write)
    runtime.background.add(task)
    task.add_done_callback(runtime.background.discard)
    return task


class Exchange:
    """One answer of the API, streamed and stored: the run and the answer's steps, as the page keeps them."""

    def __init__(
        self,
        runtime: Runtime,
        answer: Answer,
        thread_id: str,
        model: str,
        stops: list[str],
        question: Coroutine[Any, Any, None] | None,
    ) -> None:
        """`question`: the write of the message answered, if it is new (not for another answer to a stored one)."""
        self.runtime, self.answer, self.thread_id = runtime, answer, thread_id
        self.question, self.question_stored = question, None
        self.prompt_id = answer.question.turn.id
        self.model, self.stops = model, [stop for stop in stops if stop]
        self.held = max((len(stop) - 1 for stop in self.stops), default=0)  # what could still begin a stop sequence
        self.run_id, self.id, self.created = str(uuid.uuid4()), str(uuid.uuid4()), int(time.time())
        self.text = ""

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as the model writes it, cut at the first stop sequence; stored however it ends."""
        usage = self.answer.usage
        sent = 0
        try:
            async with aclosing(self.answer.stream()) as written:
                async for piece in written:
                    self.store_question()
                    self.text += piece
                    cut = min((self.text.find(stop) for stop in self.stops if stop in self.text), default=-1)
                    if cut >= 0:
                        self.text = self.text[:cut]
                        break
                    if len(self.text) - self.held > sent:  # the held end waits for the next piece
                        yield self.text[sent : len(self.text) - self.held]
                        sent = len(self.text) - self.held
            if sent < len(self.text):
                yield self.text[sent:]
        except asyncio.CancelledError:
            usage.ended = Ended.STOPPED  # the client went away: what was written is kept, marked stopped
            raise
        finally:
            # In a task of its own: a client that went away cancels this request's task, not the write. The end
            # of the stream waits for it, so that an answer a client has is stored (and can be rated at once).
            await asyncio.shield(in_background(self.runtime, self.store(usage.ended)))

    def store_question(self) -> None:
        """Store the question, in the background, once the model has read it: its writes would otherwise take the
        CPU from the prompt's reading, and delay the first token (bench/bench_api.py)."""
        if self.question is not None and self.question_stored is None:
            self.question_stored = in_background(self.runtime, self.question)

    async def store(self, ended: Ended) -> None:
        self.store_question()  # not yet, where the model wrote nothing
        if self.question_stored is not None:  # the answer's steps follow its question's
            await self.question_stored
        now = iso(utcnow())
        metadata = {"ended": ended, "generation": self.answer.record(self.text, ended)}
        shown = shown_answer(self.text, ended, LANGUAGE, None, self.answer.sources)
        data_layer = self.runtime.data_layer
        run = {"id": self.run_id, "threadId": self.thread_id, "type": "run", "name": "on_message"}
        await data_layer.create_step({**run, "parentId": self.prompt_id, "createdAt": now, "start": now, "end": now})
        await data_layer.create_step(
            {
                "id": self.id,
                "threadId": self.thread_id,
                "parentId": self.run_id,
                "type": "assistant_message",
                "name": self.model,
                "output": shown,
                "metadata": metadata,
                "createdAt": now,
                "start": now,
                "end": now,
            }
        )

    def finish_reason(self) -> str:
        return (
            "length" if self.answer.usage.completion_tokens >= self.answer.question.sampling.max_new_tokens else "stop"
        )

    def usage(self) -> dict[str, int]:
        usage = self.answer.usage
        total = usage.prompt_tokens + usage.completion_tokens
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": total,
        }

    def loupe(self) -> dict[str, Any]:
        return {"conversation": self.thread_id, "sources": self.answer.sources}

    async def whole(self) -> dict[str, Any]:
        try:
            async for _ in self.pieces():
                pass
        except Exception:
            log.exception("The model failed while answering through the API (answer %s)", self.id)
            raise MODEL_FAILED from None
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason(),
                }
            ],
            "usage": self.usage(),
            "loupe": self.loupe(),
        }

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """The answer as OpenAI's server-sent events: a role, the text's pieces, the end, the usage, [DONE]."""

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
            return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n"

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "finish_reason": finish}]

        yield event(delta({"role": "assistant", "content": ""}))
        # At most one event per STREAM_INTERVAL_S, the first piece at once, as the page streams: an event a token
        # costs the server and its client about as much CPU as the demo model spends writing the token.
        pending, sent_at = "", 0.0
        try:
            async for piece in self.pieces():
                pending += piece
                if time.monotonic() - sent_at >= STREAM_INTERVAL_S:
                    yield event(delta({"content": pending}))
                    pending, sent_at = "", time.monotonic()
        except Exception:  # the response has begun: the error is the stream's last event
            log.exception("The model failed while answering through the API (answer %s)", self.id)
            yield f"data: {json.dumps(MODEL_FAILED.body())}\n\n"
            return
        if pending:
            yield event(delta({"content": pending}))
        yield event(delta({}, self.finish_reason()), loupe=self.loupe())
        if include_usage:  # OpenAI's last chunk: no choices, the usage
            yield event([], usage=self.usage())
        yield "data: [DONE]\n\n"
