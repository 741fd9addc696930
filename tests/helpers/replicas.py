"""Two Loupe processes behind HAProxy, as docs/deployment.md's "Several replicas" deploys them, on 127.0.0.1.

The balancer runs the shipped configuration, docs/replicas/haproxy.cfg, unchanged: only its addresses
are set, through the environment variables it reads. Both processes share one PostgreSQL database and
one data directory, and each may be stopped and started again on its port, as a restart does.
Used by tests/test_replicas.py and bench/bench_feedback.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers.requires import missing
from tests.helpers.server import REPO, free_port, start_server, stop_server

CONFIG = REPO / "docs" / "replicas" / "haproxy.cfg"
NAMES = ("loupe1", "loupe2")  # the configuration's servers, as its stickiness cookie names them
STICKY_COOKIE = "SERVERID"  # the configuration's `cookie SERVERID insert ...`
# Its health checks mark a process up after 2 checks 2 s apart; a loaded machine is slower.
SERVING_TIMEOUT_S = 30


def haproxy() -> str:
    """The haproxy program: Debian installs it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        missing("HAProxy is not installed (Debian: apt-get install haproxy)", "Loupe behind a load balancer")
    return found


@dataclass
class Replica:
    """One Loupe process, by its name in the balancer's configuration; `started` counts its starts."""

    name: str
    port: int
    process: subprocess.Popen | None = None
    started: int = 0


@dataclass
class Balanced:
    url: str  # the balancer's: where the users connect
    database_url: str
    root: Path
    data_dir: Path
    env: dict[str, str]  # what every process is started with besides start_server's own: LOUPE_* settings
    log: Path  # the balancer's
    replicas: dict[str, Replica] = field(default_factory=dict)

    def start(self, name: str) -> None:
        """Start the process `name` on its port, in a new app root (the last one's log stays for reading)."""
        replica = self.replicas[name]
        replica.started += 1
        app_root = self.root / f"{name}.{replica.started}"
        app_root.mkdir()
        replica.process, _ = start_server(app_root, self.data_dir, replica.port, **self.env)

    def stop(self, name: str) -> None:
        replica = self.replicas[name]
        if replica.process is not None:
            stop_server(replica.process)
            replica.process = None

    def serving(self, name: str) -> None:
        """Wait until the balancer sends new users to `name` again (its checks found it up)."""
        deadline = time.monotonic() + SERVING_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.url}/loupe/model", timeout=5)  # no cookie: the balancer chooses
            except httpx.TransportError:  # the balancer is not listening yet
                response = None
            if response and response.status_code == 200 and response.cookies.get(STICKY_COOKIE) == name:
                return
            time.sleep(0.2)
        raise AssertionError(f"the balancer sent nobody to {name} in {SERVING_TIMEOUT_S} s:\n{self.log.read_text()}")


@contextmanager
def balanced_replicas(root: Path, database_url: str, **env: str) -> Iterator[Balanced]:
    """Both processes started together (as a deployment starts them), then HAProxy in the foreground on a free
    port; everything stopped afterwards. Loupe trusts the balancer's X-Forwarded-For, as docs/deployment.md says to."""
    program = haproxy()
    port = free_port()
    balanced = Balanced(
        url=f"http://127.0.0.1:{port}",
        database_url=database_url,
        root=root,
        data_dir=root / "data",
        env={"LOUPE_DATABASE_URL": database_url, "LOUPE_TRUSTED_PROXIES": "127.0.0.1", **env},
        log=root / "haproxy.log",
        replicas={name: Replica(name, free_port()) for name in NAMES},
    )
    addresses = {"BALANCER_ADDRESS": f"127.0.0.1:{port}"}  # the variables the configuration reads
    for number, replica in enumerate(balanced.replicas.values(), 1):
        addresses[f"REPLICA_{number}"] = f"127.0.0.1:{replica.port}"
    with ExitStack() as stack:
        for name in NAMES:
            stack.callback(balanced.stop, name)
        with ThreadPoolExecutor(len(NAMES)) as starting:
            list(starting.map(balanced.start, NAMES))  # raises the first failure, once both are done
        with balanced.log.open("wb") as log:
            proxy = subprocess.Popen(
                [program, "-f", str(CONFIG), "-db"], env={**os.environ, **addresses}, stdout=log, stderr=log
            )
        stack.callback(stop_balancer, proxy)
        for name in NAMES:
            balanced.serving(name)
        yield balanced


def stop_balancer(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)
