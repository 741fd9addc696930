"""Prove the loop: a simulated team's feedback, taken through the real app, export, training, arena and promotion,
makes the next adapter do more of what the team prefers; and the same team with its preference reversed makes it
do less (so the measurement is not an artefact of training itself).

The team shares one hidden preference, judged by an oracle of the answer's text that is not style (not length
or markdown, which the leaderboard's style control discounts): the share of the answer's characters that are
Han ideographs (a team that wants its answers in Chinese). The demo model writes some in about a quarter of its
answers. Each scenario is one fresh app process on the demo model, driven over socket.io and HTTP as the page
drives it, for one round or more (`--rounds`):

1. every user asks questions (some with an image, some with a PDF), with sampled answers (temperature 1); for each
   answer they Regenerate and compare the two, or give a thumb with a reason (and now and then write the answer
   wanted), or leave it unrated, by the oracle;
2. `python -m chat export` (DPO and KTO) of the feedback on the current default model's answers, `python -m
   models train` (DPO, from that model, a fifth of the prompts held out) and `python -m models evaluate`; the
   adapter is a profile at once;
3. held out: questions never asked in the app, answered by base and adapter in-process with the app's sampling;
   `win_rate` is the share of head-to-head comparisons the oracle prefers the adapter's answer in (a tie is half
   a win), with a 95% Wilson interval;
4. the same users battle in the arena (honest votes by the oracle), `python -m chat leaderboard --json`, and
   `python -m chat promote NAME` without --force decides; a promoted adapter is what the next round's chats use.

Scenarios: `honest` (the oracle as is); `hostile` (a fifth of the members, each ten times as active, against the
oracle, and trying other members' answers and battles by their ids); `reversed` (everyone prefers less Han: the
control).

    .venv/bin/python -m bench.bench_flywheel --quick --json out.json --plot out.png
    .venv/bin/python -m bench.bench_flywheel --json full.json --plot bench/flywheel.png   # the full run
    .venv/bin/python -m bench.bench_flywheel --scenarios honest --rounds 2

The demo model learns only because its vocabulary is grouped by writing system (models/checkpoint.py,
group_by_script); training uses a learning rate fit for a tiny random model, not TRL's 5e-6 for a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from bench.bench_chat import machine_details
from chat.prompts import system_prompt
from chat.store.generations import BASE
from chat.ui.runtime import MESSAGE_WINDOW_S
from models.checkpoint import DEMO, LoadedModel, load_model
from models.control_tokens import control_tokens
from tests.helpers.client import ChatClient, Reply, arena_answers, png
from tests.helpers.hostile import FORGED
from tests.helpers.load import Account, add_accounts, sqlite_url
from tests.helpers.pdfs import text_pdf
from tests.helpers.server import REPO, Server, start_server, stop_server

HAN = re.compile(r"[\u4e00-\u9fff]")  # CJK Unified Ideographs
# The share of the DPO export's prompts training holds out, for `models evaluate`'s preference accuracy.
EVAL_FRACTION = 0.2
# What every user asks with: sampled answers, as the team samples them, short enough for a CPU.
ANSWER_TOKENS = 32
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "repetition_penalty": 1.0, "max_new_tokens": ANSWER_TOKENS}
# The team's assistant style: the shortest system prompt. Training on a CPU spends most of its time on the
# vocabulary's 151,000 logits at every position, the prompt's included: the engineering style's doubles it.
STYLE = "concise"
# Corrections a user writes: the answer they wanted, in the language the oracle prefers.
CORRECTIONS = {
    True: "电阻限制电流 电容滤除噪声",
    False: "The resistor limits the current; the capacitor filters noise.",
}
PARTS = [
    "pull-up resistor", "decoupling capacitor", "flyback diode", "gate driver", "current shunt", "ferrite bead",
    "TVS diode", "buck converter", "LDO regulator", "optocoupler", "crystal oscillator", "relay coil",
    "thermistor", "op-amp buffer", "H-bridge", "bootstrap capacitor", "snubber", "Zener clamp",
    "level shifter", "watchdog timer",
]  # fmt: skip
SCENARIOS = ("honest", "hostile", "reversed")
HOSTILE = "hostile"  # the account names' prefix of hostile members
HOSTILE_ACTIVITY = 10  # a hostile member asks, and battles, ten times as much as an honest one
ROUND_QUESTIONS = 10_000  # question numbers a round may use: its questions never repeat another round's
ARENA_QUESTIONS = 5_000  # from here in a round's numbers: the arena's questions
HELD_OUT_QUESTIONS = 10**7  # and far beyond any round's: the held-out questions, never asked in the app
ASKS = ["What does a {} do?", "How do I size a {}?", "What fails first in a {}?", "Why add a {} here?"]


# The oracle -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oracle:
    """The team's hidden preference: more Han in an answer (or, reversed, less)."""

    wants_more: bool = True

    @staticmethod
    def score(text: str) -> float:
        """The share of the answer's non-blank characters that are Han: its length does not count."""
        characters = [c for c in text if not c.isspace()]
        return sum(bool(HAN.match(c)) for c in characters) / len(characters) if characters else 0.0

    def prefers(self, a: str, b: str) -> str:
        """Which of two answers is better: "a", "b" or "tie", as the comparison and vote buttons name them."""
        difference = (self.score(a) - self.score(b)) * (1 if self.wants_more else -1)
        return "a" if difference > 0 else "b" if difference < 0 else "tie"

    def liked(self, text: str) -> bool:
        """A thumb up: some Han (or, reversed, none)."""
        return (self.score(text) > 0) == self.wants_more


# Settings -------------------------------------------------------------------------------------------------


@dataclass
class FlywheelSettings:
    users: int = 12
    questions: int = 16  # per user, each its own prompt
    battles: int = 12  # arena battles per user
    held_out: int = 240  # held-out comparisons, at least 200 for the interval to mean anything
    image_share: float = 0.25  # questions asked with an image
    pdf_share: float = 0.1  # questions asked with a one-page PDF, which goes into the user's library
    rounds: int = 1  # each trains on the feedback the model promoted last got, from that model
    steps: int = 40  # optimizer steps of 4 rows: a few epochs of what a round exports
    learning_rate: float = 1e-3  # a tiny random model's; TRL's 5e-6 for LoRA DPO moves it nowhere in so few steps
    arena_min_battles: int = 50  # LOUPE_ARENA_MIN_BATTLES: the team's setting promote applies
    hostile: float = 0.2  # the share of users who are hostile in the "hostile" scenario
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0
    json: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> FlywheelSettings:
        """Fewer users, questions, battles and steps, and the 200 held-out comparisons the interval needs: under
        20 minutes on an idle 2-core machine. Six users give 36 battles: promote asks for 20 here."""
        return cls(
            **{
                "users": 6,
                "questions": 16,
                "battles": 6,
                "steps": 24,
                "held_out": 200,
                "arena_min_battles": 20,
                **overrides,
            }
        )


# Measures -------------------------------------------------------------------------------------------------


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (ties counted as half a success)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mean_interval(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1) / len(values))
    return {"mean": mean, "low": mean - 1.96 * spread, "high": mean + 1.96 * spread}


@dataclass
class Stage:
    seconds: float = 0.0
    peak_rss_mib: float = 0.0  # the stage's command's, or this process's peak so far for in-process stages


@dataclass
class Result:
    scenario: str
    round: int = 1
    adapter: str = ""  # the round's new adapter (team-vN)
    trained_from: str = ""  # the model new chats started with during the round: base or an earlier adapter
    win_rate: float = 0.0
    win_rate_ci: tuple[float, float] = (0.0, 1.0)
    comparisons: int = 0
    oracle_base: dict[str, float] = field(default_factory=dict)
    oracle_adapter: dict[str, float] = field(default_factory=dict)
    # Per format: rows written, what the export said, and rows holding a chat-template control token (a forged
    # turn, as hostile corrections write them): 0, as the export breaks every one (models/control_tokens.py).
    export: dict[str, Any] = field(default_factory=dict)
    preference_accuracy: dict[str, Any] = field(default_factory=dict)  # models evaluate, base and adapter
    training: dict[str, Any] = field(default_factory=dict)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    battles_not_counted: dict[str, int] = field(default_factory=dict)  # vote hygiene's reasons
    promoted: bool = False
    not_theirs: dict[str, int] = field(default_factory=dict)  # judgements in others' conversations: all 0
    promote_said: str = ""
    feedback: dict[str, int] = field(default_factory=dict)  # what the members did, by kind
    stages: dict[str, Stage] = field(default_factory=dict)


# The team in the app --------------------------------------------------------------------------------------


def questions_for(user: int, count: int, offset: int = 0) -> list[str]:
    """Distinct prompts per user (the export and the arena count one per user and prompt)."""
    return [f"{ASKS[(user + i) % len(ASKS)].format(PARTS[(3 * user + i) % len(PARTS)])} (case {offset + i})"
            for i in range(count)]  # fmt: skip


def answers_in(reply: Reply) -> list[dict[str, Any]]:
    """The answers among a reply's messages (a queue notice may come first: the demo answers one at a time)."""
    return [message for message in reply.messages if message.get("metadata", {}).get("generation")]


def refused(reply: Reply, tally: Counter[str], who: str) -> None:
    """Tally a question the app did not answer under what it said instead (a limit's notice; not the queue's),
    its numbers blanked."""
    answers = answers_in(reply)
    notices = [m["output"] for m in reply.messages if m not in answers and not m["output"].startswith("⏳")]
    said = notices[0] if notices else "nothing"
    tally[f"{who} refused: {re.sub(r'[0-9]+', 'N', said.split('.')[0])[:70]}"] += 1


def first_answer(reply: Reply, tally: Counter[str], who: str) -> dict[str, Any] | None:
    """The reply's answer; None where the app refused the question (tallied)."""
    if answers := answers_in(reply):
        return answers[0]
    refused(reply, tally, who)
    return None


def arena_texts(reply: Reply, tally: Counter[str], who: str) -> tuple[dict[str, Any], str, str] | None:
    """Answer B (its buttons hold the vote) and the texts of A and B without their labels; None where the app
    refused the question (tallied)."""
    if len(answers_in(reply)) < 2:
        refused(reply, tally, who)
        return None
    a, b = arena_answers(reply)
    return b, a["output"].split("\n\n", 1)[-1], b["output"].split("\n\n", 1)[-1]


@dataclass
class Team:
    """What the members share: the oracle, the settings, a tally of what they did, and the answers of honest
    members whose ids a hostile member learns (ids travel in links, screenshots and logs)."""

    oracle: Oracle
    settings: FlywheelSettings
    tally: Counter[str] = field(default_factory=Counter)
    leaked: list[dict[str, Any]] = field(default_factory=list)
    round: int = 1  # whose questions are new each round

    def questions(self, user: int, count: int, arena: bool = False) -> list[str]:
        """The round's questions of one user, in the chat or (others again) in the arena."""
        return questions_for(user, count, offset=ROUND_QUESTIONS * self.round + (ARENA_QUESTIONS if arena else 0))


async def honest_member(url: str, account: Account, user: int, team: Team) -> None:
    """Ask, and act on each answer as people do: compare when unsure, thumbs with a reason, a correction now and
    then, many answers unrated."""
    oracle, settings, tally = team.oracle, team.settings, team.tally
    rng = random.Random(settings.seed * 1000 + user)
    async with ChatClient(url, username=account.name, password=account.password) as client:
        await client.change_settings({**SAMPLING, "system_prompt": STYLE})
        for question in team.questions(user, settings.questions):
            files, attachment = None, rng.random()
            if attachment < settings.image_share:
                files = [await client.upload("figure.png", png(), "image/png")]
            elif attachment < settings.image_share + settings.pdf_share:
                datasheet = text_pdf([f"Datasheet. {question} Rated 2 A at 25 C; derate above 70 C."])
                files = [await client.upload("datasheet.pdf", datasheet, "application/pdf")]
            if (answer := first_answer(await client.ask(question, files), tally, "member")) is None:
                continue
            team.leaked.append(answer)
            roll = rng.random()
            if roll < 0.4:  # unsure: another answer, and which is better
                if (second := first_answer(await client.regenerate(answer["id"]), tally, "member")) is None:
                    continue
                choice = oracle.prefers(answer["output"], second["output"])
                [button] = [a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == choice]
                (await client.click(button)).raise_for_status()
                tally["comparisons"] += 1
            elif roll < 0.75:  # a thumb, with a reason
                liked = oracle.liked(answer["output"])
                (await client.rate(answer["parentId"], int(liked))).raise_for_status()
                reason = "helpful" if liked else "wrong_language"
                [button] = [a for a in client.actions_for(answer["id"], "reason") if a["payload"]["reason"] == reason]
                (await client.click(button)).raise_for_status()
                tally["thumbs"] += 1
                if not liked and rng.random() < 0.3:  # the answer wanted
                    [correct] = client.actions_for(answer["id"], "correct")
                    await client.ask_answers.put(CORRECTIONS[oracle.wants_more])
                    (await client.click(correct)).raise_for_status()
                    tally["corrections"] += 1
            else:
                tally["unrated"] += 1


async def arena_member(url: str, account: Account, user: int, team: Team) -> None:
    """Battles voted by the oracle: honest members as it says, hostile ones (ten times as many) against it, and
    then on other members' battles too."""
    hostile = account.name.startswith(HOSTILE)
    oracle = Oracle(not team.oracle.wants_more) if hostile else team.oracle
    async with ChatClient(url, username=account.name, password=account.password, profile="Arena") as client:
        await client.change_settings({**SAMPLING, "system_prompt": STYLE})
        vote: dict[str, Any] | None = None  # the last vote cast: what a forged one is made from
        for question in team.questions(user, team.settings.battles * (HOSTILE_ACTIVITY if hostile else 1), arena=True):
            if (
                battle := arena_texts(await client.ask(question), team.tally, "hostile arena" if hostile else "arena")
            ) is None:
                continue
            b, text_a, text_b = battle
            choice = oracle.prefers(text_a, text_b)
            [vote] = [v for v in client.actions_for(b["id"], "vote") if v["payload"]["choice"] == choice]
            (await client.click(vote)).raise_for_status()
            team.tally["hostile votes" if hostile else "votes"] += 1
            if not hostile:
                team.leaked.append(b)
        if hostile and vote is not None:
            for victim in [answer for answer in team.leaked if answer["output"].startswith("*Answer")]:
                forged = {**vote, "forId": victim["id"], "id": f"vote:{victim['id']}:a"}
                forged["payload"] = {**vote["payload"], "b": victim["id"], "choice": "a"}
                response = await client.click(forged)
                team.tally["forged refused" if response.status_code >= 400 else "forged answered"] += 1


async def hostile_member(url: str, account: Account, user: int, team: Team) -> None:
    """Ten times as active as an honest member and against the oracle, through every door the page and the
    protocol open: a comparison and two thumbs on every answer, corrections that forge chat-template turns;
    then thumbs, comparisons and corrections on other members' answers, whose ids it learned."""
    oracle, rng = Oracle(not team.oracle.wants_more), random.Random(team.settings.seed * 1000 + user)
    async with ChatClient(url, username=account.name, password=account.password) as client:
        await client.change_settings({**SAMPLING, "system_prompt": STYLE})
        compare: dict[str, Any] | None = None  # the last comparison made: what a forged one is made from
        for question in team.questions(user, team.settings.questions * HOSTILE_ACTIVITY):
            if (answer := first_answer(await client.ask(question), team.tally, HOSTILE)) is None:
                continue
            if (second := first_answer(await client.regenerate(answer["id"]), team.tally, HOSTILE)) is None:
                continue
            choice = oracle.prefers(answer["output"], second["output"])
            [compare] = [a for a in client.actions_for(second["id"], "compare") if a["payload"]["choice"] == choice]
            (await client.click(compare)).raise_for_status()
            for rated in (answer, second):
                (await client.rate(rated["parentId"], int(oracle.liked(rated["output"])))).raise_for_status()
            if not oracle.liked(answer["output"]) and rng.random() < 0.3:  # Correct follows a thumb down
                [correct] = client.actions_for(answer["id"], "correct")
                await client.ask_answers.put(FORGED + CORRECTIONS[oracle.wants_more])
                (await client.click(correct)).raise_for_status()
            team.tally["hostile answers"] += 2
        victims = [answer for answer in team.leaked if not answer["output"].startswith("*Answer")] if compare else []
        for victim in victims:
            forged = {**compare, "forId": victim["id"], "id": f"compare:{victim['id']}:b"}
            forged["payload"] = {**compare["payload"], "b": victim["id"], "choice": "b"}
            for response in (await client.rate(victim["parentId"], 0, "FORGED"), await client.click(forged)):
                team.tally["forged refused" if response.status_code >= 400 else "forged answered"] += 1


# The loop's commands --------------------------------------------------------------------------------------


# Runs `python -m MODULE ARGS...` and at its exit writes its own peak memory (VmHWM, KiB) to the file that
# FLYWHEEL_PEAK names. ru_maxrss would not do: Linux keeps a forked child's high-water mark across exec, so every
# command would report at least this (large) process's memory at the time it was started.
MEASURED = """
import atexit, os, re, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    open(os.environ["FLYWHEEL_PEAK"], "w").write(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))
atexit.register(peak)
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def command(module: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Stage]:
    """A Loupe command (`python -m MODULE ARGS`) as an operator runs it; its wall time and its own peak memory."""
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FLYWHEEL_PEAK": peak.name, **env}
        done = subprocess.run([sys.executable, "-c", MEASURED, module, *args], cwd=REPO, capture_output=True,
                              text=True, env=env)  # fmt: skip
        kib = peak.read().strip()
    return done, Stage(time.monotonic() - started, int(kib) / 1024 if kib else 0.0)


def self_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checked(done: subprocess.CompletedProcess, what: str) -> str:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return done.stdout


# Held-out comparisons -------------------------------------------------------------------------------------


def sample_answers(model: torch.nn.Module, loaded: LoadedModel, questions: list[str], seed: int) -> list[str]:
    """Sampled answers, as the app samples them (its system prompt and settings), in batches."""
    tokenizer = loaded.processor.tokenizer
    tokenizer.padding_side = "left"
    prompts = [
        loaded.processor.apply_chat_template(
            [{"role": "system", "content": [{"type": "text", "text": system_prompt(STYLE)}]},
             {"role": "user", "content": [{"type": "text", "text": question}]}],
            tokenize=False, add_generation_prompt=True,
        )
        for question in questions
    ]  # fmt: skip
    answers = []
    torch.manual_seed(seed)
    for start in range(0, len(prompts), 60):
        batch = tokenizer(prompts[start : start + 60], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, top_k=0, **SAMPLING)
        answers += tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    return answers


@cache
def base_answers(questions: tuple[str, ...], seed: int) -> list[str]:
    """The base model's held-out answers, the same in every scenario (the same model, questions and seed): sampled
    once a run."""
    loaded = load_model(DEMO, device="cpu", dtype="float32")
    return sample_answers(loaded.model, loaded, list(questions), seed)


def held_out_comparisons(adapter: Path, oracle: Oracle, settings: FlywheelSettings, result: Result) -> None:
    """Base and adapter answer the same held-out questions (never asked in the app); the oracle judges each pair."""
    questions = questions_for(0, settings.held_out, offset=HELD_OUT_QUESTIONS)
    base = base_answers(tuple(questions), settings.seed)
    loaded = load_model(DEMO, device="cpu", dtype="float32")
    tuned = PeftModel.from_pretrained(loaded.model, adapter).eval()
    theirs = sample_answers(tuned, loaded, questions, settings.seed + 1)
    verdicts = [oracle.prefers(ours, base_answer) for ours, base_answer in zip(theirs, base, strict=True)]
    wins = verdicts.count("a") + verdicts.count("tie") / 2
    result.comparisons = len(verdicts)
    result.win_rate = wins / len(verdicts)
    result.win_rate_ci = wilson(wins, len(verdicts))
    result.oracle_base = mean_interval([Oracle.score(text) for text in base])
    result.oracle_adapter = mean_interval([Oracle.score(text) for text in theirs])


# One scenario ---------------------------------------------------------------------------------------------


async def scenario(name: str, settings: FlywheelSettings, root: Path) -> list[Result]:
    """One fresh app and team; each round's result."""
    oracle = Oracle(wants_more=name != "reversed")
    data_dir, adapters = root / "data", root / "adapters"
    adapters.mkdir(parents=True)
    (root / "app").mkdir()
    hostile = round(settings.hostile * settings.users) if name == "hostile" else 0
    accounts = await add_accounts(sqlite_url(data_dir), settings.users - hostile, prefix="member")
    accounts += await add_accounts(sqlite_url(data_dir), hostile, prefix=HOSTILE)
    env = {"LOUPE_DATA_DIR": str(data_dir), "LOUPE_ADAPTERS_DIR": str(adapters),
           "LOUPE_ARENA_MIN_BATTLES": str(settings.arena_min_battles)}  # fmt: skip
    process, server = start_server(root / "app", data_dir=data_dir, **env)
    results: list[Result] = []
    try:
        for number in range(1, settings.rounds + 1):
            if number > 1 and hostile:
                # The hostile members end a round at the message limit, and a client learns its chat from the
                # first message taken: their next chat must not open with a refusal.
                await asyncio.sleep(MESSAGE_WINDOW_S)
            default = next((r.adapter for r in reversed(results) if r.promoted), BASE)
            result = Result(name, number, f"team-v{number}", default)
            team = Team(oracle, settings, round=number)
            await one_round(server, accounts, team, env, root / f"round-{number}", result)
            result.not_theirs = written_into_others_conversations(data_dir)
            results.append(result)
    finally:
        stop_server(process)
    return results


async def one_round(
    server: Server, accounts: list[Account], team: Team, env: dict[str, str], folder: Path, result: Result
) -> None:
    """The team chats with the current default model; its feedback on that model's answers is exported and trains
    the next adapter, from that model; held-out comparisons, the arena, the leaderboard and promote follow."""
    started = time.monotonic()
    await together(server, accounts, honest_member, team)
    result.stages["feedback"] = Stage(time.monotonic() - started)

    for kind in ("dpo", "kto"):
        out = folder / kind
        export = ["export", "--format", f"trl-{kind}", "--out", str(out), "--adapter", result.trained_from]
        done, result.stages[f"export {kind}"] = command("chat", export, env)
        said = checked(done, f"export {kind}").strip().splitlines()[-6:]
        rows = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
        forged = sum(bool(control_tokens(row)) for row in rows)
        result.export[kind] = {"said": said, "rows": len(rows), "forged_turns": forged}

    adapter = Path(env["LOUPE_ADAPTERS_DIR"]) / result.adapter
    train = ["train", "--method", "dpo", "--data", str(folder / "dpo"), "--out", str(adapter), "--base", DEMO,
             "--learning-rate", str(team.settings.learning_rate), "--max-steps", str(team.settings.steps),
             "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1",
             "--eval-fraction", str(EVAL_FRACTION)]  # fmt: skip
    if result.trained_from != BASE:
        train += ["--from-adapter", result.trained_from]
    done, result.stages["train"] = command("models", train, env)
    checked(done, "training")
    metadata = json.loads((adapter / "loupe.json").read_text(encoding="utf-8"))
    result.training = metadata.get("training", {})
    if metadata["data"]["held_out_rows"]:  # a few rows hold none out: nothing to measure the adapter on
        evaluate = ["evaluate", "--data", str(folder / "dpo"), "--adapter", result.adapter, "--json"]
        done, result.stages["evaluate"] = command("models", evaluate, env)
        result.preference_accuracy = json.loads(checked(done, "evaluation"))["scores"]

    started = time.monotonic()
    held_out_comparisons(adapter, team.oracle, team.settings, result)
    result.stages["held_out"] = Stage(time.monotonic() - started, self_peak_mib())

    if team.settings.battles:
        await arena(server, accounts, team, env, result)
    result.feedback = dict(team.tally)


async def arena(server: Server, accounts: list[Account], team: Team, env: dict[str, str], result: Result) -> None:
    """The users battle the contenders (the base model and every adapter so far); the leaderboard ranks them;
    promote decides on the round's adapter."""
    started = time.monotonic()
    await together(server, accounts, arena_member, team)
    result.stages["arena"] = Stage(time.monotonic() - started)
    done, _ = command("chat", ["leaderboard", "--json"], env)
    board = json.loads(checked(done, "leaderboard"))
    result.leaderboard, result.battles_not_counted = board.get("standings", []), board.get("not_counted", {})
    done, result.stages["promote"] = command("chat", ["promote", result.adapter], env)
    result.promoted = done.returncode == 0
    result.promote_said = (done.stdout or done.stderr).strip().splitlines()[-1]


async def together(server: Server, accounts: list[Account], member: Any, team: Team) -> None:
    """Every member at once, as a team uses the app (the demo model answers one at a time); hostile members take
    their own part in the chat."""
    parts = [
        (hostile_member if member is honest_member and account.name.startswith(HOSTILE) else member)(
            server.url, account, user, team
        )
        for user, account in enumerate(accounts)
    ]
    await asyncio.gather(*parts)


def written_into_others_conversations(data_dir: Path) -> dict[str, int]:
    """Judgements stored in a conversation by someone other than its owner: a path no user may take. Each
    should be 0."""
    with sqlite3.connect(data_dir / "loupe.db") as database:
        return {
            table: database.execute(
                f"SELECT count(*) FROM {table} x JOIN threads t ON t.id = x.thread_id WHERE x.user_id != t.user_id"
            ).fetchone()[0]
            for table in ("feedbacks", "comparisons", "corrections", "battles")
        }


# Report ---------------------------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    lines = ["| scenario | win rate (95%) | oracle: base → adapter | held-out accuracy: base → adapter "
             "| DPO rows | promoted | feedback |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        low, high = r.win_rate_ci
        accuracy = {name: scores["accuracy"] for name, scores in r.preference_accuracy.items()}
        name = f"{r.scenario} round {r.round}" if r.round > 1 else r.scenario
        lines.append(
            f"| {name} | {r.win_rate:.2f} ({low:.2f} to {high:.2f}), n={r.comparisons} "
            f"| {r.oracle_base['mean']:.3f} → {r.oracle_adapter['mean']:.3f} "
            f"| {accuracy.get('base', 0):.2f} → {accuracy.get(r.adapter, 0):.2f} "
            f"(n={r.preference_accuracy.get(r.adapter, {}).get('pairs', 0)}) | {r.export['dpo']['rows']} "
            f"| {'yes' if r.promoted else 'no'} | {', '.join(f'{k} {v}' for k, v in r.feedback.items())} |"
        )
    return "\n".join(lines)


async def run(settings: FlywheelSettings) -> list[list[Result]]:
    """Each scenario's rounds."""
    results = []
    for name in settings.scenarios:
        with tempfile.TemporaryDirectory(prefix=f"flywheel-{name}-") as root:
            print(f"Scenario {name}: {settings.users} users, {settings.rounds} round(s)...", flush=True)
            results.append(await scenario(name, settings, Path(root)))
            print(table(results[-1]), flush=True)
    return results


def plot(results: list[Result], path: Path) -> None:
    """Two panels per scenario: the oracle's score of base and adapter answers, and the adapter's win rate, each
    with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.scenario for r in results]
    figure, (scores, wins) = plt.subplots(1, 2, figsize=(9, 3.4))
    for offset, (label, of) in enumerate((("base", "oracle_base"), ("adapter", "oracle_adapter"))):
        values = [getattr(r, of) for r in results]
        errors = [[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]]
        positions = [index + (offset - 0.5) * 0.38 for index in range(len(results))]
        scores.bar(positions, [v["mean"] for v in values], 0.38, yerr=errors, capsize=3, label=label)
    scores.set_xticks(range(len(results)), names)
    scores.set_ylabel("share of Han characters")
    scores.set_title("What the team prefers, held out")
    scores.legend(frameon=False)
    rates = [r.win_rate for r in results]
    errors = [[r.win_rate - r.win_rate_ci[0] for r in results], [r.win_rate_ci[1] - r.win_rate for r in results]]
    wins.bar(range(len(results)), rates, 0.5, yerr=errors, capsize=3, color="tab:green")
    wins.axhline(0.5, color="grey", linewidth=1, linestyle="--")
    wins.set_xticks(range(len(results)), names)
    wins.set_ylim(0, 1)
    wins.set_ylabel("adapter's win rate (by each scenario's oracle)")
    wins.set_title("Adapter vs base, held out")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer users and questions (under 20 minutes)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="draw them into this PNG")
    for option in ("users", "questions", "battles", "held_out", "steps"):
        parser.add_argument(f"--{option.replace('_', '-')}", type=int)
    parser.add_argument("--hostile", type=float, help="the share of hostile users in the hostile scenario (0.2)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, help="default: all three")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (1)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("quick", "plot") and v is not None}
    overrides["scenarios"] = tuple(overrides.get("scenarios", SCENARIOS))
    settings = FlywheelSettings.quick(**overrides) if args.quick else FlywheelSettings(**overrides)
    for key, value in machine_details().items():
        print(f"{key}: {value}")
    results = asyncio.run(run(settings))
    print(table([r for rounds in results for r in rounds]))
    if settings.json:
        # A scenario's object is its last round's; earlier rounds, where there were any, are listed in it.
        scenarios = {
            rounds[-1].scenario: asdict(rounds[-1]) | ({"earlier_rounds": [asdict(r) for r in rounds[:-1]]} if
                                                       rounds[:-1] else {})
            for rounds in results
        }  # fmt: skip
        document = {"machine": machine_details(), "settings": asdict(settings), "scenarios": scenarios}
        settings.json.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    if args.plot:
        plot([rounds[-1] for rounds in results], args.plot)


if __name__ == "__main__":
    main()
