"""The dashboard's queries at scale: the export bench's 100,000 conversations, with battles.

The database is bench/bench_export.py's (SYNTHETIC, plus BATTLES), on SQLite and PostgreSQL. What is timed
is what the Dashboard command waits for (chat/dashboard/data.py), called as the app calls it: the
leaderboard, thumbs and battles (`dashboard`), then the preference data by rule (`dataset_sizes`, which
reads every conversation in scope), for everyone's data (an admin) and for one user's (of 200). The ratio
of one user's to everyone's says whether a user's dashboard costs their share of the data, not all of it.

Run from the repository root:
    .venv/bin/python -m bench.bench_dashboard                                   # 100,000 conversations
    .venv/bin/python -m bench.bench_dashboard --threads 2000 --backends sqlite  # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.bench_chat import Report, median, print_machine
from bench.bench_export import BACKENDS, BATTLES, SYNTHETIC, fill, fresh_database, synthetic_images
from chat.dashboard.data import Scope, dashboard, dataset_sizes, scope_for
from chat.settings import Settings
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.files import ContentStore
from models.adapters import AdapterDirectory

REPEATS = 3  # each query is timed this many times; the median is reported
USER = "user7"  # one of the synthetic users (user0 to user199)


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        await work()
        times.append(time.perf_counter() - started)
    return median(times)


async def measure(backend: str, threads: int, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix=f"loupe-bench-dashboard-{backend}-") as name:
        folder = Path(name)
        image_keys = synthetic_images(ContentStore(folder / "files"), 500, random.Random(1))
        async with fresh_database(backend, folder) as url:
            upgrade(url)
            seconds, written = await fill(url, threads, image_keys, battles=True)
            report.add(
                backend,
                "database written",
                f"{written['threads']:,} conversations in {seconds:.0f} s",
                f"{written['battles']:,} battles, {written['feedbacks']:,} ratings",
            )
            engine = create_engine(url)
            sessions = session_factory(engine)
            settings, adapters = Settings(database_url=url), AdapterDirectory(folder / "adapters")
            try:
                scopes = {
                    "everyone's": Scope(None),
                    f"one user's ({USER})": await scope_for(sessions, USER, everyone=False),
                }
                results = {}
                for label, scope in scopes.items():
                    charts = await timed(lambda scope=scope: dashboard(sessions, adapters, settings, scope))
                    dataset = await timed(lambda scope=scope: dataset_sizes(engine, scope))
                    results[label] = charts + dataset
                    report.add(backend, f"{label}: leaderboard, thumbs, battles", f"{charts:.2f} s")
                    report.add(backend, f"{label}: preference data by rule", f"{dataset:.2f} s")
                everyone, one = results.values()
                report.add(backend, "one user's / everyone's", f"{one / everyone:.3f}", "the whole dashboard")
            finally:
                await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=100_000, help="synthetic conversations per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    args = parser.parse_args()
    print_machine(f"\nData: {SYNTHETIC}{BATTLES}")
    report = Report()
    for backend in [backend for backend in args.backends.split(",") if backend]:
        asyncio.run(measure(backend, args.threads, report))
    print("\n" + report.table())


if __name__ == "__main__":
    main()
