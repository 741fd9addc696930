"""Shared fixtures: Qwen's real processor, the demo model, and a running Loupe server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from chainlit.context import init_http_context

from chat.settings import Settings
from chat.store.database import create_engine, session_factory, upgrade
from chat.store.files import ContentStore
from chat.store.schema import Base
from chat.ui.datalayer import LoupeDataLayer
from models.checkpoint import FAMILY_FILES, QWEN2_VL_FILES, LoadedModel, load_model, load_processor, vendored_processor
from tests.helpers.databases import postgres_database
from tests.helpers.server import REPO, Server, start_server, stop_server

ARTIFACTS = REPO / "test-artifacts"
# The files that take longest, from CI's durations (2026-12-08, 2 workers: minutes of work each, 56 in all),
# started first so that the two workers of `make test` end together, not one of them alone on a long file. The
# others follow in collection order.
LONGEST_FIRST = (
    "test_vllm.py",  # 6.4
    "test_flywheel.py",  # 4.2
    "test_api.py",  # 3.8
    "test_load.py",  # 6.4: not beside test_vllm.py's eight long answers, whose timing both depend on
    "test_hostile.py",  # 3.5
    "test_browser.py",  # 3.1
    "test_train.py",  # 3
    "test_login_attacks.py",  # 2.7
    "test_outages.py",  # 2.7
    "test_signin.py",  # 2.5
    "test_training_processes.py",  # 2.4 with DeepSpeed's two runs
    "test_family.py",  # 2.1
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """LONGEST_FIRST's files first (each file's tests stay in their order: a sort by file alone is stable)."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def processor():
    return load_processor(QWEN2_VL_FILES)


@pytest.fixture(scope="session", params=sorted(FAMILY_FILES))
def family_processor(request: pytest.FixtureRequest):
    """The real processor of each supported Qwen-VL family (models/checkpoint.py, FAMILY_FILES)."""
    return vendored_processor(FAMILY_FILES[request.param])


@pytest.fixture(scope="session")
def demo() -> LoadedModel:
    return load_model("demo", device="cpu")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process, running = start_server(tmp_path_factory.mktemp("app"))
    yield running
    stop_server(process)


# Databases -------------------------------------------------------------------------------


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
    yield LoupeDataLayer(session_factory(engine), ContentStore(tmp_path / "files"), Settings().write_retry_s)
    await engine.dispose()


# Answers as the page shows them ----------------------------------------------------------
