"""Loupe's Chainlit app: thin handlers over chat.* (prompts, uploads, storage, texts) and models.*.

The model and the database engine are set up once, when Chainlit imports this module, and
shared by every chat. Migrations run and the first admin is created when the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import aclosing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import chainlit as cl
import torch
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select, Slider
from chainlit.oauth_providers import get_configured_oauth_providers
from chainlit.server import app as server
from chainlit.types import ThreadDict
from chainlit.utils import utc_now
from langchain_core.messages import AIMessage

from chat.accounts import ADMIN, auth_secret, check_password, ensure_admin
from chat.chainlit_fixes import accept_empty_uploads
from chat.conversation import (
    DEFAULT_PROMPT,
    PromptBuilder,
    PromptTooLong,
    history_from_thread,
    system_prompts,
    user_turn,
)
from chat.database import create_engine, session_factory, upgrade
from chat.datalayer import LoupeDataLayer
from chat.routes import add_routes
from chat.settings import get_settings
from chat.storage import ContentStore
from chat.texts import language_of, mark_stopped, text
from chat.uploads import ImageLimits, Upload, UploadsRejected, load_fitted_image, read_images
from models.checkpoint import load_model, pick_device
from models.generation import Generator, SamplingSettings, Usage

log = logging.getLogger("loupe")
STREAM_INTERVAL_S = 0.05  # 20 updates a second reads as smooth; fewer emits leave the CPU to the model

settings = get_settings()
max_pixels = settings.image_max_pixels(pick_device(settings.device).type)
loaded = load_model(settings.model, settings.adapter, settings.device, settings.dtype)
generator = Generator(loaded)
prompt_builder = PromptBuilder(loaded.processor, settings.min_pixels, max_pixels)
context_tokens = min(settings.context_tokens, loaded.context_length)
default_sampling = SamplingSettings.from_model(loaded.model)
image_limits = ImageLimits(
    max_files=settings.max_images_per_message,
    max_file_mb=settings.max_upload_mb,
    max_megapixels=settings.max_image_megapixels,
    min_pixels=settings.min_pixels,
    max_pixels=max_pixels,
)

# The browser enforces max_files; Chainlit's server enforces max_size_mb before our code runs,
# so it gets headroom: files between our limit and 4x it reach read_images and get a clear reason.
uploads_config = chainlit_config.features.spontaneous_file_upload
uploads_config.max_files = settings.max_images_per_message
uploads_config.max_size_mb = int(settings.max_upload_mb * 4)
accept_empty_uploads()


store = ContentStore(settings.data_dir / "files")
sessions = session_factory(create_engine(settings.database_url))
data_layer = LoupeDataLayer(sessions, store)
# Chainlit signs login tokens with this; it must be set before Chainlit checks for it.
os.environ["CHAINLIT_AUTH_SECRET"] = auth_secret(settings.data_dir)
add_routes(
    server,
    sessions,
    store,
    status=lambda: {"name": loaded.name, "adapter": loaded.adapter, "demo": loaded.is_demo},
    settle_step=data_layer.settle_step,
)


@cl.data_layer
def use_loupe_data_layer() -> LoupeDataLayer:
    return data_layer


@cl.on_app_startup
async def prepare_database() -> None:
    await asyncio.to_thread(upgrade, settings.database_url)
    if password := await ensure_admin(sessions, settings.admin_password):
        print(f"\n  Loupe: first run, created user '{ADMIN}' with password: {password}\n", flush=True)


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    return cl.User(identifier=username) if await check_password(sessions, username, password) else None


if settings.trusted_user_header:

    @cl.header_auth_callback
    async def header_login(headers: Any) -> cl.User | None:
        """Behind a proxy that authenticates users and names them in a header."""
        identifier = headers.get(settings.trusted_user_header)
        return cl.User(identifier=identifier) if identifier else None


if get_configured_oauth_providers():  # Chainlit's OAUTH_<PROVIDER>_* environment variables

    @cl.oauth_callback
    async def oauth_login(
        provider_id: str, token: str, raw_user_data: dict[str, str], default_user: cl.User, id_token: str | None
    ) -> cl.User | None:
        """Anyone the configured provider signs in gets an account, named as the provider names them."""
        return default_user


def session_language() -> str:
    return language_of(cl.context.session.language)


@cl.on_chat_start
async def start() -> None:
    cl.user_session.set("history", [])
    language = session_language()
    cl.user_session.set("chat_settings", await settings_panel(language, {}).send())
    if loaded.is_demo:
        await cl.Message(content=text("demo_notice", language, reason=loaded.demo_reason)).send()


@cl.on_chat_resume
async def resume(thread: ThreadDict) -> None:
    """Restore the model's history, with its images, and the chat settings the thread last used."""
    images: dict[str, list] = {}
    for element in thread.get("elements") or []:
        if element.get("objectKey") and element.get("forId"):
            images.setdefault(element["forId"], []).append(element["objectKey"])

    def images_of(step_id: str) -> list:
        return [load_fitted_image(store.path(key), image_limits) for key in images.get(step_id, [])]

    history = await asyncio.to_thread(history_from_thread, thread["steps"], images_of)
    cl.user_session.set("history", history)
    stored = (thread.get("metadata") or {}).get("chat_settings") or {}
    cl.user_session.set("chat_settings", await settings_panel(session_language(), stored).send())


@cl.on_settings_update
async def update_settings(values: dict[str, Any]) -> None:
    cl.user_session.set("chat_settings", {**(cl.user_session.get("chat_settings") or {}), **values})


def settings_panel(language: str, chosen: dict[str, Any]) -> cl.ChatSettings:
    """The settings panel, showing `chosen` values where there are some, else the model's defaults."""
    defaults = {**asdict(default_sampling), "system_prompt": DEFAULT_PROMPT, **chosen}
    return cl.ChatSettings(
        [
            Select(
                id="system_prompt",
                label=text("setting_prompt", language),
                values=list(system_prompts()),
                initial_value=defaults["system_prompt"],
            ),
            Slider(
                id="temperature",
                label=text("setting_temperature", language),
                initial=defaults["temperature"],
                min=0,
                max=2,
                step=0.05,
            ),
            Slider(
                id="top_p", label=text("setting_top_p", language), initial=defaults["top_p"], min=0.05, max=1, step=0.05
            ),
            Slider(
                id="max_new_tokens",
                label=text("setting_max_new_tokens", language),
                initial=defaults["max_new_tokens"],
                min=16,
                max=4096,
                step=16,
            ),
            Slider(
                id="repetition_penalty",
                label=text("setting_repetition_penalty", language),
                initial=defaults["repetition_penalty"],
                min=1,
                max=2,
                step=0.05,
            ),
        ]
    )


@cl.on_message
async def answer(message: cl.Message) -> None:
    language = session_language()
    uploads = [Upload(element.name, Path(element.path)) for element in message.elements if element.path]
    try:
        images = await asyncio.to_thread(read_images, uploads, image_limits, language)
    except UploadsRejected as rejected:
        await cl.Message(content=str(rejected)).send()
        return
    if not message.content.strip() and not images:
        await cl.Message(content=text("empty_message", language)).send()
        return

    chosen = cl.user_session.get("chat_settings") or {}
    sampling = SamplingSettings(
        temperature=float(chosen.get("temperature", default_sampling.temperature)),
        top_p=float(chosen.get("top_p", default_sampling.top_p)),
        max_new_tokens=int(chosen.get("max_new_tokens", default_sampling.max_new_tokens)),
        repetition_penalty=float(chosen.get("repetition_penalty", default_sampling.repetition_penalty)),
    )
    prompt_name = chosen.get("system_prompt", DEFAULT_PROMPT)
    system_prompt = system_prompts().get(prompt_name) or system_prompts()[DEFAULT_PROMPT]
    # The thread remembers its settings, so a resumed chat continues with them.
    await data_layer.update_thread(cl.context.session.thread_id, metadata={"chat_settings": chosen})
    history = cl.user_session.get("history")
    turn = user_turn(message.content, images)
    try:
        prompt = prompt_builder.build(system_prompt, [*history, turn], context_tokens - sampling.max_new_tokens)
    except PromptTooLong as too_long:
        await cl.Message(
            content=text("prompt_too_long", language, needed=too_long.needed, budget=too_long.budget)
        ).send()
        return

    reply, usage, queue_notice = cl.Message(content=""), Usage(), QueueNotice(language)
    stream = BatchedStream(reply)
    try:
        async with aclosing(generator.stream(prompt, sampling, usage, queue_notice.show)) as pieces:
            async for piece in pieces:
                await queue_notice.clear()
                await stream.add(piece)
    except Exception as error:
        log.exception("Generation failed")
        failure = cl.ErrorMessage(content=explain_failure(error, language))
        failure.metadata = {"generation": generation_record(prompt_name, sampling, usage)}
        await failure.send()
    finally:  # also runs on Stop, which cancels this task; Chainlit then posts its own notice
        await queue_notice.clear()
        await stream.flush()
        if usage.ended == "finished" or (usage.ended == "stopped" and reply.content):
            history.extend([turn, AIMessage(content=reply.content)])
            if usage.ended == "stopped":
                reply.content = mark_stopped(reply.content, language)
            reply.metadata = {"ended": usage.ended, "generation": generation_record(prompt_name, sampling, usage)}
            await reply.send()


def generation_record(prompt_name: str, sampling: SamplingSettings, usage: Usage) -> dict[str, Any]:
    """What the data layer stores in `generations` beside the answer's message."""
    return {
        "model": loaded.name,
        "adapter": loaded.adapter,
        "adapter_version": loaded.adapter_version,
        "settings": {**asdict(sampling), "system_prompt": prompt_name},
        **asdict(usage),
    }


class BatchedStream:
    """Streams text to the browser at most once per STREAM_INTERVAL_S, the first piece at once.

    One socket.io emit per token costs the server about as much CPU as a small model spends
    generating it, so emitting each token would slow the answer down (bench/RESULTS.md).
    """

    def __init__(self, message: cl.Message) -> None:
        self.message = message
        self.pending = ""
        self.sent_at = 0.0

    async def add(self, piece: str) -> None:
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
            notice = cl.Message(content=content)
            notice.created_at = utc_now()
            self.step = dict(notice.to_dict())
            await cl.context.emitter.send_step(self.step)
        else:
            self.step["output"] = content
            await cl.context.emitter.update_step(self.step)

    async def clear(self) -> None:
        if self.step is not None:
            await cl.context.emitter.delete_step(self.step)
            self.step = None


def explain_failure(error: Exception, language: str) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return text("out_of_memory", language)
    return text("model_error", language, error=str(error) or type(error).__name__)
