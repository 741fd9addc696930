"""The whole loop on the demo model, on CPU: chat and feedback in the app -> export -> DPO training ->
the new adapter is a chat profile without a restart -> its answers are recorded as its own -> a blind
battle between it and the base model is stored and ranked on the leaderboard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_flywheel import FlywheelSettings, scenario, table
from chat.arena.leaderboard import contender_key
from models.adapters import adapter_version
from tests.helpers.client import GREEDY, ChatClient, arena_answers, listed_profiles, only_answer
from tests.helpers.server import REPO, chat, export_rows, start_server, stored

QUESTIONS = ["What does a pull-up resistor do?", "Why derate a capacitor?", "What is a Kelvin connection?"]


@pytest.mark.slow
async def test_feedback_trains_an_adapter_that_is_served_compared_and_ranked(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    (tmp_path / "app").mkdir()
    process, server = start_server(tmp_path / "app", LOUPE_ADAPTERS_DIR=str(adapters))
    try:
        # 1. Conversations with feedback: each question answered twice, the second preferred.
        async with ChatClient(server.url) as client:
            for question in QUESTIONS:
                await client.change_settings({**GREEDY, "temperature": 1.0})
                first = only_answer(await client.ask(question))
                second = only_answer(await client.regenerate(first["id"]))
                prefer = next(a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == "b")
                (await client.click(prefer)).raise_for_status()
        await stored(server, "SELECT 1 FROM comparisons", count=len(QUESTIONS))

        # 2. Export, and 3. train five DPO steps on the demo model.
        data = tmp_path / "export"
        assert len(export_rows(server, data)) == len(QUESTIONS)
        train = ["train", "--method", "dpo", "--data", str(data), "--out", str(adapters / "loop-v1"), "--base", "demo"]
        subprocess.run(
            [sys.executable, "-m", "models", *train, "--max-steps", "5", "--eval-fraction", "0"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )

        # 4. The adapter is a profile at once, and 5. answers in its chats are recorded as its own.
        assert "loop-v1" in await listed_profiles(server)
        async with ChatClient(server.url, profile="loop-v1") as client:
            await client.change_settings(GREEDY)
            answer = only_answer(await client.ask("And a pull-down resistor?"))
        [(adapter, version)] = await stored(
            server, "SELECT adapter, adapter_version FROM generations WHERE step_id = ?", answer["id"], count=1
        )
        assert (adapter, version) == ("loop-v1", adapter_version(adapters / "loop-v1"))

        # 6. A blind battle between it and the base model, stored and ranked.
        async with ChatClient(server.url, profile="Arena") as client:
            await client.change_settings(GREEDY)
            _, b = arena_answers(await client.ask("Which is better for I2C, 2.2k or 10k pull-ups?"))
            vote = next(action for action in client.actions_for(b["id"], "vote") if action["payload"]["choice"] == "b")
            (await client.click(vote)).raise_for_status()
        [contenders] = await stored(server, "SELECT contender_a, contender_b FROM battles", count=1)
        assert sorted(contenders) == ["base", "loop-v1"]
        board = chat(server, adapters, "leaderboard")
        assert f"- {contender_key('loop-v1', version)}: provisional: 1 battle" in board  # this version's record
        assert "- base: provisional: 1 battle" in board, "one battle ranks nobody yet"
    finally:
        process.terminate()
        process.wait(timeout=20)


# bench_flywheel at its smallest, without the arena: enough feedback for the signal to show, little enough for CI.
# 48 answers: with 30, one run in four had too few pairs to train on (3 DPO rows) and the adapter did not move.
SIGNAL = FlywheelSettings(users=3, questions=16, battles=0, held_out=100, steps=16)


@pytest.mark.slow
async def test_the_teams_preference_gets_through_the_loop(tmp_path: Path) -> None:
    """A team that prefers answers with Han characters gets an adapter that writes more of them, on questions it
    never asked, through the app, the export, training and the adapter's loading. A sign flipped anywhere in the
    loop (pairing, export, training) makes it write fewer."""
    [honest] = await scenario("honest", SIGNAL, tmp_path)
    assert honest.oracle_adapter["low"] > honest.oracle_base["high"], table([honest])
    assert honest.win_rate_ci[0] > 0.5, table([honest])
