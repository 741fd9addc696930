"""Loupe's Chainlit app: thin handlers over chat.* (prompts, uploads, texts) and models.*.

The model is loaded once, when Chainlit imports this module, and shared by every chat.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from pathlib import Path
from typing import Any

import chainlit as cl
import torch
from chainlit.config import config as chainlit_config
from chainlit.input_widget import Select, Slider
from chainlit.server import app as server
from langchain_core.messages import AIMessage

from chat.chainlit_fixes import accept_empty_uploads
from chat.conversation import DEFAULT_PROMPT, PromptBuilder, PromptTooLong, system_prompts, user_turn
from chat.settings import get_settings
from chat.texts import language_of, mark_stopped, text
from chat.uploads import ImageLimits, Upload, UploadsRejected, read_images
from models.checkpoint import load_model, pick_device
from models.generation import Generator, SamplingSettings, Usage

log = logging.getLogger("loupe")

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


@server.get("/loupe/model")
async def model_status() -> dict[str, Any]:
    """Read by public/loupe.js to show the permanent demo-model banner."""
    return {"name": loaded.name, "adapter": loaded.adapter, "demo": loaded.is_demo}


# Chainlit serves its frontend from a catch-all route; ours must come first to be reachable.
server.router.routes.insert(0, server.router.routes.pop())


def session_language() -> str:
    return language_of(cl.context.session.language)


@cl.on_chat_start
async def start() -> None:
    cl.user_session.set("history", [])
    language = session_language()
    panel = await settings_panel(language).send()
    cl.user_session.set("chat_settings", panel)
    if loaded.is_demo:
        await cl.Message(content=text("demo_notice", language, reason=loaded.demo_reason)).send()


@cl.on_settings_update
async def update_settings(values: dict[str, Any]) -> None:
    cl.user_session.set("chat_settings", values)


def settings_panel(language: str) -> cl.ChatSettings:
    defaults = default_sampling
    return cl.ChatSettings(
        [
            Select(
                id="system_prompt",
                label=text("setting_prompt", language),
                values=list(system_prompts()),
                initial_value=DEFAULT_PROMPT,
            ),
            Slider(
                id="temperature",
                label=text("setting_temperature", language),
                initial=defaults.temperature,
                min=0,
                max=2,
                step=0.05,
            ),
            Slider(
                id="top_p", label=text("setting_top_p", language), initial=defaults.top_p, min=0.05, max=1, step=0.05
            ),
            Slider(
                id="max_new_tokens",
                label=text("setting_max_new_tokens", language),
                initial=defaults.max_new_tokens,
                min=16,
                max=4096,
                step=16,
            ),
            Slider(
                id="repetition_penalty",
                label=text("setting_repetition_penalty", language),
                initial=defaults.repetition_penalty,
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
    system_prompt = system_prompts().get(chosen.get("system_prompt", DEFAULT_PROMPT), DEFAULT_PROMPT)
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
    try:
        async with aclosing(generator.stream(prompt, sampling, usage, queue_notice.show)) as pieces:
            async for piece in pieces:
                await queue_notice.clear()
                await reply.stream_token(piece)
    except Exception as error:
        log.exception("Generation failed")
        await cl.ErrorMessage(content=explain_failure(error, language)).send()
    finally:  # also runs on Stop, which cancels this task; Chainlit then posts its own notice
        await queue_notice.clear()
        if usage.ended == "finished" or (usage.ended == "stopped" and reply.content):
            history.extend([turn, AIMessage(content=reply.content)])
            if usage.ended == "stopped":
                reply.content = mark_stopped(reply.content, language)
            reply.metadata = {"ended": usage.ended}
            await reply.send()


class QueueNotice:
    """A message telling a waiting user their place in the model's queue, removed when served."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.message: cl.Message | None = None

    async def show(self, ahead: int) -> None:
        content = text("queued", self.language, ahead=ahead)
        if self.message is None:
            self.message = cl.Message(content=content)
            await self.message.send()
        else:
            self.message.content = content
            await self.message.update()

    async def clear(self) -> None:
        if self.message is not None:
            await self.message.remove()
            self.message = None


def explain_failure(error: Exception, language: str) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return text("out_of_memory", language)
    return text("model_error", language, error=str(error) or type(error).__name__)
