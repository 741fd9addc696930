"""Documents in the database: each ingested once, in one transaction with its search index, and
searched only within what the asking user may read, their library.

Ranking is each engine's own. SQLite ranks with FTS5's BM25. PostgreSQL's ts_rank knows no
document frequencies, so each question term's ts_rank on a page is weighted by the term's inverse
document frequency, counted within the user's scope with the GIN index. Over a large library, the
terms on a tenth of its pages or more are left out of the search (_informative).
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import TextClause, bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.rows import dialect_insert, utcnow
from chat.store.schema import Document, DocumentPage, LibraryDocument, User
from chat.store.terms import query_terms, terms
from models.pdf import PageText

MAX_TSVECTOR_POSITION = 16383  # PostgreSQL's limit; later occurrences count at the last position
# Past this many pages in scope (a library, not a conversation's few documents), a search leaves out the
# terms on more than COMMON_SHARE of the pages: at 50,000 pages that keeps p99 within 100 ms (bench/RESULTS.md).
LARGE_SCOPE_PAGES = 1000
COMMON_SHARE = 0.1
CANDIDATES = 50  # PostgreSQL: pages ranked again with ts_rank after the first, index-only score


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

    async def remove(self, user: str, sha256: str) -> str | None:
        """Take a document out of `user`'s library (no question of theirs finds or cites it again); its name,
        or None if it was not there. The pages stay for the other libraries that hold the same content."""
        async with self.sessions.begin() as session:
            entry = await session.scalar(
                select(LibraryDocument)
                .join(User, User.id == LibraryDocument.user_id)
                .where(User.identifier == user, LibraryDocument.sha256 == sha256)
            )
            if entry is None:
                return None
            await session.delete(entry)
            return entry.name

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


def _expanding(query: TextClause, within: list[str] | None) -> TextClause:
    return query if within is None else query.bindparams(bindparam("within", expanding=True))


async def _scope_pages(session: AsyncSession, user_id: str, within: list[str] | None) -> int:
    """How many pages the search may find: those of the user's library (or of its documents `within`)."""
    scope, parameters = _scope(within)
    query = text(
        "SELECT coalesce(sum(d.page_count), 0) FROM library l JOIN documents d ON d.sha256 = l.sha256"
        f" WHERE l.user_id = :user_id{scope.replace('p.sha256', 'l.sha256')}"
    )
    return await session.scalar(_expanding(query, within), {"user_id": user_id, **parameters})


def _informative(wanted: list[str], frequencies: dict[str, int], pages: int, scope_pages: int) -> list[str]:
    """The terms worth searching for in a large scope: not on more than COMMON_SHARE of `pages` (BM25 gives
    such a term little weight, and its long list of pages is most of a search's cost); all of them when
    every term is that common, or when the scope is small enough to rank whole."""
    if scope_pages < LARGE_SCOPE_PAGES:
        return wanted
    return [term for term in wanted if frequencies.get(term, 0) <= COMMON_SHARE * pages] or wanted


async def _search_sqlite(
    session: AsyncSession, user_id: str, wanted: list[str], limit: int, within: list[str] | None
) -> list[PageHit]:
    scope_pages = await _scope_pages(session, user_id, within)
    if scope_pages >= LARGE_SCOPE_PAGES:  # FTS5's own counts: each term's pages, over every document indexed
        vocabulary = text("SELECT term, doc FROM page_search_vocab WHERE term IN :terms").bindparams(
            bindparam("terms", expanding=True)
        )
        frequencies = dict((await session.execute(vocabulary, {"terms": wanted})).all())
        pages = await session.scalar(select(func.count()).select_from(DocumentPage))
        wanted = _informative(wanted, frequencies, pages, scope_pages)
    scope, parameters = _scope(within)
    query = text(
        "SELECT l.name, p.sha256, d.kind, p.number, p.text, bm25(page_search) AS rank FROM page_search"
        " JOIN document_pages p ON p.id = page_search.rowid JOIN library l ON l.sha256 = p.sha256"
        " JOIN documents d ON d.sha256 = p.sha256"
        f" WHERE page_search MATCH :match AND l.user_id = :user_id{scope} ORDER BY rank LIMIT :limit"
    )
    match = " OR ".join(f'"{term}"' for term in wanted)  # terms hold no quotes (chat/store/terms.py)
    result = await session.execute(
        _expanding(query, within), {"match": match, "user_id": user_id, "limit": limit, **parameters}
    )
    return [PageHit(*row[:-1], score=-row.rank) for row in result]


async def _search_postgresql(
    session: AsyncSession, user_id: str, wanted: list[str], limit: int, within: list[str] | None
) -> list[PageHit]:
    """Each term's pages come from the GIN index; a page's first score is the sum of the IDF of the terms
    it holds, and the best CANDIDATES are ranked again with ts_rank, which reads their tsvectors."""
    scope, parameters = _scope(within)
    in_scope = f"FROM document_pages p JOIN library l ON l.sha256 = p.sha256 WHERE l.user_id = :user_id{scope}"
    base = {"user_id": user_id, **parameters}
    scope_pages = await _scope_pages(session, user_id, within)
    # Document frequencies within the scope, counted no further than a common term's share.
    cap = int(COMMON_SHARE * scope_pages) + 1 if scope_pages >= LARGE_SCOPE_PAGES else scope_pages
    terms_in = {f"t{index}": f"'{term}'" for index, term in enumerate(wanted)}  # tsquery literals
    counts = ", ".join(
        f"(SELECT count(*) FROM (SELECT 1 {in_scope} AND p.terms @@ CAST(:{key} AS tsquery) LIMIT :cap) AS found)"
        for key in terms_in
    )
    found = (await session.execute(_expanding(text(f"SELECT {counts}"), within), base | terms_in | {"cap": cap})).one()
    frequencies = dict(zip(wanted, found, strict=True))
    kept = [term for term in _informative(wanted, frequencies, scope_pages, scope_pages) if frequencies[term]]
    if not kept:
        return []
    terms_in = {f"t{index}": f"'{term}'" for index, term in enumerate(kept)}
    # BM25's inverse document frequency, kept positive.
    weights = {
        f"w{index}": math.log(1 + (scope_pages - frequencies[term] + 0.5) / (frequencies[term] + 0.5))
        for index, term in enumerate(kept)
    }
    matched = " UNION ALL ".join(
        f"SELECT p.id, CAST(:w{index} AS float8) AS weight {in_scope} AND p.terms @@ CAST(:t{index} AS tsquery)"
        for index in range(len(kept))
    )
    # ts_rank of one term saturates with its count on the page, and normalization 1 divides by the log
    # of the page's length: with the IDF weights, BM25's three ingredients.
    score = " + ".join(f":w{index} * ts_rank(p.terms, CAST(:t{index} AS tsquery), 1)" for index in range(len(kept)))
    query = text(
        f"WITH candidates AS (SELECT id, sum(weight) AS coverage FROM ({matched}) AS matched"
        " GROUP BY id ORDER BY coverage DESC, id LIMIT :candidates)"
        f" SELECT l.name, p.sha256, d.kind, p.number, p.text, {score} AS rank FROM candidates c"
        " JOIN document_pages p ON p.id = c.id JOIN documents d ON d.sha256 = p.sha256"
        " JOIN library l ON l.sha256 = p.sha256 AND l.user_id = :user_id"
        " ORDER BY rank DESC, p.id LIMIT :limit"
    )
    result = await session.execute(
        _expanding(query, within), base | terms_in | weights | {"candidates": CANDIDATES, "limit": limit}
    )
    return [PageHit(*row[:-1], score=float(row.rank)) for row in result]
