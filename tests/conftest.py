"""Shared fixtures: Qwen's real processor, the demo model, and a running Loupe server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

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


@dataclass
class Server:
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(app_root: Path, **env: str) -> tuple[subprocess.Popen, Server]:
    """`python -m chat serve` with the demo model, in its own app root so its uploads are its own."""
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
        **env,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat", "serve"], cwd=app_root, env=environment, stdout=output, stderr=output
        )
    server = Server(url=f"http://127.0.0.1:{port}", log=log)
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
