"""The composition root: importing the app builds nothing; a runtime is built from any settings, in-process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from unittest.mock import ANY

import httpx
import pytest
from fastapi import FastAPI

from chat.conversation import user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompt
from chat.settings import Settings
from chat.ui.routes import STARTING
from chat.ui.runtime import build_runtime
from models.backend import Ended, SamplingSettings, Usage
from models.checkpoint import QWEN2_VL_FILES
from tests.helpers.server import ADMIN_PASSWORD, REPO, free_port


def test_importing_the_app_loads_no_model_and_touches_no_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    environment = {**os.environ, "LOUPE_MODEL": str(tmp_path / "no-such-model"), "LOUPE_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", "import chat.app"], env=environment, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "DEMO" not in done.stdout + done.stderr, "no model (not even the demo fallback) was loaded"
    assert not data_dir.exists(), "no database, secret or upload folder was made"


async def test_a_runtime_is_built_in_process_from_its_own_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        model="demo",
        device="cpu",
        data_dir=tmp_path,
        context_tokens=2048,
        max_pixels=64 * 28 * 28,
        admin_password=ADMIN_PASSWORD,
    )
    runtime = build_runtime(settings)
    assert not (tmp_path / "loupe.db").exists(), "building connects to nothing"
    await runtime.start()
    try:
        assert runtime.image_limits.budget.max_pixels == 64 * 28 * 28
        assert await runtime.password_checks.check("admin", ADMIN_PASSWORD), "migrated, first admin created"
        assert runtime.backend.demo_reason is not None
        assert "Serving the DEMO model (random weights, answers are noise) because LOUPE_MODEL is set to 'demo'" in (
            caplog.text
        )
        dtype = str(runtime.backend.loaded.model.dtype).removeprefix("torch.")
        assert runtime.status() == {"name": "demo", "demo": True, "backend": "local", "precision": ANY}
        assert runtime.status()["precision"].startswith(f"{dtype}, "), "it reports what it computes in"
        assert runtime.answering.context_tokens == 2048
        prompt = runtime.answering.prompts.build(system_prompt(DEFAULT_PROMPT), [user_turn("Hi", [])], 2048 - 8)
        usage = Usage()
        async with aclosing(runtime.backend.stream(prompt, SamplingSettings(0, 1, 8, 1.0), usage)) as pieces:
            answer = "".join([piece async for piece in pieces])
        assert answer and usage.ended == Ended.FINISHED and usage.completion_tokens == 8
    finally:
        await runtime.sessions.kw["bind"].dispose()


async def test_the_model_status_answers_503_until_the_runtime_has_started(tmp_path: Path) -> None:
    """What a load balancer or the page polls: 'starting' with a 503 and a clear body, never a 500."""
    runtime = build_runtime(Settings(model="demo", device="cpu", data_dir=tmp_path, admin_password=ADMIN_PASSWORD))
    app = FastAPI()
    runtime.add_routes_to(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://loupe") as client:
        starting = await client.get("/loupe/model")
        assert starting.status_code == 503
        assert starting.json() == {"detail": STARTING} and starting.headers["retry-after"]
        await runtime.start()
        try:
            started = await client.get("/loupe/model")
            assert started.status_code == 200 and started.json()["name"] == "demo"
        finally:
            await runtime.sessions.kw["bind"].dispose()


NOTHING_LISTENS = "http://127.0.0.1:9/v1"  # the discard port: no server there
UNKNOWN_REVISION = "feedfacecafe"  # no migration of Loupe's: what a newer Loupe's migration would leave


def at_a_revision_of_none_of_ours(data_dir: Path) -> dict[str, str]:
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "loupe.db") as database:
        database.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        database.execute("INSERT INTO alembic_version VALUES (?)", (UNKNOWN_REVISION,))
    return {}


def with_an_empty_secret(data_dir: Path) -> dict[str, str]:
    """What a Loupe that created its secret in two steps left when it died between them."""
    data_dir.mkdir()
    (data_dir / "auth_secret").touch()
    return {"CHAINLIT_AUTH_SECRET": ""}  # the tests' own environment may carry one


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (  # the test server trusts local users: the password is not checked, only kept out of the log
            lambda _: {"LOUPE_DATABASE_URL": "postgresql+asyncpg://postgres:hunter2@127.0.0.1:5432/loupe_no_such_db"},
            "cannot connect to the database postgresql+asyncpg://postgres:***@127.0.0.1:5432/loupe_no_such_db "
            '(database "loupe_no_such_db" does not exist); check LOUPE_DATABASE_URL',
        ),
        (
            at_a_revision_of_none_of_ours,
            f"is at a revision this Loupe does not have (Can't locate revision identified by '{UNKNOWN_REVISION}')",
        ),
        (with_an_empty_secret, "auth_secret is empty; delete it"),
        (
            lambda _: {
                "LOUPE_BACKEND": "vllm",
                "LOUPE_MODEL": str(QWEN2_VL_FILES),
                "LOUPE_VLLM_URL": NOTHING_LISTENS,
            },
            f"no vLLM server answers at {NOTHING_LISTENS}",
        ),
    ],
    ids=["no such database", "unknown revision", "empty secret", "model"],
)
def test_a_start_up_that_fails_ends_the_process_with_the_reason(
    tmp_path: Path, prepare: Callable[[Path], dict[str, str]], reason: str
) -> None:
    """Chainlit logs a failing start-up hook and serves on; Loupe must stop instead, and never answer a 500. So
    must a failure before Chainlit starts (the login secret), with the same one line."""
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "LOUPE_MODEL": "demo",
        "LOUPE_DATA_DIR": str(tmp_path / "data"),
        "LOUPE_PORT": str(port),
        **prepare(tmp_path / "data"),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "chat", "serve"], cwd=REPO, env=environment, stderr=output)
    answers = []
    deadline = time.monotonic() + 120  # the demo model or the processor loads in seconds
    while process.poll() is None and time.monotonic() < deadline:
        try:
            answers.append(httpx.get(f"http://127.0.0.1:{port}/loupe/model", timeout=2).status_code)
        except httpx.TransportError:
            time.sleep(0.2)
    if process.poll() is None:
        process.kill()
        pytest.fail(f"still running after its start-up failed, answering {answers[-3:]}:\n{log.read_text()[-3000:]}")
    said = [line for line in log.read_text().splitlines() if line.startswith("Loupe could not start: ")]
    assert process.returncode == 1
    assert said and reason in said[0], log.read_text()[-3000:]
    assert answers == [], "it never served"
