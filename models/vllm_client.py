"""The vLLM backend: Loupe as a thin client of a vLLM server's OpenAI-compatible API (models/backend.py).

A serving engine batches many streams at once, so requests go to the server as they come: there is
no queue here, and back-pressure is the server's. Stop closes the HTTP stream, which makes vLLM
abort the request and free its sequence. Prompts are still built and counted here, exactly, with
the checkpoint's own tokenizer and chat template (LOUPE_MODEL names the checkpoint the server
serves); the context length is the server's (`max_model_len`). Images travel as PNG data URLs,
already checked and fitted to Loupe's pixel budget. LoRA adapters are registered with the server
under a name that includes their version, so a retrained adapter is a new name, and the old one is
unloaded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
from transformers import GenerationConfig, ProcessorMixin

from models.adapters import Adapter
from models.backend import AdapterRefused, BackendUnavailable, ChatTemplateTokens, Ended, SamplingSettings, Usage
from models.images import ImageBudget

log = logging.getLogger(__name__)

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"  # `make vllm` installs it
# LoRA ranks the server accepts: training's default (16) and up to 64; a higher-rank adapter is refused, saying so.
MAX_LORA_RANK = 64
MAX_LORAS = 4  # adapters the server keeps on the device at once (the arena uses two)
CONNECT_TIMEOUT_S = 10  # a server that takes longer to accept a connection is down, not busy
# How long a stream may wait for its next piece: a busy server's queue plus one prefill of a long prompt.
READ_TIMEOUT_S = 300
# How vLLM's engine wraps a worker's reason for refusing an adapter (vllm/v1/executor/multiproc_executor.py).
WORKER_ERROR = re.compile(r"Worker failed with error '(?P<reason>.+?)', please check")
# The server cannot take the request now (refused, overloaded, timing out, or gone mid-stream): the user is
# told to try again. Only the SDK's own classes: it wraps its HTTP stack's errors, mid-stream ones included,
# so a change inside that stack (httpx became httpx2) cannot turn an outage into a crash here.
UNAVAILABLE = (
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.RateLimitError,
    openai.InternalServerError,
)


def to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """A Qwen-format message (conversation.to_qwen) in the OpenAI chat format, images as PNG data URLs."""
    content = []
    for block in message["content"]:
        if block["type"] == "image":
            png = io.BytesIO()
            block["image"].save(png, "PNG")
            url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        else:
            content.append({"type": "text", "text": block["text"]})
    return {"role": message["role"], "content": content}


class VllmBackend(ChatTemplateTokens):
    kind = "vllm"
    queues = False  # the server batches concurrent requests

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        served_model: str,
        processor: ProcessorMixin,
        context_length: int,
        default_sampling: SamplingSettings,
    ) -> None:
        super().__init__(processor)
        self.client = client
        self.served_model = served_model
        self.name = served_model
        self.demo_reason = None
        self.precision = None  # the server's --dtype
        self.context_length = context_length
        self.default_sampling = default_sampling
        self.registered: dict[str, str] = {}  # adapter name -> the name it is served under (with its version)
        self.registering = asyncio.Lock()

    @classmethod
    async def connect(
        cls, url: str, api_key: str | None, served_model: str, checkpoint: str, processor: ProcessorMixin
    ) -> VllmBackend:
        """Ask the server at `url` (ending in /v1) what it serves and how long its context is.

        Raises BackendUnavailable, saying what to fix, when it does not answer or does not serve `served_model`.
        """
        client = openai.AsyncOpenAI(
            base_url=url,
            api_key=api_key or "none",  # vLLM checks the key only when started with --api-key
            max_retries=0,  # a retried request would be answered twice; the user can ask again
            timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        try:
            served = {model.id: model async for model in client.models.list()}
        except UNAVAILABLE as error:
            raise BackendUnavailable(
                f"no vLLM server answers at {url} ({error}); start one with `make vllm`"
            ) from error
        if served_model not in served:
            names = ", ".join(served) or "none"
            raise BackendUnavailable(f"the vLLM server at {url} serves {names}, not LOUPE_VLLM_MODEL={served_model}")
        context_length = served[served_model].max_model_len  # vLLM's addition to the OpenAI model card
        try:
            defaults = GenerationConfig.from_pretrained(checkpoint)
        except OSError:  # a checkpoint without generation_config.json
            defaults = GenerationConfig()
        return cls(client, served_model, processor, context_length, SamplingSettings.from_config(defaults))

    async def stream(
        self,
        messages: list[dict[str, Any]],
        sampling: SamplingSettings,
        usage: Usage | None = None,
        on_wait: Callable[[int], Awaitable[None]] | None = None,
        adapter: Adapter | None = None,
    ) -> AsyncIterator[str]:
        usage = usage if usage is not None else Usage()
        started = time.perf_counter()
        try:
            request = {
                "messages": [to_openai(message) for message in messages],
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": sampling.temperature,  # 0 is greedy on vLLM too
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "extra_body": {"repetition_penalty": sampling.repetition_penalty},
                **({"seed": sampling.seed} if sampling.seed is not None else {}),
            }
            try:
                stream = await self.client.chat.completions.create(model=await self.served_name(adapter), **request)
            except openai.NotFoundError:
                if adapter is None:
                    raise
                self.registered.pop(adapter.name, None)  # a restarted server forgot it: register it again
                stream = await self.client.chat.completions.create(model=await self.served_name(adapter), **request)
            async with stream:  # leaving it closes the connection, and vLLM aborts the request
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage.prompt_tokens = chunk.usage.prompt_tokens
                        usage.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if piece := choice.delta.content:
                            if usage.time_to_first_token is None:
                                usage.time_to_first_token = time.perf_counter() - started
                            yield piece
        except BaseException as error:
            usage.ended = Ended.by(error)
            if isinstance(error, UNAVAILABLE):
                raise BackendUnavailable(str(error)) from error
            raise
        finally:
            usage.duration = time.perf_counter() - started

    async def served_name(self, adapter: Adapter | None) -> str:
        """The model name a request for `adapter` goes to, registering this version of it first if need be
        (unless the server has it already, e.g. from before Loupe restarted) and unloading the one it replaces."""
        if adapter is None:
            return self.served_model
        name = f"{adapter.name}-{adapter.version}"
        async with self.registering:  # two chats asking for a new adapter at once register it once
            if self.registered.get(adapter.name) != name:
                if name not in {model.id async for model in self.client.models.list()}:
                    await self._admin(
                        "load_lora_adapter", {"lora_name": name, "lora_path": str(adapter.path.resolve())}
                    )
                if (old := self.registered.get(adapter.name)) is not None:
                    await self._admin("unload_lora_adapter", {"lora_name": old})
                self.registered[adapter.name] = name
        return name

    async def _admin(self, action: str, body: dict[str, str]) -> None:
        """vLLM's runtime LoRA endpoints (they need VLLM_ALLOW_RUNTIME_LORA_UPDATING on the server).

        Raises AdapterRefused with the server's reason (a rank above --max-lora-rank, another base model...).
        """
        try:
            answer = await self.client.post(f"/{action}", body=body, cast_to=str)
        except openai.APIStatusError as error:
            reason = error.body.get("message", error.message) if isinstance(error.body, dict) else error.message
            if worker_error := WORKER_ERROR.search(reason):  # the reason inside "...please check the stack trace"
                reason = worker_error["reason"]
            raise AdapterRefused(f"{body['lora_name']}: {reason.rstrip('.')}") from error
        log.info("vLLM %s %s: %s", action, body["lora_name"], answer.strip())


def server_command(
    model: str,
    served_name: str,
    url: str,
    max_model_len: int,
    max_images: int,
    budget: ImageBudget,
    api_key: str | None = None,
    on_gpu: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start a vLLM server the way Loupe talks to it (`make vllm`).

    It serves `model` (Loupe's checkpoint) under `served_name` at `url`'s host and port, with runtime
    LoRA loading, as many images per prompt as Loupe sends, and Loupe's pixel budget for each image.
    """
    address = urlsplit(url)
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    command += ["--served-model-name", served_name, "--host", address.hostname or "127.0.0.1"]
    command += ["--port", str(address.port or 8000), "--max-model-len", str(max_model_len)]
    command += ["--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK), "--max-loras", str(MAX_LORAS)]
    command += ["--limit-mm-per-prompt", json.dumps({"image": max_images})]
    command += ["--mm-processor-kwargs", json.dumps({"min_pixels": budget.min_pixels, "max_pixels": budget.max_pixels})]
    if api_key:
        command += ["--api-key", api_key]
    environment = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}  # /v1/load_lora_adapter, for newly trained adapters
    if not on_gpu:
        environment["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB for the KV cache; vLLM's CPU default takes far more
    return command, environment
