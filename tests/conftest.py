"""Shared fixtures: Qwen's real processor, the demo model, and a running Loupe server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from chainlit.context import init_http_context
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.database import create_engine, session_factory, upgrade
from chat.store.files import ContentStore
from chat.store.schema import Base
from chat.ui.datalayer import LoupeDataLayer
from chat.ui.texts import TEXTS, text
from models.checkpoint import QWEN2_VL_FILES, LoadedModel, load_model, load_processor

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def processor():
    return load_processor(QWEN2_VL_FILES)


@pytest.fixture(scope="session")
def demo() -> LoadedModel:
    return load_model("demo", device="cpu")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


ADMIN_PASSWORD = "loupe-test-admin"


@dataclass
class Server:
    url: str
    log: Path
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # the LOUPE_* settings it was started with


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app_root: Path, data_dir: Path | None = None, **env: str) -> tuple[subprocess.Popen, Server]:
    """`python -m chat serve` with the demo model, in its own app root and data directory (SQLite
    database, stored images, uploads; `data_dir` to share one), with the first user `admin` / ADMIN_PASSWORD."""
    for shared in (".chainlit", "public", "chainlit.md", "chainlit_ko.md"):
        if not (app_root / shared).exists():
            (app_root / shared).symlink_to(REPO / shared)
    port = free_port()
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
    server = Server(url=f"http://127.0.0.1:{port}", log=log, data_dir=data_dir, env=env)
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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process, running = start_server(tmp_path_factory.mktemp("app"))
    yield running
    stop_server(process)


# Databases -------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("LOUPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@asynccontextmanager
async def postgres_database(prefix: str = "loupe_test") -> AsyncIterator[str]:
    """A new, empty database on LOUPE_TEST_POSTGRES_URL's server, dropped afterwards.

    Without a server it skips the test with the reason, or fails it when CI is set: CI must test
    PostgreSQL.
    """
    import asyncpg

    admin_url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    try:
        admin = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        reason = f"PostgreSQL not reachable at {admin_url} ({error}); set LOUPE_TEST_POSTGRES_URL"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}. CI must test PostgreSQL.")
        pytest.skip(reason)
    name = f"{prefix}_{os.getpid()}_{time.monotonic_ns()}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A new, empty database on each backend, dropped after the run."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'loupe.db'}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
async def layer(migrated: str, tmp_path: Path) -> AsyncIterator[LoupeDataLayer]:
    """A data layer over an emptied database of each backend."""
    engine = create_engine(migrated)
    async with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    init_http_context()  # Chainlit's decorators look at the current session
    yield LoupeDataLayer(session_factory(engine), ContentStore(tmp_path / "files"))
    await engine.dispose()


async def thread_rows(sessions: async_sessionmaker[AsyncSession], thread_id: str) -> dict[str, list[tuple]]:
    """Every row of a thread, every column, in a stable order: to compare before and after an attack."""
    from chat.store import schema

    tables = [schema.Thread, schema.Step, schema.Element, schema.Feedback, schema.Generation]
    tables += [schema.Comparison, schema.Correction, schema.Battle]
    found = {}
    async with sessions() as session:
        for table in tables:
            key = table.id if table is schema.Thread else table.thread_id
            result = await session.execute(select(table.__table__).where(key == thread_id).order_by(table.id))
            found[table.__tablename__] = [tuple(row) for row in result]
    return found


# Answers as the page shows them ----------------------------------------------------------

# "*Answer 2 of 3*\n\n", "*답변 2 / 3*\n\n", "*Answer B*\n\n"... at the very start of a shown answer.
LABEL = re.compile(
    "|".join(
        re.escape(texts[key]).replace(r"\{number\}", r"\d+").replace(r"\{count\}", r"\d+").replace(r"\{side\}", "[AB]")
        + r"\n\n"
        for texts in TEXTS.values()
        for key in ("answer_label", "arena_label")
    )
)


def with_label(answer: str, number: int, count: int, language: str) -> str:
    """An answer as the page shows the `number`th of `count` siblings."""
    return f"{text('answer_label', language, number=number, count=count)}\n\n{answer}"


def answer_text(shown: str) -> str:
    """What the model wrote, from an answer as the page shows it: without labels and the stop marker."""
    while match := LABEL.match(shown):
        shown = shown[match.end() :]
    for texts in TEXTS.values():
        shown = shown.removesuffix(f"\n\n{texts['stopped']}")
    return shown
