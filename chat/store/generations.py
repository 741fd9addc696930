"""The generation record: what the model was asked, how, what it wrote and what it cost.

The app builds one for every answer and sends it in the answer step's `metadata.generation`
(so the thread's owner gets it back with the thread); the data layer writes the same record
into the `generations` table in the step's transaction. `completion` is the text exactly as the
model wrote it: the page shows the answer decorated (a label such as "Answer 2 of 2", a stop
marker), and the history and the export read this instead, so no reader depends on UI strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from models.backend import Ended

BASE = "base"  # how battles, exported rows, filters and the leaderboard name the model without an adapter
# What an arena answer's record keeps from the browser: who wrote it (the reveal message says so after the vote).
CONTENDER_FIELDS = ("adapter", "adapter_version")


@dataclass(frozen=True)
class Source:
    """A document page an answer was shown (chat/documents/retrieval.py), as its record stores it."""

    name: str  # the document's name in its owner's library
    sha256: str  # the document's content key
    page: int  # 1-based
    kind: str  # pdf, text: a PDF's pages are "p. N", a text file's are "part N"

    @property
    def label(self) -> str:
        """How the model is told to cite it, and how the page shows it: "datasheet.pdf, p. 14"."""
        if self.kind == "pdf":
            return f"{self.name}, p. {self.page}"
        return self.name if self.page == 1 else f"{self.name}, part {self.page}"


@dataclass
class GenerationRecord:
    model: str
    prompt_id: str | None  # the user message answered
    completion: str  # as the model wrote it
    prompt_tokens: int
    completion_tokens: int
    duration: float
    ended: Ended
    time_to_first_token: float | None = None
    backend: str | None = None  # models.backend: "local" or "vllm" (None only in records made by hand)
    adapter: str | None = None
    adapter_version: str | None = None
    context: list[str] = field(default_factory=list)  # the earlier answers the model was shown, oldest first
    settings: dict[str, Any] = field(default_factory=dict)  # sampling settings and the system prompt's name
    # The document pages the model was shown, as Source fields: {"name", "sha256", "page", "kind"}
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, record: dict[str, Any]) -> GenerationRecord:
        """The record from an answer step's metadata; KeyError if a required field is missing."""
        return cls(
            model=record["model"],
            prompt_id=record.get("prompt_id"),
            completion=record["completion"],
            prompt_tokens=record["prompt_tokens"],
            completion_tokens=record["completion_tokens"],
            duration=record["duration"],
            ended=Ended(record["ended"]),
            time_to_first_token=record.get("time_to_first_token"),
            backend=record.get("backend"),
            adapter=record.get("adapter"),
            adapter_version=record.get("adapter_version"),
            context=record.get("context", []),
            settings=record.get("settings", {}),
            sources=record.get("sources", []),
        )


def as_the_browser_sees_it(step: dict[str, Any]) -> dict[str, Any]:
    """A step to send to its owner's browser: an arena answer (`metadata.blind`) without its contender, so
    that a vote cannot be cast knowing who is who; any other step as it is. The stored step keeps everything."""
    metadata = step.get("metadata") or {}
    if not metadata.get("blind") or not isinstance(metadata.get("generation"), dict):
        return step
    record = {key: value for key, value in metadata["generation"].items() if key not in CONTENDER_FIELDS}
    return {**step, "metadata": {**metadata, "generation": record}}
