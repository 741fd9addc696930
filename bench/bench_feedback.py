"""Feedback write latency under load: 50 users chatting and rating at once, on SQLite, PostgreSQL, and two
PostgreSQL processes behind HAProxy (the "replicas" backend: docs/deployment.md's "Several replicas", through the
shipped docs/replicas/haproxy.cfg, tests/helpers/replicas.py).

The load is tests/helpers/load.py's, the one tests/test_load.py checks for lost and duplicated rows: each
user opens a chat, asks 10 short greedy questions of the demo model, and rates every answer
through PUT /feedback the moment it has ended. Measured per backend:

  client   PUT /feedback round trip, as the rating user's client sees it.
  upsert   LoupeDataLayer.upsert_feedback inside the server (the database transaction).
  settle   LoupeDataLayer.settle_step inside the server: the wait for the rated step's own
           writes, still under way when the rating arrives.

and what the database kept: answers and acknowledged ratings the clients saw and the database lacks (lost),
and questions, generation records or ratings stored twice (duplicated).

The server-side times come from a sitecustomize shim on the server's PYTHONPATH (written to a temp
dir, see SHIM) that wraps those two methods; the app itself is unchanged.

Run from the repository root:
    .venv/bin/python -m bench.bench_feedback
    .venv/bin/python -m bench.bench_feedback --backends sqlite --users 20
    .venv/bin/python -m bench.bench_feedback --backends postgresql,replicas
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.bench_chat import Report, print_machine
from tests.helpers.databases import postgres_database
from tests.helpers.load import Load, add_accounts, read_when_quiet, run_users, sqlite_url, start_on
from tests.helpers.replicas import balanced_replicas
from tests.helpers.server import REPO, stop_server

BACKENDS = ("sqlite", "postgresql", "replicas")

# Imported by every Python process that has the shim's folder on its path. It wraps two methods of
# chat.ui.datalayer.LoupeDataLayer once that module is first imported, and appends "name seconds"
# lines to the file named by LOUPE_BENCH_TIMINGS.
SHIM = """
import functools, importlib.abc, importlib.util, os, sys, time

TIMINGS = os.environ.get("LOUPE_BENCH_TIMINGS")


def _timed(name, method):
    @functools.wraps(method)
    async def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            with open(TIMINGS, "a") as out:
                out.write(f"{name} {time.perf_counter() - started:.6f}\\n")
    return timed


class _WrapDataLayer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "chat.ui.datalayer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            layer = module.LoupeDataLayer
            for name, method in (("upsert", "upsert_feedback"), ("settle", "settle_step")):
                if hasattr(layer, method):  # settle_step is newer: older code can be measured too
                    setattr(layer, method, _timed(name, getattr(layer, method)))

        spec.loader.exec_module = exec_module
        return spec


if TIMINGS:
    sys.meta_path.insert(0, _WrapDataLayer())
"""


@dataclass
class Result:
    backend: str
    load: Load
    server: dict[str, list[float]]  # "upsert" / "settle" -> seconds
    load_average: tuple[float, float]  # 1-minute load average when the load started and ended
    lost: int  # answers and acknowledged ratings the clients saw that the database lacks
    duplicated: int  # questions, generation records and ratings stored more than once


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_feedback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10, help="questions per user, each answer rated")
    return parser.parse_args(argv)


@asynccontextmanager
async def fresh_database(backend: str, folder: Path) -> AsyncIterator[str]:
    """SQLite in the server's data directory, or a new PostgreSQL database dropped afterwards."""
    if backend == "sqlite":
        yield sqlite_url(folder / "app" / ".data")
    else:
        async with postgres_database("loupe_bench") as url:
            yield url


@asynccontextmanager
async def serving(backend: str, folder: Path, url: str, **env: str) -> AsyncIterator[str]:
    """The address the users connect to: one Loupe process, or two behind HAProxy; stopped afterwards."""
    if backend == "replicas":
        with balanced_replicas(folder, url, **env) as balanced:
            yield balanced.url
        return
    process, server = start_on(folder / "app", url, **env)
    try:
        yield server.url
    finally:
        stop_server(process)


async def kept(url: str, load: Load) -> tuple[int, int]:
    """(lost, duplicated): what the clients saw that the database lacks (an answer's step or generation record,
    an acknowledged rating), and rows stored more than once (a question, a generation record, a rating)."""
    stored = await read_when_quiet(url)
    steps = {step.id for step in stored.steps}
    records = Counter(generation.step_id for generation in stored.generations)
    ratings = Counter(feedback.for_id for feedback in stored.feedbacks)
    questions = Counter((step.thread_id, step.output) for step in stored.steps if step.type == "user_message")
    lost = sum(answer.message_id not in steps or not records[answer.message_id] for answer in load.answers)
    lost += sum(not ratings[rating.run_id] for rating in load.acknowledged())
    duplicated = sum(count - 1 for counter in (records, ratings, questions) for count in counter.values())
    return lost, duplicated


async def measure(backend: str, users: int, messages: int) -> Result:
    """One server (or two behind the balancer) on a fresh database, the full load, and the shim's timings."""
    with tempfile.TemporaryDirectory(prefix=f"loupe-bench-feedback-{backend}-") as folder:
        root = Path(folder)
        shim = root / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SHIM)
        timings = root / "timings.txt"
        async with fresh_database(backend, root) as url:
            accounts = await add_accounts(url, users)
            load = Load()
            env = {"PYTHONPATH": f"{shim}{os.pathsep}{REPO}", "LOUPE_BENCH_TIMINGS": str(timings)}
            async with serving(backend, root, url, **env) as address:
                started = os.getloadavg()[0]
                try:
                    await run_users(address, accounts, messages, load)
                finally:
                    ended = os.getloadavg()[0]
            lost, duplicated = await kept(url, load)
        server_times: dict[str, list[float]] = defaultdict(list)
        for line in timings.read_text().splitlines() if timings.exists() else []:
            name, seconds = line.split()
            server_times[name].append(float(seconds))
    return Result(backend, load, dict(server_times), (started, ended), lost, duplicated)


def loadavg() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def percentiles(seconds: list[float]) -> str:
    """p50 / p99 / max in milliseconds (p99 of 500 samples is the 5th slowest)."""
    if not seconds:
        return "no samples"
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return f"{cuts[49] * 1000:.1f} / {cuts[98] * 1000:.1f} / {max(seconds) * 1000:.1f} ms"


def report_result(result: Result, report: Report, users: int, messages: int) -> None:
    part, load = result.backend, result.load
    refused = [rating for rating in load.ratings if not rating.acknowledged]
    report.add(
        part,
        "load",
        f"{len(load.answers)} answers in {load.seconds:.0f} s",
        f"{users} users x {messages}, {len(load.answers) / load.seconds:.1f} answers/s; "
        f"1-min load average {result.load_average[0]:.2f} -> {result.load_average[1]:.2f}",
    )
    report.add(part, "ratings acknowledged", f"{len(load.ratings) - len(refused)} of {len(load.ratings)}")
    report.add(part, "lost / duplicated", f"{result.lost} / {result.duplicated}", "answers, ratings, questions")
    report.add(part, "client PUT /feedback p50 / p99 / max", percentiles([r.seconds for r in load.ratings]))
    first = [rating.seconds for rating in load.ratings if rating.index == 0]
    later = [rating.seconds for rating in load.ratings if rating.index > 0]
    report.add(part, "  of which each user's first rating", percentiles(first), "all users log in and ask at once")
    report.add(part, "  of which the later ratings", percentiles(later))
    report.add(part, "server upsert_feedback p50 / p99 / max", percentiles(result.server.get("upsert", [])))
    report.add(part, "server settle_step p50 / p99 / max", percentiles(result.server.get("settle", [])))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    backends = [backend for backend in args.backends.split(",") if backend]
    if unknown := set(backends) - set(BACKENDS):
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    print_machine()
    report = Report()
    for backend in backends:
        result = asyncio.run(measure(backend, args.users, args.messages))
        report_result(result, report, args.users, args.messages)
    print()
    print(report.table())
    print(f"\nload average at end: {loadavg()}")


if __name__ == "__main__":
    main()
