"""Shared fixtures: Qwen's real processor, the demo model, and a running Loupe server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from chainlit.context import init_http_context

from chat.database import create_engine, session_factory, upgrade
from chat.datalayer import LoupeDataLayer
from chat.schema import Base
from chat.storage import ContentStore
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app_root: Path, **env: str) -> tuple[subprocess.Popen, Server]:
    """`python -m chat serve` with the demo model, in its own app root (uploads) and data directory
    (SQLite database, stored images), with the first user `admin` / ADMIN_PASSWORD."""
    for shared in (".chainlit", "public", "chainlit.md", "chainlit_ko.md"):
        (app_root / shared).symlink_to(REPO / shared)
    port = free_port()
    log = app_root / "server.log"
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LOUPE_MODEL": "demo",
        "LOUPE_PORT": str(port),
        "LOUPE_HOST": "127.0.0.1",
        "LOUPE_DATA_DIR": str(app_root / ".data"),
        "LOUPE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        **env,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat", "serve"], cwd=app_root, env=environment, stdout=output, stderr=output
        )
    server = Server(url=f"http://127.0.0.1:{port}", log=log, data_dir=app_root / ".data")
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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process, running = start_server(tmp_path_factory.mktemp("app"))
    yield running
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


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
