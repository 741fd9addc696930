"""Loupe's tables, as SQLAlchemy 2 ORM classes. migrations/ must produce exactly this schema.

Chainlit's own concepts (users, threads, steps, elements, feedback) keep Chainlit's field names
in snake_case. The rest is ours: `generations` holds one record per assistant answer (which
model and adapter wrote it, with which settings, at what cost, how it ended, and which prompt and
earlier answers it continued from); `comparisons` and `corrections` are the user's explicit
preferences between answers, which chat/dataset/pairing.py turns into training pairs; `battles` are
the arena's blind A/B battles between adapters, which chat/arena/leaderboard.py ranks; `documents` are the PDFs
and text files users attach, page by page, and `library` says whose they are. `limit_records` and
`pending_uploads` are what every Loupe process on the database counts its limits with (chat/store/limits.py);
`api_keys` are the keys programs call Loupe's API with, each as its user (chat/store/keys.py).
Times are naive UTC, but for the limits' times, which are the database's clock in Unix seconds (the rules in
chat/ui/limits.py count in seconds); JSON columns are portable between SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    identifier: Mapped[str] = mapped_column(String(255), unique=True)
    # None for users who sign in through a header or OAuth provider.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # Signed into every login token (chat/store/logins.py); raised by logout and password changes,
    # which revokes every token issued before.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime]


class Thread(Base):
    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Null until Chainlit tells us the owner: a step can arrive before its thread (see datalayer).
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime]


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_thread_created", "thread_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"))
    parent_id: Mapped[str | None] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    type: Mapped[str] = mapped_column(String(32))
    input: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    tags: Mapped[list[str] | None] = mapped_column(JSON)
    # Chainlit's display options, stored so history renders as it did live.
    show_input: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[str | None] = mapped_column(String(32))
    default_open: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_collapse: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    start: Mapped[datetime | None]
    end: Mapped[datetime | None]


class Element(Base):
    __tablename__ = "elements"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    for_id: Mapped[str | None] = mapped_column(String(36), index=True)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(Text)
    mime: Mapped[str | None] = mapped_column(String(255))
    display: Mapped[str] = mapped_column(String(16), default="inline")
    size: Mapped[str | None] = mapped_column(String(16))
    # sha256 of the content in Loupe's image store (chat/store/files.py); None for elements without a file.
    object_key: Mapped[str | None] = mapped_column(String(64), index=True)
    props: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class Feedback(Base):
    __tablename__ = "feedbacks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The step Chainlit rates: the run ("on_message") step, parent of the assistant message it
    # answered with. One rating per step; a re-vote updates it.
    for_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), unique=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    value: Mapped[int] = mapped_column(Integer)  # 1 thumbs up, 0 thumbs down
    comment: Mapped[str | None] = mapped_column(Text)
    # Reason codes the user ticked (LOUPE_REASONS_UP / LOUPE_REASONS_DOWN); cleared when the thumb flips.
    reasons: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Generation(Base):
    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), unique=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    # The user message this answers. Regenerated answers share it: they are siblings.
    prompt_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # The earlier answers (step ids, oldest first) whose turns the model was shown before the
    # prompt: with their user messages they are the conversation this answer continued.
    context: Mapped[list[str]] = mapped_column(default=list)
    model: Mapped[str] = mapped_column(String(255))
    backend: Mapped[str | None] = mapped_column(String(16))  # models.backend: local, vllm
    adapter: Mapped[str | None] = mapped_column(String(255))
    adapter_version: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The document pages the model was shown with the prompt (chat/documents/retrieval.py, Source).
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    time_to_first_token: Mapped[float | None] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    ended: Mapped[str] = mapped_column(String(16))  # models.backend.Ended: finished, stopped, error
    # The answer as the model wrote it; the step's output is how the page shows it (chat/store/generations.py).
    completion: Mapped[str] = mapped_column(Text)
    # Why this record may not be the server's: set by migration 5b1f0c2a9d47 for records written
    # before client messages were checked (a client could then store one). Flagged records are not exported.
    flagged: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class Comparison(Base):
    """The user's verdict on two answers to one prompt; a new verdict on the same two replaces it."""

    __tablename__ = "comparisons"
    __table_args__ = (UniqueConstraint("answer_a", "answer_b"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    answer_a: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))  # the earlier answer
    answer_b: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    choice: Mapped[str] = mapped_column(String(16))  # a, b, tie, both_bad
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Correction(Base):
    """The answer the user wanted instead of `answer_id`, written by them; a new one replaces it."""

    __tablename__ = "corrections"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    answer_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Battle(Base):
    """A blind A/B battle between two contenders (adapters, or the base model as "base") on one prompt.

    The arena records it when both answers are in (chat/ui/arena.py), before anyone could vote; the
    user's vote settles it, once. A vote names no battle of its own: nothing else makes a battle.
    """

    __tablename__ = "battles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    answer_a: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), unique=True)
    answer_b: Mapped[str] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    contender_a: Mapped[str] = mapped_column(String(255), index=True)
    contender_b: Mapped[str] = mapped_column(String(255), index=True)
    session_id: Mapped[str | None] = mapped_column(String(36))  # the chat session it was held in
    # a, b, tie, both_bad; None until the vote. Battles voted before e6b8d2f4a1c3 could be voted again after
    # the reveal: `choice` is their latest vote, `blind_choice` the first, cast blind, which the leaderboard counts.
    choice: Mapped[str | None] = mapped_column(String(16))
    blind_choice: Mapped[str | None] = mapped_column(String(16))
    # Why it does not count whatever its vote: set by migration e6b8d2f4a1c3 on battles no arena held.
    flagged: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]  # when the arena held it (before e6b8d2f4a1c3: when it was voted)
    voted_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


# Documents --------------------------------------------------------------------------------------
# A document is its content: ingested once per sha256 (its key in the content store), whoever
# uploads it; a user reaches it only through their own library. Pages are searched through
# `document_pages.terms` (chat/store/terms.py), indexed by each database's own full-text engine:
# on SQLite an FTS5 table over that column, on PostgreSQL a GIN index of its tsvector. Both are made
# by the migration and named PAGE_SEARCH..., which schema comparisons leave alone.
PAGE_SEARCH = "page_search"


def is_orm_object(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Alembic's include_name: everything but the full-text search objects, which no ORM class describes."""
    return not (type_ in ("table", "index") and (name or "").startswith(PAGE_SEARCH))


class Document(Base):
    __tablename__ = "documents"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # pdf, text
    page_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class DocumentPage(Base):
    """One page: its text layer (empty on a scanned page) and size in points; a text file is one page of size 0."""

    __tablename__ = "document_pages"
    __table_args__ = (UniqueConstraint("sha256", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # FTS5's rowid on SQLite
    sha256: Mapped[str] = mapped_column(ForeignKey("documents.sha256", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # 1-based
    text: Mapped[str] = mapped_column(Text)
    width: Mapped[float] = mapped_column(Float)
    height: Mapped[float] = mapped_column(Float)
    terms: Mapped[str] = mapped_column(Text().with_variant(TSVECTOR(), "postgresql"))


class LibraryDocument(Base):
    """A document in a user's library, under the name they uploaded it as: what they may search, cite and open."""

    __tablename__ = "library"
    __table_args__ = (UniqueConstraint("user_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("documents.sha256"), index=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


# Limits -----------------------------------------------------------------------------------------
# Kept here rather than in each process, so that every Loupe process on the database counts together
# (chat/store/limits.py). Both tables stay small: a row goes once it holds nobody back (`expires`).


class LimitRecord(Base):
    """What one key of a limit remembers (a user's recent messages, a name's or an address's failed logins),
    as the rules of chat/ui/limits.py write it; a transaction that counts on it holds its row."""

    __tablename__ = "limit_records"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)  # the limit's kind and a hash of what it counts
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires: Mapped[float] = mapped_column(Float, index=True)  # when it holds nobody back any more


class PendingUpload(Base):
    """A file a user has uploaded (or is uploading) into a chat session and not yet sent with a message."""

    __tablename__ = "pending_uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # taken when the upload is admitted
    file_id: Mapped[str | None] = mapped_column(String(36), index=True)  # Chainlit's, once stored; None while arriving
    user: Mapped[str] = mapped_column(String(255), index=True)  # the user's identifier
    session_id: Mapped[str] = mapped_column(String(36), index=True)
    size: Mapped[int] = mapped_column(BigInteger)  # declared while arriving, stored once stored
    expires: Mapped[float] = mapped_column(Float, index=True)  # Chainlit keeps a session's files this long


class ApiKey(Base):
    """A key a program calls Loupe's API with as its user (chat/store/keys.py): only its sha256 is kept."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
