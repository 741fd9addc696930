"""Preference-data export at scale: time and peak memory of `python -m chat export` on SQLite and PostgreSQL.

Each backend gets a fresh database filled with synthetic conversations (SYNTHETIC below says what
they hold). They are written into the data layer's tables (chat/store/schema.py) through its session
factory, but in bulk: an executemany INSERT per table per 2,000 conversations, each in its own
transaction. The app writes one step per data-layer call instead, about 5 ms each on SQLite here:
the ~1 million writes of 100,000 conversations would take well over an hour. Then each export runs
as the operator runs it, `python -m chat export`, in its own process: its wall time and peak
resident memory (ru_maxrss) are what is measured, and the same for `python -m chat stats`.

Run from the repository root:
    .venv/bin/python -m bench.bench_export                                   # 100,000 conversations
    .venv/bin/python -m bench.bench_export --threads 2000 --backends sqlite  # a quick check
Goal: each export under 60 s and 500 MB on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import insert, text

from bench.bench_chat import Report, print_machine
from chat.prompts import system_prompts
from chat.store import schema
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.files import ContentStore
from tests.helpers.databases import postgres_database
from tests.helpers.server import REPO

BACKENDS = ("sqlite", "postgresql")
FORMATS = ("trl-dpo", "trl-kto", "llamafactory-dpo")
GOAL_SECONDS, GOAL_MB = 60, 500
CHUNK = 2_000  # conversations made and inserted at a time
MiB = 1024 * 1024

SYNTHETIC = """\
Per conversation: 1 to 3 questions, 1 in 5 with an image (from 500 distinct 64x64 PNGs); each
question answered once, 40% regenerated once more and 10% twice; answers 90% finished, 7% stopped,
3% failed, 200 to 600 characters, half by an adapter; half the answers rated (60% up, reasons on
a third of the ratings), a comparison on half the questions with several answers, a correction
of 1 answer in 20; 1 conversation in 5 in Korean; 200 users; spread over 30 days.
"""
BATTLES = """With battles (bench/bench_dashboard.py): half the questions with several answers are also a blind
battle between their first two answers (whoever wrote them; a vote of a, b, tie or both bad).
"""


def synthetic_images(store: ContentStore, count: int, rng: random.Random) -> list[str]:
    keys = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)).save(buffer, format="PNG")
        keys.append(store.put(buffer.getvalue()))
    return keys


class Writer:
    """Makes deterministic conversations shaped like SYNTHETIC (ids are uuid4-shaped but seeded), as rows
    for bulk inserts: by model, keyed by column name, in the order the foreign keys need."""

    def __init__(self, image_keys: list[str], seed: int = 0, battles: bool = False) -> None:
        self.rng = random.Random(seed)
        self.battles = battles  # BATTLES below: off for the export's own bench, whose data it would change
        self.rows: dict[type, list[dict[str, Any]]] = {}
        self.image_keys = image_keys
        self.styles = list(system_prompts())
        self.start = datetime(2026, 10, 1)
        self.users = [self.new_id() for _ in range(200)]
        for number, user in enumerate(self.users):
            self.add(schema.User, id=user, identifier=f"user{number}", metadata={}, created_at=self.start)

    def add(self, table: type, **row: Any) -> None:
        self.rows.setdefault(table, []).append(row)

    def take(self) -> dict[type, list[dict[str, Any]]]:
        """The rows made since the last take."""
        rows, self.rows = self.rows, {}
        return rows

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def text(self, korean: bool, length: int) -> str:
        words = (
            ("저항", "전압", "회로", "주파수", "입니다") if korean else ("resistor", "voltage", "filter", "gain", "the")
        )
        text = ""
        while len(text) < length:
            text += self.rng.choice(words) + " "
        return text.strip()

    def step(
        self, id: str, thread_id: str, parent_id: str | None, type: str, output: str, metadata: dict, at: datetime
    ) -> None:
        """Every step with the same keys: the bulk insert then sends them in one statement per batch."""
        self.add(
            schema.Step,
            id=id,
            thread_id=thread_id,
            parent_id=parent_id,
            type=type,
            output=output,
            metadata=metadata,
            created_at=at,
        )

    def conversation(self) -> None:
        rng, add = self.rng, self.add
        thread_id, user_id, korean = self.new_id(), rng.choice(self.users), rng.random() < 0.2
        clock = self.start + timedelta(seconds=rng.uniform(0, 30 * 86400))
        add(schema.Thread, id=thread_id, user_id=user_id, name="chat", tags=[], metadata={}, created_at=clock)
        context: list[str] = []
        for _ in range(rng.randint(1, 3)):
            clock += timedelta(seconds=30)
            prompt_id = self.new_id()
            question = self.text(korean, rng.randint(40, 120))
            self.step(prompt_id, thread_id, None, "user_message", question, {}, clock)
            if rng.random() < 0.2:
                add(
                    schema.Element,
                    id=self.new_id(),
                    thread_id=thread_id,
                    for_id=prompt_id,
                    type="image",
                    name="photo.png",
                    mime="image/png",
                    object_key=rng.choice(self.image_keys),
                    props={},
                    created_at=clock,
                )
            answers = []
            for _ in range(1 + (rng.random() < 0.4) + (rng.random() < 0.1)):
                clock += timedelta(seconds=10)
                answers.append(self.answer(thread_id, user_id, prompt_id, context, clock, korean))
            if len(answers) > 1 and rng.random() < 0.5:
                first, second = rng.sample(answers, 2)
                add(
                    schema.Comparison,
                    id=self.new_id(),
                    thread_id=thread_id,
                    user_id=user_id,
                    prompt_id=prompt_id,
                    answer_a=first,
                    answer_b=second,
                    choice=rng.choice(("a", "b", "tie", "both_bad")),
                    created_at=clock,
                    updated_at=clock + timedelta(seconds=rng.randint(-20, 20)),
                )
            if self.battles and len(answers) > 1 and rng.random() < 0.5:
                self.battle(thread_id, user_id, prompt_id, answers[0], answers[1], clock)
            for answer in answers:
                if rng.random() < 0.05:
                    add(
                        schema.Correction,
                        id=self.new_id(),
                        thread_id=thread_id,
                        user_id=user_id,
                        prompt_id=prompt_id,
                        answer_id=answer,
                        text=self.text(korean, 200),
                        created_at=clock,
                        updated_at=clock,
                    )
            context = [*context, answers[-1]]  # the conversation continues from the last answer shown

    def battle(self, thread_id: str, user_id: str, prompt_id: str, a: str, b: str, clock: datetime) -> None:
        """A battle between two answers, voted, as the arena stores it (BATTLES)."""
        generations = {row["step_id"]: row for row in self.rows[schema.Generation][-4:]}
        contenders = [generations[answer]["adapter"] or "base" for answer in (a, b)]
        choice = self.rng.choice(("a", "b", "tie", "both_bad"))
        self.add(
            schema.Battle,
            id=self.new_id(),
            thread_id=thread_id,
            user_id=user_id,
            prompt_id=prompt_id,
            answer_a=a,
            answer_b=b,
            contender_a=contenders[0],
            contender_b=contenders[1],
            choice=choice,
            blind_choice=choice,
            created_at=clock,
            voted_at=clock,
            updated_at=clock,
        )

    def answer(
        self, thread_id: str, user_id: str, prompt_id: str, context: list[str], clock: datetime, korean: bool
    ) -> str:
        """A run step, its answer and generation record, and maybe a rating; returns the answer's id."""
        rng, add = self.rng, self.add
        run_id, answer_id = self.new_id(), self.new_id()
        self.step(run_id, thread_id, prompt_id, "run", "", {}, clock)
        ended = rng.choices(("finished", "stopped", "error"), weights=(90, 7, 3))[0]
        output = self.text(korean, rng.randint(200, 600))
        self.step(answer_id, thread_id, run_id, "assistant_message", output, {"ended": ended}, clock)
        adapter = "engineering-v1" if rng.random() < 0.5 else None
        add(
            schema.Generation,
            id=self.new_id(),
            step_id=answer_id,
            thread_id=thread_id,
            prompt_id=prompt_id,
            context=list(context),
            model="Qwen/Qwen2-VL-2B-Instruct",
            adapter=adapter,
            adapter_version="ab12cd34ef56ab78" if adapter else None,
            settings={"temperature": 0.7, "system_prompt": rng.choice(self.styles)},
            completion=output,
            prompt_tokens=500,
            completion_tokens=120,
            time_to_first_token=0.3,
            duration=4.0,
            ended=ended,
            created_at=clock,
        )
        if rng.random() < 0.5:
            up = rng.random() < 0.6
            reasons = (
                [rng.choice(("correct", "clear") if up else ("wrong", "incomplete"))] if rng.random() < 0.33 else []
            )
            at = clock + timedelta(seconds=rng.randint(1, 40))
            add(
                schema.Feedback,
                id=self.new_id(),
                for_id=run_id,
                thread_id=thread_id,
                user_id=user_id,
                value=int(up),
                reasons=reasons,
                created_at=at,
                updated_at=at,
            )
        return answer_id


async def fill(url: str, threads: int, image_keys: list[str], battles: bool = False) -> tuple[float, Counter[str]]:
    """Write `threads` synthetic conversations, CHUNK at a time so the bench's own memory stays small.

    Core INSERTs on the ORM models' tables, through the data layer's session factory (5x faster than
    ORM bulk inserts here). PostgreSQL is then ANALYZEd, as its autovacuum would after such a load.
    Returns the seconds taken and the rows written per table.
    """
    writer, written = Writer(image_keys, battles=battles), Counter[str]()
    started = time.perf_counter()
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        for first in range(0, threads, CHUNK):
            for _ in range(min(CHUNK, threads - first)):
                writer.conversation()
            for table, rows in writer.take().items():
                async with sessions.begin() as session:
                    await session.execute(insert(table.__table__), rows)
                written[table.__tablename__] += len(rows)
        if engine.dialect.name == "postgresql":
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return time.perf_counter() - started, written


@dataclass
class Run:
    seconds: float
    peak_mb: float
    output: str


# Starts the measured command and writes its peak RSS (KiB) to the file named first. The bench
# itself has torch loaded (bench_chat), and Linux carries a parent's RSS high-water mark through
# fork and exec into ru_maxrss: a small launcher in between keeps the measured process's own.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as peak:
    peak.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_command(arguments: list[str], environment: dict[str, str], folder: Path) -> Run:
    """`python -m chat ARGUMENTS` in its own process: wall time and its own peak RSS."""
    peak = folder / "peak-kib.txt"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(peak), sys.executable, "-m", "chat", *arguments],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"python -m chat {' '.join(arguments)} failed:\n{done.stdout}")
    return Run(seconds, int(peak.read_text()) / 1024, done.stdout)


@asynccontextmanager
async def fresh_database(backend: str, folder: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / 'loupe.db'}"
    else:
        async with postgres_database("loupe_bench_export") as url:
            yield url


async def measure(backend: str, threads: int, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix=f"loupe-bench-export-{backend}-") as name:
        folder = Path(name)
        image_keys = synthetic_images(ContentStore(folder / "files"), 500, random.Random(1))
        async with fresh_database(backend, folder) as url:
            upgrade(url)
            seconds, written = await fill(url, threads, image_keys)
            report.add(
                backend,
                "database written",
                f"{sum(written.values()):,} rows in {seconds:.0f} s",
                f"{written['threads']:,} conversations, {written['generations']:,} answers, "
                f"{written['feedbacks']:,} ratings, {written['comparisons']:,} comparisons, "
                f"{written['corrections']:,} corrections, {written['elements']:,} images attached",
            )
            environment = {**os.environ, "LOUPE_DATABASE_URL": url, "LOUPE_DATA_DIR": str(folder)}
            for format in FORMATS:
                out = folder / format
                arguments = ["export", "--format", format, "--out", str(out), "--user-hash-salt", "salt"]
                run = run_command(arguments, environment, folder)
                summary = run.output.strip().splitlines()[-1].split(" to ")[0]  # "Wrote N rows (...) and M images"
                size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) / MiB
                verdict = "within goal" if run.seconds < GOAL_SECONDS and run.peak_mb < GOAL_MB else "OVER GOAL"
                report.add(backend, f"export {format}", f"{run.seconds:.1f} s, {run.peak_mb:.0f} MB peak", verdict)
                report.add(backend, f"  {format} output", f"{size:.0f} MiB", summary)
            run = run_command(["stats"], environment, folder)
            report.add(backend, "stats", f"{run.seconds:.1f} s, {run.peak_mb:.0f} MB peak")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100_000, help="synthetic conversations per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}")
    args = parser.parse_args(argv)
    backends = [backend for backend in args.backends.split(",") if backend]
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    print_machine(f"\nData: {SYNTHETIC}")
    report = Report()
    for backend in backends:
        asyncio.run(measure(backend, args.threads, report))
    print()
    print(report.table())
    print(f"\nload average at end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
