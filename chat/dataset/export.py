"""Preference data for training: DPO pairs or KTO rows, in TRL's or LLaMA-Factory's format.

    python -m chat export --format trl-dpo --out DIR [--since DATE] [--until DATE] [--adapter NAME]
                          [--user-hash-salt SALT]

chat/dataset/pairing.py decides what becomes a pair or a row; this module reads what it judges from the
database and writes the rows out. It reads a page of conversations at a time, in the order of
their ids (keyset pagination), so memory stays flat however many there are, and the same data
always exports to the same bytes. DIR receives:

    train.jsonl             one row per line (UTF-8 JSON, keys sorted)
    images/<sha256>.<ext>   every image the rows show, once: as it was uploaded, or a document page as the
                            model saw it
    README.md               the dataset card: what is in it, counts, and the pairing rules
    dataset_info.json       LLaMA-Factory formats only: the entry describing train.jsonl

The export is written next to DIR and moved into place when complete, so DIR never holds half a
dataset; it refuses a DIR that exists and is not empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Any

from PIL import Image
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tqdm import tqdm

from chat.dataset.pairing import (
    IDENTICAL,
    NEAR_DUPLICATE,
    OVER_USER_CAP,
    RULES,
    Answer,
    Comparison,
    Correction,
    Judgement,
    Label,
    Pair,
    Rating,
    Response,
    judge,
)
from chat.dataset.quality import Measures, PromptCap, Said
from chat.fair_share import UserCap
from chat.prompts import pages_prompt, system_prompt
from chat.store import schema
from chat.store.atomic import kept_secret
from chat.store.generations import BASE, Source
from models.backend import Ended
from models.control_tokens import plain_text
from models.prompt_key import prompt_key

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # conversations read per round of queries
CORRECTED_BY = "user"  # who wrote a correction, in the *_by columns
DATA_FILE = "train.jsonl"
IMAGES_DIR = "images"
# Pillow's format -> file extension, where the format's name is not the usual extension.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}
# LLaMA-Factory reads these tags in any message as media slots: text containing one cannot be represented.
LLAMAFACTORY_PLACEHOLDERS = ("<image>", "<video>", "<audio>")


class ExportError(Exception):
    """The export cannot start or finish; the message says what is wrong and what to do."""


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserTurn:
    text: str
    images: tuple[str, ...]  # content-store keys (sha256), in upload order

    def plain(self) -> UserTurn:
        return UserTurn(plain_text(self.text), self.images)


@dataclass(frozen=True)
class StoredAnswer(Answer):
    prompt_id: str | None  # None in records written before Loupe kept it: such answers are never judged
    adapter: str | None
    sources: tuple[Source, ...]  # the document pages shown with the question
    created_at: datetime
    reasons: tuple[str, ...]  # of its rating


@dataclass(frozen=True)
class Conversation:
    """What the model was shown before an answer: system prompt, earlier exchanges, the question."""

    system: str
    exchanges: tuple[tuple[UserTurn, str], ...]
    question: UserTurn

    @property
    def images(self) -> list[str]:
        """Every image, in the order the conversation shows them."""
        return [key for turn in (*(turn for turn, _ in self.exchanges), self.question) for key in turn.images]

    @cached_property
    def key(self) -> str:
        """What its near-duplicates share (pairing rule 8); the export asks for it twice per row written."""
        texts = [self.system, *(text for turn, answer in self.exchanges for text in (turn.text, answer))]
        return prompt_key([*texts, self.question.text], self.images)

    def plain(self) -> Conversation:
        """Every text as plain text (models/control_tokens.py), as the chat sent it to the model: text that
        reads as a chat-template control token would otherwise forge turns or images in training."""
        return Conversation(
            system=plain_text(self.system),
            exchanges=tuple((turn.plain(), plain_text(answer)) for turn, answer in self.exchanges),
            question=self.question.plain(),
        )


@dataclass(frozen=True)
class Judged:
    """The pairs and labels that one user message's answers gave."""

    first_answer_at: datetime
    judgement: Judgement


@dataclass
class StoredThread:
    id: str
    user_id: str | None
    turns: dict[str, UserTurn]  # user messages by step id, oldest first
    answers: dict[str, StoredAnswer]  # answers with a generation record, by step id, oldest first
    comparisons: dict[str, list[Comparison]]  # by prompt id, oldest verdict first
    corrections: dict[str, Correction]  # by the id of the answer corrected
    # What answers were shown of documents: each answer's page images by citation (the previews the
    # chat stored beside it, rendered as the model saw them), and the pages' text by (sha256, page).
    page_images: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    page_texts: dict[tuple[str, int], str] = field(default_factory=dict)

    def judged(self) -> Iterator[Judged]:
        """chat/dataset/pairing.py's judgement of each user message that has answers, oldest first."""
        finished = {a.id for a in self.answers.values() if a.ended == Ended.FINISHED and a.prompt_id in self.turns}
        siblings: dict[str | None, list[StoredAnswer]] = defaultdict(list)
        for answer in self.answers.values():
            siblings[answer.prompt_id].append(answer)
        for prompt_id in self.turns:
            if answers := siblings.get(prompt_id):
                corrections = [self.corrections[a.id] for a in answers if a.id in self.corrections]
                judgement = judge(answers, self.comparisons.get(prompt_id, []), corrections, finished)
                yield Judged(answers[0].created_at, judgement)

    def prompt(self, item: Pair | Label) -> Conversation:
        """The conversation a pair or KTO row is about: that of its answers (a pair's were shown the same)."""
        return self.conversation(item.rejected if isinstance(item, Pair) else item.response.answer_id)

    def conversation(self, answer_id: str) -> Conversation:
        answer = self.answers[answer_id]
        return Conversation(
            system=answer.system_prompt,
            exchanges=tuple((self.turns[self.answers[e].prompt_id], self.answers[e].text) for e in answer.context),
            question=self.question(answer),
        )

    def question(self, answer: StoredAnswer) -> UserTurn:
        """The question as the model got it: with the document pages it was shown, as the chat puts them
        (chat/documents/retrieval.py). A page image that is gone is the key "", which no file has."""
        asked = self.turns[answer.prompt_id]
        if not answer.sources:
            return asked
        cited = [(source.label, self.page_texts.get((source.sha256, source.page), "")) for source in answer.sources]
        shown = self.page_images.get(answer.id, {})
        pages = tuple(shown.get(source.label, "") for source in answer.sources if source.kind == "pdf")
        return UserTurn(pages_prompt(asked.text, cited), asked.images + pages)

    def text(self, response: Response) -> str:
        if response.corrected:
            return self.corrections[response.answer_id].text
        return self.answers[response.answer_id].text

    def said(self, response: Response) -> Said:
        """The text of a response and the reasons of its rating (a correction has none)."""
        return self.text(response), () if response.corrected else self.answers[response.answer_id].reasons

    def written_by(self, response: Response) -> str:
        return CORRECTED_BY if response.corrected else adapter_name(self.answers[response.answer_id].adapter)

    def adapter_group(self, answer_ids: tuple[str, ...]) -> str:
        """The adapter that wrote these answers, or the adapters joined by " + " when they differ."""
        return " + ".join(sorted({adapter_name(self.answers[answer_id].adapter) for answer_id in answer_ids}))


def adapter_name(adapter: str | None) -> str:
    return adapter or BASE


async def read_threads(
    engine: AsyncEngine, activity: str, page_size: int = PAGE_SIZE, user_id: str | None = None
) -> AsyncIterator[StoredThread]:
    """Every thread (or every one of a user's: `users.id`) with what pairing needs of it, in the order of
    thread ids, showing progress on stderr.

    Keyset pagination on the primary key: each page is the next `page_size` thread ids, and its
    rows are read by that id range, which every table's thread_id index serves directly. Memory
    holds one page, however many threads there are, and every page costs the same. (Pages in
    created_at order would need an IN list of scattered ids, which PostgreSQL answers by scanning
    the whole steps table once per page.)
    """
    async with engine.connect() as connection:
        mine = [schema.Thread.user_id == user_id] if user_id is not None else []
        total = await connection.scalar(select(func.count()).select_from(schema.Thread).where(*mine))
        query = select(schema.Thread.id, schema.Thread.user_id).where(*mine).order_by(schema.Thread.id).limit(page_size)
        with tqdm(total=total, unit=" conversations", desc=activity) as progress:
            page = (await connection.execute(query)).all()
            while page:
                for thread in await _load(connection, page, whole_range=user_id is None):
                    yield thread
                progress.update(len(page))
                page = (await connection.execute(query.where(schema.Thread.id > page[-1].id))).all()


async def _load(connection: AsyncConnection, page: list[Row], whole_range: bool = True) -> list[StoredThread]:
    """The threads of `page`, with all their turns, answers, ratings, comparisons and corrections.

    `whole_range`: the page is every thread between its first and last id (read by that range, see
    read_threads); else (one user's threads, among others') by the page's ids.
    """
    threads = {row.id: StoredThread(row.id, row.user_id, {}, {}, defaultdict(list), {}) for row in page}

    def in_page(column: Any) -> Any:
        return column.between(page[0].id, page[-1].id) if whole_range else column.in_(list(threads))

    element = schema.Element
    elements = (
        await connection.execute(
            select(element.thread_id, element.for_id, element.object_key, element.type, element.name)
            .where(in_page(element.thread_id), element.object_key.is_not(None))
            .order_by(element.created_at, element.id)
        )
    ).all()
    # A user message's attachments are its images and documents; documents reach the model as pages.
    keys = {row.object_key for row in elements}
    documents = set(await connection.scalars(select(schema.Document.sha256).where(schema.Document.sha256.in_(keys))))
    images: dict[str, list[str]] = defaultdict(list)
    for row in elements:
        if row.object_key not in documents:
            images[row.for_id].append(row.object_key)
        if row.type == "image":  # on an answer: a page preview, the page as the model saw it
            threads[row.thread_id].page_images[row.for_id][row.name] = row.object_key

    # The questions; an answer's own text is its generation record's completion, read below.
    for step in await connection.execute(
        select(schema.Step.id, schema.Step.thread_id, schema.Step.output)
        .where(in_page(schema.Step.thread_id), schema.Step.type == "user_message")
        .order_by(schema.Step.created_at, schema.Step.id)
    ):
        threads[step.thread_id].turns[step.id] = UserTurn(step.output, tuple(images.get(step.id, ())))

    # Ratings are on the run step, the answer's parent.
    ratings = {
        rating.for_id: rating
        for rating in await connection.execute(
            select(
                schema.Feedback.for_id, schema.Feedback.value, schema.Feedback.reasons, schema.Feedback.updated_at
            ).where(in_page(schema.Feedback.thread_id))
        )
    }
    generation = schema.Generation
    for row in await connection.execute(
        select(
            generation.step_id,
            generation.thread_id,
            generation.prompt_id,
            generation.context,
            generation.ended,
            generation.adapter,
            generation.completion,
            generation.sources,
            generation.created_at,
            generation.settings["system_prompt"].as_string().label("style"),
            schema.Step.parent_id.label("run_id"),
        )
        .join(schema.Step, schema.Step.id == generation.step_id)
        # Flagged records may have been written by a client before messages were checked (migration 5b1f0c2a9d47).
        .where(in_page(generation.thread_id), generation.flagged.is_(None))
        .order_by(generation.created_at, generation.step_id)
    ):
        rating = ratings.get(row.run_id)
        threads[row.thread_id].answers[row.step_id] = StoredAnswer(
            id=row.step_id,
            ended=row.ended,
            context=tuple(row.context),
            system_prompt=system_prompt(row.style),
            rating=Rating(up=rating.value == 1, at=rating.updated_at) if rating else None,
            pages=tuple((source["sha256"], source["page"]) for source in row.sources),
            prompt_id=row.prompt_id,
            text=row.completion,
            adapter=row.adapter,
            sources=tuple(Source(**source) for source in row.sources),
            created_at=row.created_at,
            reasons=tuple(rating.reasons) if rating else (),
        )

    shown = {source.sha256 for thread in threads.values() for a in thread.answers.values() for source in a.sources}
    pages = schema.DocumentPage
    page_texts = {
        (sha256, number): text
        for sha256, number, text in await connection.execute(
            select(pages.sha256, pages.number, pages.text).where(pages.sha256.in_(shown))
        )
    }
    for thread in threads.values():  # one dict for the page of threads: a document is often in several
        thread.page_texts = page_texts

    comparison = schema.Comparison
    for row in await connection.execute(
        select(
            comparison.thread_id,
            comparison.prompt_id,
            comparison.answer_a,
            comparison.answer_b,
            comparison.choice,
            comparison.updated_at,
        )
        .where(in_page(comparison.thread_id))
        .order_by(comparison.updated_at, comparison.answer_a, comparison.answer_b)
    ):
        threads[row.thread_id].comparisons[row.prompt_id].append(
            Comparison(row.answer_a, row.answer_b, row.choice, row.updated_at)
        )

    for thread_id, answer_id, text in await connection.execute(
        select(schema.Correction.thread_id, schema.Correction.answer_id, schema.Correction.text).where(
            in_page(schema.Correction.thread_id)
        )
    ):
        threads[thread_id].corrections[answer_id] = Correction(answer_id, text)
    return list(threads.values())


# Formats ------------------------------------------------------------------------------------


class Unrepresentable(ValueError):
    """The format cannot carry this row faithfully; the message is the reason, counted in the card."""


def _trl_user(turn: UserTurn) -> dict[str, Any]:
    """Images first, then the text, as the chat sends them (chat.conversation.user_turn)."""
    return {"role": "user", "content": [*({"type": "image"} for _ in turn.images), {"type": "text", "text": turn.text}]}


def _trl_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _trl_prompt(conversation: Conversation) -> list[dict[str, Any]]:
    messages = [_trl_message("system", conversation.system)]
    for turn, answer in conversation.exchanges:
        messages += [_trl_user(turn), _trl_message("assistant", answer)]
    return [*messages, _trl_user(conversation.question)]


def trl_dpo(conversation: Conversation, images: list[str], chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "images": images,
        "prompt": _trl_prompt(conversation),
        "chosen": [_trl_message("assistant", chosen)],
        "rejected": [_trl_message("assistant", rejected)],
    }


def trl_kto(conversation: Conversation, images: list[str], completion: str, label: bool) -> dict[str, Any]:
    return {
        "images": images,
        "prompt": _trl_prompt(conversation),
        "completion": [_trl_message("assistant", completion)],
        "label": label,
    }


def _sharegpt_user(turn: UserTurn) -> dict[str, str]:
    return {"from": "human", "value": "<image>" * len(turn.images) + turn.text}


def _sharegpt(conversation: Conversation, *responses: str) -> tuple[str, list[dict[str, str]]]:
    """The system prompt and the messages, ending on the question; refuses text LLaMA-Factory would misread."""
    texts = [conversation.system, conversation.question.text, *responses]
    texts += [text for turn, answer in conversation.exchanges for text in (turn.text, answer)]
    if any(tag in text for text in texts for tag in LLAMAFACTORY_PLACEHOLDERS):
        raise Unrepresentable("a message contains <image>, <video> or <audio>, which LLaMA-Factory reads as media")
    messages = []
    for turn, answer in conversation.exchanges:
        messages += [_sharegpt_user(turn), {"from": "gpt", "value": answer}]
    return conversation.system, [*messages, _sharegpt_user(conversation.question)]


def llamafactory_dpo(conversation: Conversation, images: list[str], chosen: str, rejected: str) -> dict[str, Any]:
    system, messages = _sharegpt(conversation, chosen, rejected)
    return {
        "system": system,
        "conversations": messages,
        "chosen": {"from": "gpt", "value": chosen},
        "rejected": {"from": "gpt", "value": rejected},
        "images": images,
    }


def llamafactory_kto(conversation: Conversation, images: list[str], completion: str, label: bool) -> dict[str, Any]:
    system, messages = _sharegpt(conversation, completion)
    return {
        "system": system,
        "conversations": [*messages, {"from": "gpt", "value": completion}],
        "label": label,
        "images": images,
    }


def trl_sft(conversation: Conversation, images: list[str], completion: str) -> dict[str, Any]:
    """TRL's conversational prompt-completion row: SFTTrainer learns the completion alone, not the prompt."""
    return {
        "images": images,
        "prompt": _trl_prompt(conversation),
        "completion": [_trl_message("assistant", completion)],
    }


def llamafactory_sft(conversation: Conversation, images: list[str], completion: str) -> dict[str, Any]:
    """sharegpt, ending on the answer: LLaMA-Factory's "normal example" (prompt, then one response)."""
    system, messages = _sharegpt(conversation, completion)
    return {"system": system, "conversations": [*messages, {"from": "gpt", "value": completion}], "images": images}


PAIR_FORMATS: dict[str, Callable[[Conversation, list[str], str, str], dict[str, Any]]] = {
    "trl-dpo": trl_dpo,
    "llamafactory-dpo": llamafactory_dpo,
}
LABEL_FORMATS: dict[str, Callable[[Conversation, list[str], str, bool], dict[str, Any]]] = {
    "trl-kto": trl_kto,
    "llamafactory-kto": llamafactory_kto,
}
# The answers users preferred (KTO's desirable rows: rated up, preferred in a comparison, or a correction), to
# fine-tune on as they are.
SFT_FORMATS: dict[str, Callable[[Conversation, list[str], str], dict[str, Any]]] = {
    "trl-sft": trl_sft,
    "llamafactory-sft": llamafactory_sft,
}
FORMATS = (*PAIR_FORMATS, *LABEL_FORMATS, *SFT_FORMATS)

# LLaMA-Factory's dataset_info.json entries (sharegpt formatting, default from/value/human/gpt tags).
DATASET_INFO = {
    "llamafactory-dpo": {
        "loupe_dpo": {
            "file_name": DATA_FILE,
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {
                "messages": "conversations",
                "chosen": "chosen",
                "rejected": "rejected",
                "images": "images",
                "system": "system",
            },
        }
    },
    "llamafactory-kto": {
        "loupe_kto": {
            "file_name": DATA_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "kto_tag": "label", "images": "images", "system": "system"},
        }
    },
    "llamafactory-sft": {
        "loupe_sft": {
            "file_name": DATA_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images", "system": "system"},
        }
    },
}


# Writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportRequest:
    format: str
    out: Path
    since: datetime | None = None  # naive UTC, like the database
    until: datetime | None = None
    adapter: str | None = None  # only rows judging answers of this adapter; BASE: of no adapter
    user_hash_salt: str = ""

    def outside(self, first_answer_at: datetime) -> str | None:
        """The date filter that leaves out a question first answered at `first_answer_at`, or None."""
        if self.since is not None and first_answer_at < self.since:
            return f"first answer before --since {moment(self.since)}"
        if self.until is not None and first_answer_at >= self.until:
            return f"first answer at or after --until {moment(self.until)}"
        return None


def moment(at: datetime) -> str:
    """A filter's date as it was given: the day alone at midnight, else the time too (UTC, as stored)."""
    return f"{at:%Y-%m-%d}" if at.time() == time() else f"{at:%Y-%m-%d %H:%M:%S} UTC"


SALT_FILE = "export_salt"  # in the data directory, beside the login secret and apart from every export
SALT_BYTES = 32  # random bytes: 256 bits, beyond guessing an id's pseudonym without it


def installation_salt(data_dir: Path) -> tuple[str, Path]:
    """The salt of exports that give none, and its file: made on the first export and kept, so that a user has
    one pseudonym across exports and nobody without the file can check an id against it (an unsalted sha256 of
    an id anyone knows is no pseudonym). ExportError, saying what to do, where it cannot be made or read."""
    path = data_dir / SALT_FILE
    try:
        salt = kept_secret(path, SALT_BYTES)
    except OSError as error:
        raise ExportError(
            f"Cannot make or read the export salt {path} ({error.strerror or error}). Let this user write "
            "LOUPE_DATA_DIR, or give a secret of your own with --user-hash-salt."
        ) from None
    if not salt:
        raise ExportError(f"The export salt {path} is empty. Delete it (a new one is made) or give --user-hash-salt.")
    return salt, path


def pseudonym(identifier: str, salt: str) -> str:
    return hashlib.sha256((salt + identifier).encode()).hexdigest()[:16]


@dataclass
class ExportSummary:
    format: str  # the request's
    rows: int
    by_rule: Counter[str]  # "comparison", "thumbs", ... for pairs; "thumbs, desirable", ... for KTO rows
    left_out: Counter[str]  # rows left out, by reason
    unselected: Counter[str]  # rows the request's filters (dates, adapter) left out, by filter; not in the card
    answers: int  # in the database: with `feedback`, why an export of nothing wrote nothing
    feedback: int  # ratings, comparisons and corrections in the database
    images: int
    threads: int
    users: int
    measures: Measures  # of the rows written, for the card


def admitted(
    thread: StoredThread, request: ExportRequest, cap: PromptCap, left_out: Counter[str], unselected: Counter[str]
) -> Iterator[tuple[Pair | Label, Conversation]]:
    """The thread's rows (pairs or KTO rows, as the request's format takes) that its filters select and rules 5
    and 8 keep, with their conversations; those left out are counted in `left_out` and `unselected`."""
    pairs = request.format in PAIR_FORMATS

    def selected(item: Pair | Label) -> bool:
        return request.adapter is None or thread.adapter_group(item.answers) == request.adapter

    for judged in thread.judged():
        judgement = judged.judgement
        items: list[Pair] | list[Label] = judgement.pairs if pairs else judgement.labels
        if request.format in SFT_FORMATS:
            items = [label for label in judgement.labels if label.desirable]
        if outside := request.outside(judged.first_answer_at):
            unselected[outside] += len(items)
            continue
        if pairs and (identical := sum(map(selected, judgement.identical))):
            left_out[IDENTICAL] += identical
        kept = list(filter(selected, items))
        if len(kept) < len(items):
            unselected[f"answers not all of --adapter {request.adapter}"] += len(items) - len(kept)
        for item in kept:
            conversation = thread.prompt(item)
            if cap.admit(conversation.key):
                yield item, conversation
            else:
                left_out[NEAR_DUPLICATE] += 1


async def rows_per_user(engine: AsyncEngine, request: ExportRequest) -> Counter[str]:
    """Rule 9's first pass: the rows each user's conversations give after the selection and rules 5 and 8."""
    counts: Counter[str] = Counter()
    cap = PromptCap()
    async for thread in read_threads(engine, "Counting each user's rows"):
        rows = sum(1 for _ in admitted(thread, request, cap, Counter(), Counter()))
        if thread.user_id is not None and rows:
            counts[thread.user_id] += rows
    return counts


class Exporter:
    """Writes the rows of one export into `folder`, copying each image it needs once."""

    def __init__(
        self,
        request: ExportRequest,
        folder: Path,
        image_path: Callable[[str], Path],
        rows_per_user: Counter[str] | None = None,
    ) -> None:
        self.request = request
        self.folder = folder
        self.image_path = image_path
        self.pairs = request.format in PAIR_FORMATS
        self.images: dict[str, str | None] = {}  # content key -> file in the export, None when unusable
        self.by_rule: Counter[str] = Counter()
        self.left_out: Counter[str] = Counter()
        self.unselected: Counter[str] = Counter()
        self.answers = self.feedback = 0
        self.cap = PromptCap()
        self.user_cap = UserCap(rows_per_user or Counter())
        self.measures = Measures(pairs=self.pairs)
        self.threads: set[str] = set()
        (folder / IMAGES_DIR).mkdir()
        self.rows = (folder / DATA_FILE).open("w", encoding="utf-8", newline="\n")

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exception: object) -> None:
        self.rows.close()

    def add(self, thread: StoredThread) -> None:
        """Write the rows of one thread that the request selects and the quality rules (5, 8 and 9) keep."""
        salt = self.request.user_hash_salt
        pseudonyms = {
            "thread": pseudonym(thread.id, salt),
            "user": pseudonym(thread.user_id, salt) if thread.user_id else None,
        }
        self.answers += len(thread.answers)
        self.feedback += sum(answer.rating is not None for answer in thread.answers.values()) + len(thread.corrections)
        self.feedback += sum(map(len, thread.comparisons.values()))
        for item, conversation in admitted(thread, self.request, self.cap, self.left_out, self.unselected):
            if self.user_cap.admit(thread.user_id):
                self._write(thread, item, conversation, pseudonyms)
            else:
                self.left_out[OVER_USER_CAP] += 1

    def _write(
        self, thread: StoredThread, item: Pair | Label, conversation: Conversation, pseudonyms: dict[str, str | None]
    ) -> None:
        # `outcome`: the (chosen, rejected) texts of a pair, or the (completion, label) of a KTO row, as plain text.
        if isinstance(item, Pair):
            rejected = Response(item.rejected)
            outcome: tuple[str, str] | tuple[str, bool] = (
                plain_text(thread.text(item.chosen)),
                plain_text(thread.text(rejected)),
            )
            kind = item.rule
            columns = {"chosen_by": thread.written_by(item.chosen), "rejected_by": thread.written_by(rejected)}
        else:
            outcome = (plain_text(thread.text(item.response)), item.desirable)
            kind = f"{item.rule}, {'desirable' if item.desirable else 'undesirable'}"
            columns = {"completion_by": thread.written_by(item.response)}
        images = [self._image(key) for key in conversation.images]
        if None in images:
            self.left_out["an image file is missing or unreadable"] += 1
            return
        try:
            if self.request.format in SFT_FORMATS:
                row = SFT_FORMATS[self.request.format](conversation.plain(), images, outcome[0])
            else:
                build = PAIR_FORMATS.get(self.request.format) or LABEL_FORMATS[self.request.format]
                row = build(conversation.plain(), images, *outcome)
        except Unrepresentable as reason:
            self.left_out[str(reason)] += 1
            return
        row |= {"rule": item.rule, **pseudonyms, **columns}
        self.rows.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        self.by_rule[kind] += 1
        self.threads.add(thread.id)
        if isinstance(item, Pair):
            self.measures.pair(thread.user_id, conversation.key, thread.said(item.chosen), thread.said(rejected))
        else:
            self.measures.label(thread.user_id, conversation.key, thread.said(item.response), item.desirable)

    def _image(self, key: str) -> str | None:
        if key not in self.images:
            self.images[key] = self._copy_image(key)
        return self.images[key]

    def _copy_image(self, key: str) -> str | None:
        """Copy the stored image into the export, named by its sha256 and format; None if it cannot be used."""
        try:
            source = self.image_path(key)
            with Image.open(source) as image:
                extension = EXTENSIONS.get(image.format, image.format.lower())
        except (OSError, ValueError) as error:
            log.warning("Image %s cannot be exported (%s); rows that show it are left out.", key, error)
            return None
        relative = f"{IMAGES_DIR}/{key}.{extension}"
        shutil.copyfile(source, self.folder / relative)
        return relative

    def finish(self) -> ExportSummary:
        """Count what was written, and write the card (and LLaMA-Factory's dataset_info.json) beside it."""
        summary = ExportSummary(
            format=self.request.format,
            rows=sum(self.by_rule.values()),
            by_rule=self.by_rule,
            left_out=self.left_out,
            unselected=self.unselected,
            answers=self.answers,
            feedback=self.feedback,
            images=sum(path is not None for path in self.images.values()),
            threads=len(self.threads),
            users=self.measures.users,
            measures=self.measures,
        )
        if info := DATASET_INFO.get(self.request.format):
            (self.folder / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (self.folder / "README.md").write_text(dataset_card(self.request, summary), encoding="utf-8")
        return summary


async def export(engine: AsyncEngine, image_path: Callable[[str], Path], request: ExportRequest) -> ExportSummary:
    """Write the dataset `request` asks for; `image_path` maps a content key to its file (ContentStore.path)."""
    out = request.out
    if request.format not in FORMATS:
        raise ExportError(f"Unknown format '{request.format}'; choose one of {', '.join(FORMATS)}.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder. Choose a new folder, or delete it first.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        raise ExportError(f"Cannot write beside {out} ({error.strerror}). Choose a folder you can write to.") from None
    try:
        counts = await rows_per_user(engine, request)
        with Exporter(request, folder, image_path, counts) as exporter:
            async for thread in read_threads(engine, "Exporting"):
                exporter.add(thread)
        summary = exporter.finish()
        os.replace(folder, out)  # an empty `out` is replaced; a non-empty one was refused above
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return summary


def why_nothing(summary: ExportSummary) -> str | None:
    """Why an export wrote no rows, where no filter (`unselected`) or rule (`left_out`) took them: there was no
    feedback yet, or it makes no row of the format. None where rows were written or those counts say why."""
    if summary.rows or summary.unselected or summary.left_out:
        return None
    if not summary.answers:
        return "Nothing to export yet: no conversation has an answer. Ask in the app and rate the answers, then export."
    answers = f"{summary.answers} answer{'s' * (summary.answers != 1)}"
    if not summary.feedback:
        return f"Nothing to export yet: of {answers}, none has been rated, compared or corrected. Rate them first."
    if summary.format in PAIR_FORMATS:
        need = (
            "a DPO pair needs a comparison that prefers one answer, a correction, or two answers to one question "
            "(regenerate it) rated one up and one down; --format trl-kto exports single ratings"
        )
    elif summary.format in SFT_FORMATS:
        need = (
            "an SFT row needs an answer rated up, preferred in a comparison, or corrected, in a conversation whose "
            "answers all finished"
        )
    else:
        need = "a KTO row needs a judged answer that finished, in a conversation whose earlier answers all finished"
    judged = f"{summary.feedback} judgement{'s' * (summary.feedback != 1)} (ratings, comparisons, corrections)"
    return f'Nothing to export: {judged} of {answers} make no row ({need}; docs/preference-data.md, "Pairing rules").'


# The dataset card -----------------------------------------------------------------------------

CARD_LOADING = {  # string.Template: the Python snippet is full of braces
    "trl": """\
Load it for TRL (images resolve against this folder):

```python
from datasets import Image, List, load_dataset

folder = "path/to/this/folder"
data = load_dataset("json", data_files=f"{folder}/train.jsonl", split="train")
data = data.map(lambda row: {"images": [f"{folder}/{path}" for path in row["images"]]})
data = data.cast_column("images", List(Image()))
```

Then train with `$trainer` and `processing_class` = the model's processor, `max_length=None`
(a shorter limit can cut image tokens). Columns other than the trainer's are ignored by it.
""",
    "llamafactory": """\
For LLaMA-Factory, point `dataset_dir` at this folder and set `dataset: $name`; `dataset_info.json`
maps the columns, and image paths resolve against the folder. Other columns are dropped on loading.
""",
}


def dataset_card(request: ExportRequest, summary: ExportSummary) -> str:
    """The README.md of an export: only facts of the data and the request, so it is the same every run."""
    family, trainer = request.format.split("-")
    kind = "KTO rows (completion, label)"
    if request.format in PAIR_FORMATS:
        kind = "pairs (chosen, rejected)"
    elif request.format in SFT_FORMATS:
        kind = "the answers users preferred (prompt, completion)"
    filters = [
        f"first answer at or after {request.since:%Y-%m-%d %H:%M:%S} UTC" if request.since else None,
        f"first answer before {request.until:%Y-%m-%d %H:%M:%S} UTC" if request.until else None,
        f"only answers of adapter `{request.adapter}`" if request.adapter else None,
    ]
    lines = [
        "# Loupe preference data",
        "",
        f"Format **{request.format}**: {kind} from Loupe users' feedback on Qwen-VL answers.",
        f"Selection: {'; '.join(f for f in filters if f) or 'everything'}.",
        "",
        "| | |",
        "|---|---|",
        f"| rows | {summary.rows} |",
        *(f"| rows by rule: {rule} | {count} |" for rule, count in sorted(summary.by_rule.items())),
        *(f"| rows left out: {reason} | {count} |" for reason, count in sorted(summary.left_out.items())),
        f"| images | {summary.images} |",
        f"| conversations | {summary.threads} |",
        f"| users | {summary.users} |",
        "",
        *summary.measures.markdown(),
        "## Columns",
        "",
        "- `images`: the images of the prompt, in order (`images/<sha256>.<ext>`): as uploaded, then the document"
        " pages shown with the question, as the model saw them.",
        "- `rule`: the pairing rule the row comes from (below). `thread`, `user`: pseudonyms, the first 16 hex",
        "  digits of sha256(salt + id): with `--user-hash-salt`, or the installation's own salt, kept apart from",
        "  the data (`LOUPE_DATA_DIR/export_salt`).",
        "- `chosen_by`, `rejected_by`, `completion_by`: the adapter that wrote that answer (`base`: none), or",
        "  `user` for a user's correction.",
        "- The system prompt is the text of the style the answer was generated with, as it reads now.",
        "- Text that would read as a chat-template control token (`<|im_end|>`, `<|image_pad|>`, ...) has an"
        " invisible U+200B after its `<`, as the model was shown it: it trains as the text it reads.",
        "",
        Template(CARD_LOADING[family]).substitute(trainer=f"{trainer.upper()}Trainer", name=f"loupe_{trainer}"),
        "## Pairing rules",
        "",
        RULES,
    ]
    return "\n".join(lines)
