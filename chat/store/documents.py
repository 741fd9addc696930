"""Documents in the database: each ingested once, in one transaction with its search index, and
searched only within what the asking user may read, their library.

Ranking is each engine's own. SQLite ranks with FTS5's BM25. PostgreSQL's ts_rank knows no
document frequencies, so each question term's ts_rank on a page is weighted by the term's inverse
document frequency, counted within the user's scope with the GIN index.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.rows import dialect_insert, utcnow
from chat.store.schema import Document, DocumentPage, LibraryDocument, User
from chat.store.terms import query_terms, terms
from models.pdf import PageText

MAX_TSVECTOR_POSITION = 16383  # PostgreSQL's limit; later occurrences count at the last position


@dataclass(frozen=True)
class PageHit:
    """A page found for a question, under the name its owner gave the document."""

    name: str
    sha256: str
    kind: str  # pdf, text
    number: int
    text: str
    score: float  # higher is better, comparable only within one search; 0 for pages asked for by number


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    sha256: str
    kind: str
    page_count: int
    added: datetime


class Documents:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def known(self, sha256: str) -> bool:
        """Whether this content was ingested already (by anyone): then it is only added to a library."""
        async with self.sessions() as session:
            return await session.get(Document, sha256) is not None

    async def ingest(self, user: str, sha256: str, name: str, kind: str, pages: list[PageText] | None) -> None:
        """Put the document into `user`'s library under `name`, storing its `pages` and their search
        index first unless it is known. One transaction: a failure stores nothing."""
        async with self.sessions.begin() as session:
            if pages is not None:
                inserted = await session.execute(
                    dialect_insert(session, Document)
                    .values(sha256=sha256, kind=kind, page_count=len(pages), created_at=utcnow())
                    .on_conflict_do_nothing()
                )
                if inserted.rowcount:  # another upload of the same content may have won the race
                    await _store_pages(session, sha256, pages)
            user_id = await session.scalar(select(User.id).where(User.identifier == user))
            await session.execute(
                dialect_insert(session, LibraryDocument)
                .values(id=str(uuid.uuid4()), user_id=user_id, sha256=sha256, name=name, created_at=utcnow())
                .on_conflict_do_nothing()
            )

    async def library(self, user: str) -> list[LibraryEntry]:
        """The user's documents, newest first."""
        query = (
            select(
                LibraryDocument.name, Document.sha256, Document.kind, Document.page_count, LibraryDocument.created_at
            )
            .join(Document, Document.sha256 == LibraryDocument.sha256)
            .join(User, User.id == LibraryDocument.user_id)
            .where(User.identifier == user)
            .order_by(LibraryDocument.created_at.desc(), LibraryDocument.name)
        )
        async with self.sessions() as session:
            return [LibraryEntry(*row) for row in await session.execute(query)]

    async def page_texts(self, user: str, sha256: str) -> list[str] | None:
        """Every page's text of one of the user's documents, in order; None if it is not in their library."""
        query = (
            select(DocumentPage.text)
            .join(LibraryDocument, LibraryDocument.sha256 == DocumentPage.sha256)
            .join(User, User.id == LibraryDocument.user_id)
            .where(User.identifier == user, DocumentPage.sha256 == sha256)
            .order_by(DocumentPage.number)
        )
        async with self.sessions() as session:
            found = list(await session.scalars(query))
        return found or None

    async def pages(self, user: str, wanted: list[tuple[str, int]]) -> list[PageHit]:
        """The pages (sha256, number) asked for, in that order, of those in the user's library."""
        if not wanted:
            return []
        query = (
            select(LibraryDocument.name, Document.sha256, Document.kind, DocumentPage.number, DocumentPage.text)
            .join(Document, Document.sha256 == DocumentPage.sha256)
            .join(LibraryDocument, LibraryDocument.sha256 == DocumentPage.sha256)
            .join(User, User.id == LibraryDocument.user_id)
            .where(User.identifier == user, DocumentPage.sha256.in_({sha256 for sha256, _ in wanted}))
        )
        async with self.sessions() as session:
            found = {(row.sha256, row.number): PageHit(*row, score=0.0) for row in await session.execute(query)}
        return [found[key] for key in wanted if key in found]

    async def search(self, user: str, question: str, limit: int, within: list[str] | None = None) -> list[PageHit]:
        """The `limit` pages of the user's library (or of the documents `within` it) that best match
        `question`, best first. Pages of other users' documents are never considered."""
        wanted = query_terms(question)
        if not wanted or within == []:
            return []
        async with self.sessions() as session:
            user_id = await session.scalar(select(User.id).where(User.identifier == user))
            if user_id is None:
                return []
            search = _search_postgresql if session.bind.dialect.name == "postgresql" else _search_sqlite
            return await search(session, user_id, wanted, limit, within)


async def _store_pages(session: AsyncSession, sha256: str, pages: list[PageText]) -> None:
    postgresql = session.bind.dialect.name == "postgresql"
    rows = [
        {
            "sha256": sha256,
            "number": page.number,
            "text": page.text,
            "width": page.width,
            "height": page.height,
            "terms": _tsvector(terms(page.text)) if postgresql else " ".join(terms(page.text)),
        }
        for page in pages
    ]
    await session.execute(DocumentPage.__table__.insert(), rows)  # SQLite's triggers index them


def _tsvector(found: list[str]) -> str:
    """A tsvector literal of the terms with their positions, so PostgreSQL's parser (locale-dependent)
    never re-tokenizes them: "'5.5':3,7 'vdd':4"."""
    positions: dict[str, list[int]] = defaultdict(list)
    for position, term in enumerate(found, start=1):
        positions[term].append(min(position, MAX_TSVECTOR_POSITION))
    return " ".join(f"'{term}':{','.join(map(str, sorted(set(at))))}" for term, at in positions.items())


def _scope(within: list[str] | None) -> tuple[str, dict]:
    if within is None:
        return "", {}
    return " AND p.sha256 IN :within", {"within": within}


async def _search_sqlite(
    session: AsyncSession, user_id: str, wanted: list[str], limit: int, within: list[str] | None
) -> list[PageHit]:
    scope, parameters = _scope(within)
    query = text(
        "SELECT l.name, p.sha256, d.kind, p.number, p.text, bm25(page_search) AS rank FROM page_search"
        " JOIN document_pages p ON p.id = page_search.rowid JOIN library l ON l.sha256 = p.sha256"
        " JOIN documents d ON d.sha256 = p.sha256"
        f" WHERE page_search MATCH :match AND l.user_id = :user_id{scope} ORDER BY rank LIMIT :limit"
    )
    if within is not None:
        query = query.bindparams(bindparam("within", expanding=True))
    match = " OR ".join(f'"{term}"' for term in wanted)  # terms hold no quotes (chat/store/terms.py)
    result = await session.execute(query, {"match": match, "user_id": user_id, "limit": limit, **parameters})
    return [PageHit(*row[:-1], score=-row.rank) for row in result]


async def _search_postgresql(
    session: AsyncSession, user_id: str, wanted: list[str], limit: int, within: list[str] | None
) -> list[PageHit]:
    scope, parameters = _scope(within)
    in_scope = (
        "FROM document_pages p JOIN library l ON l.sha256 = p.sha256 JOIN documents d ON d.sha256 = p.sha256"
        f" WHERE l.user_id = :user_id{scope}"
    )
    term_parameters = {f"t{index}": f"'{term}'" for index, term in enumerate(wanted)}
    counts = ", ".join(
        f"(SELECT count(*) {in_scope} AND p.terms @@ CAST(:t{index} AS tsquery))" for index in range(len(wanted))
    )
    count_query = text(f"SELECT (SELECT count(*) {in_scope}), {counts}")
    if within is not None:
        count_query = count_query.bindparams(bindparam("within", expanding=True))
    pages, *frequencies = (
        await session.execute(count_query, {"user_id": user_id, **parameters, **term_parameters})
    ).one()
    # BM25's inverse document frequency, kept positive.
    idf = {f"w{index}": math.log(1 + (pages - df + 0.5) / (df + 0.5)) for index, df in enumerate(frequencies)}
    # ts_rank of one term saturates with its count on the page, and normalization 1 divides by the log
    # of the page's length: with the IDF weights, BM25's three ingredients.
    score = " + ".join(f":w{index} * ts_rank(p.terms, CAST(:t{index} AS tsquery), 1)" for index in range(len(wanted)))
    query = text(
        f"SELECT l.name, p.sha256, d.kind, p.number, p.text, {score} AS rank {in_scope}"
        " AND p.terms @@ CAST(:match AS tsquery)"
        " ORDER BY rank DESC, p.id LIMIT :limit"
    )
    if within is not None:
        query = query.bindparams(bindparam("within", expanding=True))
    match = " | ".join(term_parameters.values())
    result = await session.execute(
        query, {"match": match, "user_id": user_id, "limit": limit, **parameters, **term_parameters, **idf}
    )
    return [PageHit(*row[:-1], score=float(row.rank)) for row in result]
