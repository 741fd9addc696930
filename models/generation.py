"""Stream answers from a loaded Qwen-VL model, one request at a time, stoppable mid-answer.

`model.generate` runs in a worker thread and hands text to the event loop through
`AsyncTextIteratorStreamer`. Requests wait in arrival order (`ArrivalQueue`) because one model
serves one generation at a time; waiters are told their place. Cancelling the consuming task
(Chainlit's Stop button) sets an event that a StoppingCriteria checks after every token, so
the worker thread ends within one decoding step, not when the answer would have ended.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import torch
from qwen_vl_utils import process_vision_info
from transformers import AsyncTextIteratorStreamer, StoppingCriteria, StoppingCriteriaList

from models.adapters import Adapter, AdapterSwitch
from models.backend import ChatTemplateTokens, Ended, OutOfMemory, SamplingSettings, Usage
from models.checkpoint import DEMO_ANSWER_TOKENS, LoadedModel


class ArrivalQueue:
    """Lets one holder at a time through, in arrival order, telling waiters how many are ahead."""

    def __init__(self) -> None:
        self._line: list[object] = []
        self._moved = asyncio.Event()

    def __len__(self) -> int:
        return len(self._line)

    @asynccontextmanager
    async def turn(self, on_wait: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        ticket = object()
        self._line.append(ticket)
        try:
            while (ahead := self._line.index(ticket)) > 0:
                moved = self._moved  # taken before on_wait, so a move during it is not missed
                if on_wait:
                    await on_wait(ahead)
                await moved.wait()
            yield
        finally:
            self._line.remove(ticket)
            self._moved.set()
            self._moved = asyncio.Event()


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Generator(ChatTemplateTokens):
    """The in-process backend (models/backend.py): owns one loaded model and serves streamed
    generations from it, in arrival order, each with the LoRA adapter it asks for (or none) in
    front of the one base model."""

    kind = "local"
    queues = True  # one model.generate at a time

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded.processor)
        self.loaded = loaded
        self.name, self.demo_reason, self.precision = loaded.name, loaded.demo_reason, loaded.precision
        self.context_length = loaded.context_length
        self.default_sampling = SamplingSettings.from_config(loaded.model.generation_config)
        if loaded.is_demo:
            self.default_sampling = replace(self.default_sampling, max_new_tokens=DEMO_ANSWER_TOKENS)
        self.queue = ArrivalQueue()
        self.adapters = AdapterSwitch(loaded.model)

    async def stream(
        self,
        messages: list[dict[str, Any]],
        sampling: SamplingSettings,
        usage: Usage | None = None,
        on_wait: Callable[[int], Awaitable[None]] | None = None,
        adapter: Adapter | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer to Qwen-format `messages` as text pieces, from the base model or `adapter`.

        Consume it inside `contextlib.aclosing` so that a cancelled consumer stops the worker
        thread at once. `usage` is filled in as the answer streams and is final on exit.
        """
        usage = usage if usage is not None else Usage()
        try:
            async with self.queue.turn(on_wait):
                started = time.perf_counter()
                stop = threading.Event()
                streamer = AsyncTextIteratorStreamer(
                    self.loaded.processor.tokenizer, skip_prompt=True, skip_special_tokens=True
                )
                worker = asyncio.ensure_future(
                    asyncio.to_thread(self._generate, messages, sampling, adapter, streamer, stop, usage)
                )
                try:
                    async for piece in streamer:
                        if usage.time_to_first_token is None:
                            usage.time_to_first_token = time.perf_counter() - started
                        if piece:
                            yield piece
                    await worker  # re-raises what the worker thread raised
                finally:
                    stop.set()
                    # The model is busy until the thread sees the event; the next request waits for it.
                    await asyncio.shield(asyncio.wait([worker]))
                    usage.duration = time.perf_counter() - started
        except BaseException as error:  # cancelled or closed early means the user stopped it
            usage.ended = Ended.by(error)
            raise

    def _generate(
        self,
        messages: list[dict[str, Any]],
        sampling: SamplingSettings,
        adapter: Adapter | None,
        streamer: AsyncTextIteratorStreamer,
        stop: threading.Event,
        usage: Usage,
    ) -> None:
        try:
            inputs = self.prepare_inputs(messages)
            usage.prompt_tokens = inputs["input_ids"].shape[1]
            if sampling.seed is not None:  # one generation at a time (the queue), so the global generator is its own
                torch.manual_seed(sampling.seed)
            with torch.inference_mode(), self.adapters.use(adapter) as model:
                output = model.generate(
                    **inputs,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=sampling.top_p if sampling.temperature > 0 else None,
                    top_k=None,
                    repetition_penalty=sampling.repetition_penalty,
                )
            usage.completion_tokens = output.shape[1] - usage.prompt_tokens
        except BaseException as error:
            streamer.end()  # unblock the consumer; the error surfaces when it awaits the worker
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if isinstance(error, torch.OutOfMemoryError):
                raise OutOfMemory(str(error)) from error
            raise

    def prepare_inputs(self, messages: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Chat template plus vision inputs, exactly as the Qwen-VL model cards prepare them (each model's own
        patch size: 14 pixels, 16 on Qwen3-VL)."""
        processor = self.loaded.processor
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _videos = process_vision_info(messages, image_patch_size=processor.image_processor.patch_size)
        inputs = processor(text=[text], images=images, padding=True, return_tensors="pt")
        return inputs.to(self.loaded.device)
