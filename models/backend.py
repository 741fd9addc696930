"""The seam between Loupe and whatever writes its answers: what a generation backend must offer.

The chat needs little from a model: stream an answer to Qwen-format messages with sampling
settings and an optional LoRA adapter, fill in what it cost, and stop when the consuming task is
cancelled (Stop). To fit prompts into the context it needs the context length and exact token
counts, and to show a queue it needs to know whether requests wait in line. Today's backend is
the in-process transformers model (models/generation.py); a serving engine can sit behind the
same protocol, and the app and the prompt builder know only this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from models.adapters import Adapter


class Ended(StrEnum):
    """How a generation ended; stored as its value with every answer."""

    FINISHED = "finished"  # the model ended it (end of turn, or max new tokens)
    STOPPED = "stopped"  # the user pressed Stop, or the consumer went away
    ERROR = "error"  # the backend failed
    # Never the end of a generation that ran to its end: what an answer is stored as while it streams, so one
    # whose server was killed mid-answer is kept, and known for what it is (chat/ui/answers.py).
    INTERRUPTED = "interrupted"

    @classmethod
    def by(cls, error: BaseException) -> Ended:
        """How a generation that `error` ended did end: an exception is a failure; a cancellation or
        a consumer closing the stream (BaseException only) is the user stopping it."""
        return cls.ERROR if isinstance(error, Exception) else cls.STOPPED


class OutOfMemory(RuntimeError):
    """The backend ran out of memory for this request (the user can ask for less: fewer images, a shorter chat)."""


class AdapterRefused(RuntimeError):
    """The backend cannot serve this LoRA adapter; the message says why (e.g. its rank, or another base model)."""


class BackendUnavailable(RuntimeError):
    """The backend cannot take requests now (a model server down, overloaded or timing out): try again later."""


@dataclass
class SamplingSettings:
    temperature: float  # 0 means greedy
    top_p: float
    max_new_tokens: int
    repetition_penalty: float
    seed: int | None = None  # the same seed, prompt and settings sample the same answer (an API call's `seed`)

    @classmethod
    def from_config(cls, config: Any) -> SamplingSettings:
        """A checkpoint's own defaults (its transformers GenerationConfig), with sensible values where it has none."""
        return cls(
            temperature=config.temperature if config.temperature is not None else 0.7,
            top_p=config.top_p if config.top_p is not None else 0.8,
            max_new_tokens=config.max_new_tokens or 1024,
            repetition_penalty=config.repetition_penalty or 1.05,
        )


@dataclass
class Usage:
    """What one generation cost and how it ended; filled in while the answer streams."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None
    duration: float = 0.0
    ended: Ended = Ended.FINISHED


class TokenCounter(Protocol):
    def count_tokens(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> int:
        """Tokens of Qwen-format `messages` through the chat template, each image as one placeholder token."""
        ...


@dataclass(frozen=True)
class DemoReason:
    """Why the demo model (random weights) stands in for the model asked for: a `code` a page says in its own
    language ("asked": LOUPE_MODEL is "demo"; "unreachable": not on this machine, and the hub cannot be reached),
    the `model` asked for, and the error's `detail` for the log only (str() is the log's English sentence)."""

    code: str
    model: str = ""
    detail: str = ""

    def __str__(self) -> str:
        if self.code == "asked":
            return "LOUPE_MODEL is set to 'demo'"
        return f"'{self.model}' is not on this machine and the model hub is unreachable ({self.detail})"


class Backend(TokenCounter, Protocol):
    kind: str  # which backend: "local" (in this process) or "vllm"; recorded with every answer
    name: str  # the model's name (as served), recorded with every answer
    demo_reason: DemoReason | None  # why a demo model with random weights serves, if one does
    precision: str | None  # what the model computes in, and why; None where a server decides it
    context_length: int  # prompt plus answer, in tokens
    default_sampling: SamplingSettings  # the model's own generation defaults
    queues: bool  # whether requests wait in line for their turn (the chat then shows their place)
    processor: ProcessorMixin  # the checkpoint's tokenizer, chat template and image processor

    def stream(
        self,
        messages: list[dict[str, Any]],
        sampling: SamplingSettings,
        usage: Usage | None = None,
        on_wait: Callable[[int], Awaitable[None]] | None = None,
        adapter: Adapter | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer as text pieces; consume it inside `contextlib.aclosing`, so that a
        cancelled consumer stops the generation at once. `usage` is final when the stream ends.
        `on_wait(ahead)` is awaited while the request waits behind `ahead` others. Raises OutOfMemory
        when the request does not fit in the backend's memory."""
        ...


class ChatTemplateTokens:
    """Counts prompt tokens exactly as the model will see them: the processor's chat template and tokenizer."""

    def __init__(self, processor: ProcessorMixin) -> None:
        self.processor = processor

    def count_tokens(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> int:
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return len(self.processor.tokenizer(text)["input_ids"])
