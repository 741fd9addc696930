"""A private PostgreSQL server for tests that stop and start it: the shared one on 5432 is never touched.

Made with the cluster tools of the PostgreSQL installed on the machine (initdb, pg_ctl), in its own
folder, on its own port, trusting local connections. PostgreSQL refuses to run as root, so as root
(CI, these machines) its tools run as the `postgres` user, which owns the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.requires import missing
from tests.helpers.server import free_port

START_TIMEOUT_S = 60


def _tool(name: str) -> str:
    """A PostgreSQL program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        missing(f"PostgreSQL's {name} is not installed (Debian: the postgresql package)", "database outages")
    return found


@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *command], check=True, capture_output=True, timeout=START_TIMEOUT_S)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_tool("pg_ctl"), "-D", str(self.folder / "data"), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """Stop at once, as a crash or a failover does: every connection is cut mid-transaction."""
        self._run(_tool("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    async def new_database(self, name: str) -> str:
        """A new, empty database on this server, by its SQLAlchemy URL."""
        import asyncpg

        admin = await asyncpg.connect(self.url.replace("+asyncpg", ""))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A new PostgreSQL server, started; stopped and deleted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="loupe-pg-"))  # not under pytest's tmp_path, which only root may enter
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(folder, postgres.pw_uid, postgres.pw_gid)
    cluster = Cluster(folder, free_port())
    try:
        cluster._run(_tool("initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "--no-sync")
        cluster.start()
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError):  # stopped already, or never started
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
