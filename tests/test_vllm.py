"""LOUPE_BACKEND=vllm against a real vLLM server, driven through the real app over socket.io.

The server is vLLM's CPU build from `make vllm`'s environment, started by `python -m chat vllm` on a
tiny random Qwen2-VL written as a checkpoint folder (models.checkpoint.SERVABLE_SIZE: vLLM's CPU
attention needs head_dim >= 32) with Qwen's real processor files, which the app reads too.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.adapters import adapter_version
from models.checkpoint import SERVABLE_SIZE, build_demo_model, write_checkpoint
from models.vllm_client import VLLM_PYTHON
from tests.helpers.client import ChatClient, only_answer, png
from tests.helpers.datasets import save_adapter
from tests.helpers.server import Server, free_port, start_server, stop_server

SERVED_NAME = "tiny"
VLLM_START_S = 600  # ~70 s on 2 idle cores; a shared CI machine can be several times slower
FREED_WITHIN_S = 10  # after Stop, the server's running-requests gauge must be back to 0 by then
RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", re.M)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(build_demo_model(SERVABLE_SIZE), tmp_path_factory.mktemp("checkpoint") / "qwen2-vl-tiny")


@pytest.fixture(scope="module")
def vllm_url(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m chat vllm` serving the checkpoint; its base URL (ending in /v1)."""
    if not VLLM_PYTHON.exists():
        reason = f"no vLLM environment at {VLLM_PYTHON.parent.parent} (`make vllm` installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}. CI must test the vLLM backend.")
        pytest.skip(reason)
    url = f"http://127.0.0.1:{free_port()}/v1"
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    environment = {
        **os.environ,
        "LOUPE_MODEL": str(checkpoint),
        "LOUPE_VLLM_URL": url,
        "LOUPE_VLLM_MODEL": SERVED_NAME,
        "LOUPE_CONTEXT_TOKENS": "4096",
        "LOUPE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat", "vllm"],
            env=environment,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + VLLM_START_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited during start-up:\n{log.read_text()[-5000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise RuntimeError(f"vLLM did not start within {VLLM_START_S} s:\n{log.read_text()[-5000:]}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def app(
    vllm_url: str, checkpoint: Path, adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Loupe with LOUPE_BACKEND=vllm, on the checkpoint the server serves."""
    process, server = start_server(
        tmp_path_factory.mktemp("app"),
        LOUPE_ADAPTERS_DIR=str(adapters_dir),
        LOUPE_BACKEND="vllm",
        LOUPE_MODEL=str(checkpoint),
        LOUPE_VLLM_URL=vllm_url,
        LOUPE_VLLM_MODEL=SERVED_NAME,
        LOUPE_MESSAGES_PER_MINUTE="1000",  # eight users here share one account
    )
    yield server
    stop_server(process)


GREEDY = {"temperature": 0, "max_new_tokens": 48}


async def test_an_image_question_streams_from_the_server(app: Server) -> None:
    async with ChatClient(app.url) as client:
        assert not client.greetings, "a real checkpoint: no demo notice"
        await client.change_settings(GREEDY)
        image = await client.upload("gauge.png", png(), "image/png")
        reply = await client.ask("What does the gauge read?", [image])
    assert reply.of("stream_start") and len(reply.tokens) > 1
    answer = only_answer(reply)
    record = answer["metadata"]["generation"]
    assert answer["metadata"]["ended"] == "finished" and record["completion"] == "".join(reply.tokens)
    assert record["model"] == SERVED_NAME
    # The usage the server reported: the image's visual tokens are in the prompt.
    assert record["prompt_tokens"] > 64 and 0 < record["completion_tokens"] <= 48
    assert record["time_to_first_token"] is not None and record["duration"] >= record["time_to_first_token"]


async def test_eight_users_are_served_at_once_without_a_queue(app: Server) -> None:
    async def one_user(number: int) -> tuple[float, float, list[str]]:
        async with ChatClient(app.url) as client:
            await client.change_settings(GREEDY)
            await client.send(f"Question {number}: explain the circuit.")
            await client.wait_for("stream_start")
            first_token = time.monotonic()
            reply = await client.collect()
            ended = time.monotonic()
            assert only_answer(reply)["metadata"]["ended"] == "finished"
            return first_token, ended, [message["output"] for message in client.seen_messages]

    users = await asyncio.gather(*(one_user(number) for number in range(8)))
    assert max(first for first, _, _ in users) < min(ended for _, ended, _ in users), "every answer streamed at once"
    assert not any(shown.startswith("⏳") for _, _, messages in users for shown in messages), "no queue notice"


async def test_stop_frees_the_servers_sequence(app: Server, vllm_url: str) -> None:
    metrics = vllm_url.removesuffix("/v1") + "/metrics"

    async def running() -> float:
        async with httpx.AsyncClient() as http:
            return sum(float(value) for value in RUNNING.findall((await http.get(metrics)).text))

    async with ChatClient(app.url) as client:
        await client.change_settings({"temperature": 0, "max_new_tokens": 2048})
        await client.send("Write a very long report.")
        await client.wait_for("stream_start")
        assert await running() == 1
        await client.stop()
        reply = await client.collect()
        deadline = time.monotonic() + FREED_WITHIN_S
        while await running() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await running() == 0, "the server still decodes a stopped answer"
        stopped = [m for m in reply.messages if m.get("metadata", {}).get("ended") == "stopped"]
        assert len(stopped) == 1, "the partial answer is kept, marked as stopped"
        assert (await client.ask("And now?")).tokens, "the chat goes on"


async def test_a_new_adapter_is_served_by_vllm_without_a_restart(app: Server, adapters_dir: Path) -> None:
    question = "Which bolt grade is stronger?"

    async def greedy_answer(profile: str | None) -> dict:
        async with ChatClient(app.url, profile=profile) as client:
            await client.change_settings(GREEDY)
            return only_answer(await client.ask(question))

    base = await greedy_answer(None)
    save_adapter(adapters_dir / "far-from-zero", seed=1, size=SERVABLE_SIZE)
    adapted = await greedy_answer("far-from-zero")
    record = adapted["metadata"]["generation"]
    assert (record["adapter"], record["adapter_version"]) == (
        "far-from-zero",
        adapter_version(adapters_dir / "far-from-zero"),
    )
    assert adapted["output"] != base["output"], "vLLM applied the adapter"
    assert (await greedy_answer("far-from-zero"))["output"] == adapted["output"], "the same adapter, the same answer"
