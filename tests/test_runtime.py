"""The composition root: importing the app builds nothing; a runtime is built from any settings, in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path
from unittest.mock import ANY

from chat.conversation import user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompt
from chat.settings import Settings
from chat.store.accounts import check_password
from chat.ui.runtime import build_runtime
from models.backend import Ended, SamplingSettings, Usage
from tests.helpers.server import ADMIN_PASSWORD, REPO


def test_importing_the_app_loads_no_model_and_touches_no_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    environment = {**os.environ, "LOUPE_MODEL": str(tmp_path / "no-such-model"), "LOUPE_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-c", "import chat.app"], env=environment, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "DEMO" not in done.stdout + done.stderr, "no model (not even the demo fallback) was loaded"
    assert not data_dir.exists(), "no database, secret or upload folder was made"


async def test_a_runtime_is_built_in_process_from_its_own_settings(tmp_path: Path) -> None:
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
    assert runtime.image_limits.max_pixels == 64 * 28 * 28
    await runtime.start()
    try:
        assert await check_password(runtime.sessions, "admin", ADMIN_PASSWORD), "migrated, first admin created"
        assert runtime.backend.demo_reason is not None
        dtype = str(runtime.backend.loaded.model.dtype).removeprefix("torch.")
        assert runtime.status() == {"name": "demo", "demo": True, "backend": "local", "precision": ANY}
        assert runtime.status()["precision"].startswith(f"{dtype}, "), "it reports what it computes in"
        assert runtime.context_tokens == 2048
        prompt = runtime.prompts.build(system_prompt(DEFAULT_PROMPT), [user_turn("Hi", [])], 2048 - 8)
        usage = Usage()
        async with aclosing(runtime.backend.stream(prompt, SamplingSettings(0, 1, 8, 1.0), usage)) as pieces:
            answer = "".join([piece async for piece in pieces])
        assert answer and usage.ended == Ended.FINISHED and usage.completion_tokens == 8
    finally:
        await runtime.sessions.kw["bind"].dispose()
