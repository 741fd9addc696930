"""LOUPE_BACKEND=vllm against a real vLLM server, driven through the real app over socket.io.

The server is vLLM's CPU build from `make vllm`'s environment, started by `python -m chat vllm` on a
tiny random Qwen2-VL written as a checkpoint folder (models.checkpoint.SERVABLE_SIZE: vLLM's CPU
attention needs head_dim >= 32) with Qwen's real processor files, which the app reads too.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import openai
import pytest

from chat.prompts import DEFAULT_PROMPT, system_prompts
from models.adapters import adapter_version
from models.checkpoint import SERVABLE_SIZE, build_demo_model, load_processor, write_checkpoint
from models.control_tokens import plain_text
from models.vllm_client import VLLM_PYTHON
from tests.helpers.client import ChatClient, arena_answers, listed_profiles, only_answer, png
from tests.helpers.datasets import save_adapter, write_export
from tests.helpers.hostile import FORGED
from tests.helpers.server import REPO, Server, chat, start_server, stop_server, stored
from tests.helpers.vllm import CONTEXT_TOKENS, VllmServer

SERVED_NAME = "tiny"
FREED_WITHIN_S = 10  # after Stop, the server's running-requests gauge must be back to 0 by then
# Eight messages sent at once must all be decoding together before any of them ends. They do not reach the
# engine together: on these CPUs the first one in decodes alone while the others wait in vLLM's API server (5 s
# seen on an idle machine, 18 s in CI, longer beside another test worker). So each answer is as long as the
# context allows (LONGEST_ANSWER: alone, ~35 s), and the test waits for one of the two events, not for a clock.
LONGEST_ANSWER = CONTEXT_TOKENS - 256  # the prompt (system prompt, template, question) fits in the rest
NEITHER_WITHIN_S = 600  # all eight running, or one ended: one comes long before this, however busy the machine
# vLLM's API server shares a core with the app and the tests while eight long answers decode: in CI it once took
# over httpx's default 5 s to accept the metrics connection.
METRICS_TIMEOUT_S = 60
RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", re.M)
# Answers the server ended itself (length, stop, ...), not those a client stopped (abort).
ENDED = re.compile(r'^vllm:request_success_total\{[^}]*finished_reason="(?!abort")[^"]*"[^}]*\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(build_demo_model(SERVABLE_SIZE), tmp_path_factory.mktemp("checkpoint") / "qwen2-vl-tiny")


@pytest.fixture(scope="module")
def vllm(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if not VLLM_PYTHON.exists():
        reason = f"no vLLM environment at {VLLM_PYTHON.parent.parent} (`make vllm` installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}. CI must test the vLLM backend.")
        pytest.skip(reason)
    server = VllmServer.on(checkpoint, SERVED_NAME, tmp_path_factory.mktemp("vllm") / "vllm.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def app(
    vllm: VllmServer, checkpoint: Path, adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Loupe with LOUPE_BACKEND=vllm, on the checkpoint the server serves."""
    process, server = start_server(
        tmp_path_factory.mktemp("app"),
        LOUPE_ADAPTERS_DIR=str(adapters_dir),
        LOUPE_BACKEND="vllm",
        LOUPE_MODEL=str(checkpoint),
        LOUPE_VLLM_URL=vllm.url,
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
    assert (record["backend"], record["model"]) == ("vllm", SERVED_NAME)
    # The usage the server reported: the image's visual tokens are in the prompt.
    assert record["prompt_tokens"] > 64 and 0 < record["completion_tokens"] <= 48
    assert record["time_to_first_token"] is not None and record["duration"] >= record["time_to_first_token"]


async def test_the_api_streams_an_answer_about_an_image_from_the_server(app: Server, adapters_dir: Path) -> None:
    """Loupe's /v1 in front of vLLM: an image question streamed, stored with the server's usage, and a seed that
    the server honours (the same answer twice at temperature 1)."""
    key = chat(app, adapters_dir, "keys", "add", "admin").splitlines()[-1]
    api = openai.OpenAI(base_url=f"{app.url}/v1", api_key=key, max_retries=0)
    figure = "data:image/png;base64," + base64.b64encode(png()).decode()
    question = [
        {"type": "text", "text": "What does the gauge read?"},
        {"type": "image_url", "image_url": {"url": figure}},
    ]
    chunks = list(
        api.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=24,
            temperature=0,
        )
    )
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    [stored_record] = await stored(
        app, "SELECT backend, completion, prompt_tokens FROM generations WHERE step_id = ?", chunks[0].id, count=1
    )
    assert stored_record[:2] == ("vllm", answer) and stored_record[2] == chunks[-1].usage.prompt_tokens > 64

    def sampled(seed: int) -> str:
        asked = [{"role": "user", "content": "Name a resistor colour."}]
        reply = api.chat.completions.create(model="base", messages=asked, temperature=1, max_tokens=12, seed=seed)
        return reply.choices[0].message.content

    assert sampled(3) == sampled(3)


async def test_the_server_reads_a_question_carrying_control_tokens_as_plain_text(app: Server, checkpoint: Path) -> None:
    """The server applies the chat template itself, and would read a forged turn's control tokens as its own
    (it answers such a prompt without complaint): the prompt it counted is the question's as plain text."""
    async with ChatClient(app.url) as client:
        await client.change_settings(GREEDY)
        answer = only_answer(await client.ask(FORGED))
    assert answer["metadata"].get("ended") == "finished", answer["output"]
    processor = load_processor(checkpoint)

    def prompt_tokens(question: str) -> int:
        messages = [
            {"role": "system", "content": system_prompts()[DEFAULT_PROMPT]},
            {"role": "user", "content": question},
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(processor.tokenizer(text)["input_ids"])

    counted = answer["metadata"]["generation"]["prompt_tokens"]  # as the server reported it
    assert counted == prompt_tokens(plain_text(FORGED)) != prompt_tokens(FORGED)


async def test_the_context_is_the_servers(app: Server) -> None:
    """LOUPE_CONTEXT_TOKENS is 8192 by default; the server's max_model_len (4096 here) is what fits."""
    async with ChatClient(app.url) as client:
        await client.change_settings(GREEDY)
        [refusal] = [message["output"] for message in (await client.ask("저항기 " * 2000)).messages]
    assert refusal.startswith("Your message is too long for the model's context")
    fit = int(re.search(r"and (\d+) fit", refusal)[1])  # 4096 less the answer's 48 and the template's few tokens
    assert 4096 - 48 - 8 <= fit < 4096 - 48


async def gauges(vllm: VllmServer) -> tuple[float, float]:
    """The server's own counts: the sequences it is decoding now, and the answers it has ended (not stopped)."""
    async with httpx.AsyncClient(timeout=METRICS_TIMEOUT_S) as http:
        metrics = (await http.get(vllm.url.removesuffix("/v1") + "/metrics")).text
    return sum(map(float, RUNNING.findall(metrics))), sum(map(float, ENDED.findall(metrics)))


async def running_at_once(vllm: VllmServer, expected: int, within_s: float) -> float:
    """Polls the server's gauge until `expected` sequences decode together or `within_s` passes."""
    deadline = time.monotonic() + within_s
    while (running := (await gauges(vllm))[0]) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return running


async def all_decode_together(vllm: VllmServer, count: int) -> bool:
    """Polls the server until `count` sequences decode together (True) or one answer ends first (False). A
    queue in Loupe would end the first long answer before sending the second; no queue lets them all in, however
    slowly a busy machine's API server hands them over."""
    _, ended_before = await gauges(vllm)
    async with asyncio.timeout(NEITHER_WITHIN_S):
        while True:
            running, ended = await gauges(vllm)
            if running == count:
                return True
            if ended > ended_before:
                return False
            await asyncio.sleep(0.1)


async def test_eight_users_are_served_at_once_without_a_queue(app: Server, vllm: VllmServer) -> None:
    """Measured by the server: all eight sequences decode in one batch before any answer ends. The longest
    answers, stopped once seen together."""
    async with AsyncExitStack() as stack:
        # Logged in and set up first (each login is an argon2 check), then all eight ask at once.
        clients = [await stack.enter_async_context(ChatClient(app.url)) for _ in range(8)]
        for client in clients:
            await client.change_settings({"temperature": 0, "max_new_tokens": LONGEST_ANSWER})
        for number, client in enumerate(clients):
            await client.send(f"Question {number}: write a very long report on the circuit.")
        try:
            assert await all_decode_together(vllm, 8), "an answer ended before all eight decoded at once"
        finally:  # the eight long answers would otherwise decode on into the next test
            for client in clients:
                await client.stop()
        replies = await asyncio.gather(*(client.collect() for client in clients))
        assert await running_at_once(vllm, 0, FREED_WITHIN_S) == 0, "Stop freed all eight"
        shown = [message["output"] for client in clients for message in client.seen_messages]
    assert all(reply.of("stream_start") for reply in replies), "every user saw their answer stream"
    assert not any(output.startswith("⏳") for output in shown), "no queue notice"


async def test_stop_frees_the_servers_sequence(app: Server, vllm: VllmServer) -> None:
    async with ChatClient(app.url) as client:
        await client.change_settings({"temperature": 0, "max_new_tokens": 2048})
        await client.send("Write a very long report.")
        await client.wait_for("stream_start")
        assert await running_at_once(vllm, 1, FREED_WITHIN_S) == 1  # the gauge follows the engine with a lag
        await client.stop()
        reply = await client.collect()
        assert await running_at_once(vllm, 0, FREED_WITHIN_S) == 0, "the server still decodes a stopped answer"
        stopped = [m for m in reply.messages if m.get("metadata", {}).get("ended") == "stopped"]
        assert len(stopped) == 1, "the partial answer is kept, marked as stopped"
        await client.change_settings(GREEDY)  # a short answer: 2048 tokens take minutes on a busy machine
        assert (await client.ask("And now?")).tokens, "the chat goes on"


async def greedy_answer(app: Server, question: str, profile: str | None = None) -> dict:
    async with ChatClient(app.url, profile=profile) as client:
        await client.change_settings(GREEDY)
        return only_answer(await client.ask(question))


def served_models(vllm: VllmServer) -> set[str]:
    return {model["id"] for model in httpx.get(f"{vllm.url}/models").json()["data"]}


async def test_an_adapter_trained_by_loupe_is_served_by_vllm_and_battles_the_base(
    app: Server, checkpoint: Path, adapters_dir: Path, tmp_path: Path
) -> None:
    """`python -m models train` on the served checkpoint; the adapter is a profile at once. First of the
    adapter tests: the arena then has exactly two contenders, this adapter and the base."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=0)
    trained = adapters_dir / "trained"
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--data", str(data), "--out", str(trained)]
    command += ["--base", str(checkpoint), "--max-steps", "1", "--eval-fraction", "0"]
    command += ["--gradient-accumulation-steps", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "trained" in await listed_profiles(app), "a profile without a restart"

    answer = await greedy_answer(app, "Which bolt grade is stronger?", "trained")
    record = answer["metadata"]["generation"]
    assert answer["metadata"]["ended"] == "finished" and answer["output"], "vLLM loaded and served it"
    assert (record["backend"], record["adapter"], record["adapter_version"]) == (
        "vllm",
        "trained",
        adapter_version(trained),
    )

    async with ChatClient(app.url, profile="Arena") as client:
        await client.change_settings(GREEDY)
        a, b = arena_answers(await client.ask("Which is better for I2C, 2.2k or 10k pull-ups?"))
        vote = next(action for action in client.actions_for(b["id"], "vote") if action["payload"]["choice"] == "b")
        (await client.click(vote)).raise_for_status()
    [(contender_a, contender_b, choice)] = await stored(
        app, "SELECT contender_a, contender_b, choice FROM battles WHERE answer_a = ?", a["id"], count=1
    )
    assert sorted([contender_a, contender_b]) == ["base", "trained"] and choice == "b"
    assert {a["metadata"]["generation"]["backend"], b["metadata"]["generation"]["backend"]} == {"vllm"}


async def test_a_new_adapter_is_served_by_vllm_without_a_restart(
    app: Server, vllm: VllmServer, adapters_dir: Path
) -> None:
    question = "Which bolt grade is stronger?"
    base = await greedy_answer(app, question)
    folder = save_adapter(adapters_dir / "far-from-zero", seed=1, size=SERVABLE_SIZE)
    adapted = await greedy_answer(app, question, "far-from-zero")
    record = adapted["metadata"]["generation"]
    assert (record["adapter"], record["adapter_version"]) == ("far-from-zero", adapter_version(folder))
    assert adapted["output"] != base["output"], "vLLM applied the adapter"
    assert (await greedy_answer(app, question, "far-from-zero"))["output"] == adapted["output"], "the same answer"

    # Retrained in place: the new version is registered, the old one unloaded from the server.
    old = adapter_version(folder)
    save_adapter(folder, seed=2, size=SERVABLE_SIZE)
    retrained = await greedy_answer(app, question, "far-from-zero")
    assert retrained["metadata"]["generation"]["adapter_version"] == adapter_version(folder) != old
    assert retrained["output"] != adapted["output"], "the new weights answer"
    served = served_models(vllm)
    assert f"far-from-zero-{adapter_version(folder)}" in served and f"far-from-zero-{old}" not in served


async def test_an_adapter_the_server_refuses_is_explained_in_the_chat(app: Server, adapters_dir: Path) -> None:
    """Rank 128 is above the server's --max-lora-rank (64)."""
    folder = save_adapter(adapters_dir / "too-wide", seed=3, size=SERVABLE_SIZE, rank=128)
    try:
        async with ChatClient(app.url, profile="too-wide") as client:
            await client.change_settings(GREEDY)
            [refusal] = (await client.ask("Which bolt grade is stronger?")).messages
        assert refusal["output"] == (
            f"The model server cannot use this profile's adapter: too-wide-{adapter_version(folder)}: "
            "LoRA rank 128 is greater than max_lora_rank 64. Choose another profile."
        ), "the server's reason, and what to do"
        assert (await greedy_answer(app, "And the base model?"))["output"], "other profiles keep working"
    finally:
        shutil.rmtree(folder)


async def test_the_server_going_away_mid_answer_is_explained_and_the_chat_recovers(
    app: Server, vllm: VllmServer
) -> None:
    """Last in this module: it kills the server, then starts it again."""
    async with ChatClient(app.url) as client:
        await client.change_settings({"temperature": 0, "max_new_tokens": 2048})
        await client.send("Write a very long report.")
        await client.wait_for("stream_start")
        await asyncio.to_thread(vllm.stop, signal.SIGKILL)
        reply = await client.collect()
        partial, notice = reply.messages
        assert partial["metadata"]["ended"] == "error" and partial["output"], "the partial answer stays, as failed"
        assert partial["metadata"]["generation"]["completion"] == partial["output"]
        assert notice["output"].startswith("The model server is not answering right now")
        assert (await client.ask("Still there?")).messages[0]["output"].startswith("The model server is not answering")
        await asyncio.to_thread(vllm.start)
        await client.change_settings(GREEDY)
        assert (await client.ask("And now?")).tokens, "the chat works again once the server is back"
