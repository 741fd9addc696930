"""A Loupe server for tests and benchmarks: started headless on the demo model in its own folder,
its command line run against its data, and its SQLite database read once Chainlit's writes land."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.database import create_engine, session_factory
from tests.helpers.databases import postgres_database

REPO = Path(__file__).resolve().parents[2]


ADMIN_PASSWORD = "loupe-test-admin"


@dataclass
class Server:
    url: str
    log: Path
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # the LOUPE_* settings it was started with
    pid: int = 0  # its process, whose memory the hostile-input tests watch


# Each pytest-xdist worker (make test runs several) takes its servers' ports from its own block, below the
# kernel's ephemeral ports (32768 and up): two workers never pick the same free port, nor a client socket's.
# A second test run on the same machine sets LOUPE_TEST_PORTS to another base (e.g. 26000), or its servers
# could take the first run's ports between its probe and its bind.
PORTS_PER_WORKER = 1000
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_ports = itertools.count(int(os.environ.get("LOUPE_TEST_PORTS", "20000")) + PORTS_PER_WORKER * WORKER)


def free_port() -> int:
    """A port nothing listens on, from this process's block; never the same one twice."""
    while True:
        port = next(_ports)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # in use
                continue
            return port


def provide_app_files(app_root: Path) -> None:
    """Chainlit's files, which it reads from the app root: its configuration and public/, linked, and the
    Readmes (chainlit*.md), copied: Chainlit shows a Readme only if its real path is inside the app root."""
    for shared in (".chainlit", "public"):
        if not (app_root / shared).exists():
            (app_root / shared).symlink_to(REPO / shared)
    for readme in REPO.glob("chainlit*.md"):
        if not (app_root / readme.name).exists():
            shutil.copyfile(readme, app_root / readme.name)


def start_server(
    app_root: Path, data_dir: Path | None = None, port: int | None = None, **env: str
) -> tuple[subprocess.Popen, Server]:
    """`python -m chat serve` with the demo model, in its own app root and data directory (SQLite
    database, stored images, uploads; `data_dir` to share one), with the first user `admin` / ADMIN_PASSWORD;
    on a free port, or on `port` (a server started again where a load balancer expects it)."""
    provide_app_files(app_root)
    port = port or free_port()
    log = app_root / f"server-{port}.log"
    data_dir = data_dir or app_root / ".data"
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LOUPE_MODEL": "demo",
        "LOUPE_PORT": str(port),
        "LOUPE_HOST": "127.0.0.1",
        "LOUPE_DATA_DIR": str(data_dir),
        "LOUPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **env,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat", "serve"], cwd=app_root, env=environment, stdout=output, stderr=output
        )
    server = Server(url=f"http://127.0.0.1:{port}", log=log, data_dir=data_dir, env=env, pid=process.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Loupe exited during start-up:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/loupe/model", timeout=2).status_code == 200:
                return process, server
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"Loupe did not start within 120 s:\n{log.read_text()}")


@dataclass
class Running:
    """A server and its database, to read what it stored."""

    server: Server
    sessions: async_sessionmaker[AsyncSession]


async def serve(stack: AsyncExitStack, database: str, app_root: Path, **env: str) -> Running:
    """A Loupe server on a new database of `database`'s kind ("sqlite" or "postgresql"), stopped when `stack`
    closes: what the suites that attack a running server on both databases start."""
    if database == "postgresql":
        url = env["LOUPE_DATABASE_URL"] = await stack.enter_async_context(postgres_database())
    else:
        url = f"sqlite+aiosqlite:///{app_root / '.data' / 'loupe.db'}"
    process, server = await asyncio.to_thread(start_server, app_root, **env)
    stack.callback(stop_server, process)
    engine = create_engine(url)
    stack.push_async_callback(engine.dispose)
    return Running(server, session_factory(engine))


def add_account(server: Server, name: str, password: str, action: str = "add") -> None:
    """`python -m chat users add NAME` (or `passwd NAME`) against the server's database."""
    subprocess.run(
        [sys.executable, "-m", "chat", "users", action, name],
        input=password,
        text=True,
        check=True,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "LOUPE_DATA_DIR": str(server.data_dir), **server.env},
    )


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM (Chainlit's shutdown drains writes under way); SIGKILL after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rows(server, query: str, *parameters: Any) -> list[tuple]:
    with sqlite3.connect(server.data_dir / "loupe.db") as database:
        return database.execute(query, parameters).fetchall()


async def stored(server, query: str, *parameters: Any, count: int) -> list[tuple]:
    """The rows of `query` once there are `count` (Chainlit writes steps in background tasks)."""
    for _ in range(100):
        if len(found := rows(server, query, *parameters)) >= count:
            return found
        await asyncio.sleep(0.1)
    return found


def export_rows(server, out: Path, format: str = "trl-dpo") -> list[dict[str, Any]]:
    """`python -m chat export` of everything in the server's database, as the rows written."""
    subprocess.run(
        [sys.executable, "-m", "chat", "export", "--format", format, "--out", str(out)],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LOUPE_DATA_DIR": str(server.data_dir)},
    )
    return [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]


async def generations(server, thread_id: str, expected: int) -> list[dict]:
    """The thread's generation records, once `expected` are stored (Chainlit writes steps in tasks
    that may finish after the answer has reached the client)."""
    for _ in range(100):
        with sqlite3.connect(server.data_dir / "loupe.db") as database:
            rows = database.execute(
                "SELECT prompt_tokens, settings FROM generations WHERE thread_id = ? ORDER BY created_at", (thread_id,)
            ).fetchall()
        if len(rows) >= expected:
            break
        await asyncio.sleep(0.1)
    return [{"prompt_tokens": tokens, "settings": json.loads(settings)} for tokens, settings in rows]


def chat(server: Server, adapters_dir: Path, *args: str, fails: bool = False) -> str:
    """`python -m chat ...` on the server's data directory and adapters: what it printed, or with `fails`,
    what it printed on failing (it must fail)."""
    environment = {"LOUPE_DATA_DIR": str(server.data_dir), "LOUPE_ADAPTERS_DIR": str(adapters_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "chat", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **environment},
    )
    if fails:
        assert done.returncode != 0, done.stdout
        return done.stderr
    assert done.returncode == 0, done.stderr
    return done.stdout
