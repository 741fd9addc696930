"""Documents at scale: ingest time per page, and retrieval latency and recall over a large library,
on SQLite and PostgreSQL, in one run.

1. Ingest: real PDFs (tests/helpers/pdfs.py, reportlab) read page by page with pypdfium2, by the
   document workers on the default settings (models/pdf_pool.py), and stored with their search index
   through chat/store/documents.py, as the chat does; and one page rendered at the CPU pixel budget,
   as the model is shown it.
2. Library: tests/helpers/pdfs.py's LIBRARY says what it holds. Its pages are stored through the same
   `Documents.ingest` as uploads (the same rows, terms and index), from their text, without making
   50,000 PDF pages first. Every question is asked across the user's whole library, as the Library
   command does (the hardest scope: every page is a candidate).
3. Recall: each labelled question asks for one page's fact; recall@k is the share of questions whose
   page is among the first k found. Latency is each search's wall time, p50 and p99.

Run from the repository root:
    .venv/bin/python -m bench.bench_documents                          # 1,000 documents, 50,000 pages
    .venv/bin/python -m bench.bench_documents --documents 100 --backends sqlite   # a quick check
Goal: recall@3 >= 0.9 and p99 <= 100 ms on each backend.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text

from bench.bench_chat import Report, print_machine
from chat.documents.reading import pdf_workers
from chat.settings import Settings
from chat.store.accounts import add_user
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.documents import Documents
from models.pdf_pool import PdfPool
from tests.helpers import pdfs
from tests.helpers.budgets import CPU_BUDGET
from tests.helpers.databases import postgres_database
from tests.helpers.pdfs import LIBRARY, PAGES_PER_DOCUMENT, library

BACKENDS = ("sqlite", "postgresql")
GOAL_RECALL_AT_3, GOAL_P99_MS = 0.9, 100
USER = "librarian"


async def bench_ingest(documents: Documents, workers: PdfPool, report: Report, backend: str) -> None:
    """Real PDFs through the chat's path: read by the workers, stored with the index; one page rendered."""
    pages, started, reading = 0, time.perf_counter(), 0.0
    for seed in range(5):
        data, _ = pdfs.facts_pdf(40, seed=1000 + seed, korean=seed % 2 == 1)
        read_at = time.perf_counter()
        read = await workers.read(USER, data, 500)
        reading += time.perf_counter() - read_at
        await documents.ingest(USER, hashlib.sha256(data).hexdigest(), f"ingest-{seed}.pdf", "pdf", read)
        pages += len(read)
    total = time.perf_counter() - started
    report.add(
        backend,
        "ingest",
        f"{1000 * total / pages:.1f} ms/page",
        f"{pages} PDF pages: reading {1000 * reading / pages:.1f} ms/page, the rest storing and indexing",
    )
    renders = []
    for _ in range(5):
        render_at = time.perf_counter()
        await workers.render_page(USER, data, 1, CPU_BUDGET)
        renders.append(time.perf_counter() - render_at)
    report.add(
        backend,
        "render a page",
        f"{1000 * statistics.median(renders):.0f} ms",
        "A4 at the CPU pixel budget, median of 5",
    )


async def bench_library(documents: Documents, report: Report, backend: str, count: int, questions: int) -> None:
    made, labelled = library(count, seed=7)
    started = time.perf_counter()
    for name, sha256, pages in made:
        await documents.ingest(USER, sha256, name, "pdf", pages)
    async with documents.sessions.begin() as session:  # the statistics a running database has (autovacuum)
        await session.execute(text("ANALYZE"))
    report.add(
        backend,
        "library",
        f"{count} documents, {count * PAGES_PER_DOCUMENT} pages",
        f"stored in {time.perf_counter() - started:.0f} s",
    )

    asked = random.Random(3).sample(labelled, min(questions, len(labelled)))
    await documents.search(USER, asked[0].text, 3)  # warm the caches once, as a running server has them
    found_at, latencies = [], []
    for question in asked:
        search_at = time.perf_counter()
        hits = await documents.search(USER, question.text, 3)
        latencies.append(time.perf_counter() - search_at)
        ranks = [
            rank
            for rank, hit in enumerate(hits, start=1)
            if (hit.sha256, hit.number) == (question.sha256, question.page)
        ]
        found_at.append(ranks[0] if ranks else None)
    recall = {k: sum(rank is not None and rank <= k for rank in found_at) / len(asked) for k in (1, 3)}
    latencies.sort()
    p50 = 1000 * statistics.median(latencies)
    p99 = 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    korean = sum(not question.text.isascii() for question in asked)
    report.add(
        backend,
        "recall@1 / recall@3",
        f"{recall[1]:.3f} / {recall[3]:.3f}",
        f"{len(asked)} questions ({korean} in Korean), goal @3 >= {GOAL_RECALL_AT_3}",
    )
    report.add(
        backend, "search latency", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", f"whole library, goal p99 <= {GOAL_P99_MS} ms"
    )


@asynccontextmanager
async def database(backend: str) -> AsyncIterator[str]:
    if backend == "postgresql":
        async with postgres_database("loupe_bench") as url:
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="loupe-bench-documents-") as folder:
        yield f"sqlite+aiosqlite:///{Path(folder) / 'loupe.db'}"


async def main(arguments: argparse.Namespace) -> None:
    print_machine(f"library: {arguments.documents} documents, {arguments.questions} questions\n{LIBRARY}")
    report = Report()
    workers = pdf_workers(Settings())
    for backend in arguments.backends:
        async with database(backend) as url:
            await asyncio.to_thread(upgrade, url)
            engine = create_engine(url)
            sessions = session_factory(engine)
            await add_user(sessions, USER, "a long enough password")
            documents = Documents(sessions)
            await bench_ingest(documents, workers, report, backend)
            await bench_library(documents, report, backend, arguments.documents, arguments.questions)
            await engine.dispose()
    await workers.close()
    print(report.table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    asyncio.run(main(parser.parse_args()))
