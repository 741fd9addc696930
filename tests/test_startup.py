"""Processes starting together: replicas of one deployment, or `make run` beside `python -m chat migrate`.

Each of them migrates the one database and reads the one login secret, and an admin may promote a profile
while servers read it. Real processes on real SQLite and PostgreSQL; a race without a lock lost most trials.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from chat.store.accounts import SECRET_FILE, SecretUnavailable, auth_secret
from chat.store.database import MIGRATIONS, create_engine
from chat.store.schema import Base
from tests.helpers.databases import postgres_database
from tests.helpers.server import REPO

AT_ONCE = 4  # processes started together: without the migration lock, 4 of 4 trials failed on both databases
SECRET_TRIALS = 20  # fresh data directories raced for; the secret made in two steps lost about 1 in 15
# How long a racer waits for the others (they start in seconds): a racer that died fails the test, not hangs it.
RACER_WAIT_S = 60
PROMOTIONS = 300  # promotions under a reader's eyes; a promotion written in place was seen torn within them


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_processes_migrating_at_once_all_succeed_and_migrate_once(database: str, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        if database == "postgresql":
            url = await stack.enter_async_context(postgres_database())
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'loupe.db'}"
        environment = {**os.environ, "PYTHONPATH": str(REPO), "LOUPE_DATABASE_URL": url}
        migrations = [
            subprocess.Popen(
                [sys.executable, "-m", "chat", "migrate"],
                cwd=REPO,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(AT_ONCE)
        ]
        outputs = [migration.communicate(timeout=180)[0] for migration in migrations]
        assert [migration.returncode for migration in migrations] == [0] * AT_ONCE, "\n".join(outputs)
        assert all("The database schema is up to date." in output for output in outputs), outputs
        versions, tables = await _schema(url)
        assert versions == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]
        assert tables >= {table.name for table in Base.metadata.sorted_tables}


async def _schema(url: str) -> tuple[list[str], set[str]]:
    """The revisions alembic_version holds, and the tables there are."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            versions = list(await connection.scalars(text("SELECT version_num FROM alembic_version")))
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return versions, tables


def read_secrets(data_dirs: list[Path], start: Any, secrets: Any) -> None:
    """In each of the racing processes: at the same moment as the others, read each data directory's secret
    (or say why it could not)."""
    for data_dir in data_dirs:
        start.wait(timeout=RACER_WAIT_S)
        try:
            secrets.put((data_dir, auth_secret(data_dir)))
        except (OSError, SecretUnavailable) as error:
            secrets.put((data_dir, repr(error)))


def test_processes_making_the_login_secret_at_once_all_read_the_first_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAINLIT_AUTH_SECRET", raising=False)  # the racers inherit the environment
    data_dirs = [tmp_path / f"data-{trial}" for trial in range(SECRET_TRIALS)]
    processes = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second server is
    start, secrets = processes.Barrier(AT_ONCE), processes.Queue()
    racers = [processes.Process(target=read_secrets, args=(data_dirs, start, secrets)) for _ in range(AT_ONCE)]
    for racer in racers:
        racer.start()
    read = [secrets.get(timeout=RACER_WAIT_S) for _ in range(AT_ONCE * SECRET_TRIALS)]
    for racer in racers:
        racer.join(timeout=30)
    assert [racer.exitcode for racer in racers] == [0] * AT_ONCE
    for data_dir in data_dirs:
        stored = (data_dir / SECRET_FILE).read_text()
        assert stored, "never empty"
        assert [secret for where, secret in read if where == data_dir] == [stored] * AT_ONCE, data_dir
        assert [path.name for path in data_dir.iterdir()] == [SECRET_FILE], "no temporary file is left"
        assert (data_dir / SECRET_FILE).stat().st_mode & 0o777 == 0o600, "only its owner may read it"


# Reads the promotion file as a server does on every page load, as fast as it can, until told to stop.
READER = """
import json, sys
from pathlib import Path

promoted, stop = Path(sys.argv[1]), Path(sys.argv[2])
reads, torn = 0, []
print("reading", flush=True)
while not stop.exists():
    reads += 1
    try:
        json.loads(promoted.read_text())["adapter"]
    except (OSError, ValueError, KeyError) as error:
        torn.append(repr(error))
print(json.dumps({"reads": reads, "torn": torn}))
"""


def test_a_promotion_is_never_seen_half_written(tmp_path: Path) -> None:
    """A server reads promoted.json on every page load while `python -m chat promote` writes it."""
    # Imported here, not above: the secret's racers import this module, and need no torch (models.adapters).
    from chat.arena.profiles import PROMOTED_FILE, Profiles
    from chat.store.generations import BASE
    from models.adapters import AdapterDirectory

    (tmp_path / "adapters" / "engineering-v1").mkdir(parents=True)
    (tmp_path / "adapters" / "engineering-v1" / "adapter_config.json").write_text("{}")
    data_dir, stop = tmp_path / "data", tmp_path / "stop"
    profiles = Profiles(AdapterDirectory(tmp_path / "adapters"), data_dir, None)
    profiles.promote(BASE)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(data_dir / PROMOTED_FILE), str(stop)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline() == "reading\n"
    for promotion in range(PROMOTIONS):
        profiles.promote(["engineering-v1", BASE][promotion % 2])
    stop.touch()
    seen = json.loads(reader.communicate(timeout=30)[0])
    assert seen["reads"] > PROMOTIONS, "it read while the promotions were written"
    assert seen["torn"] == []
    assert profiles.promoted() == BASE
    assert [path.name for path in data_dir.iterdir()] == [PROMOTED_FILE], "no temporary file is left"
