"""What Loupe's API costs on top of the model: `/v1/chat/completions` against the backend alone.

The running app (demo model, local backend), called with the `openai` wire format over HTTP with server-sent
events, against `Generator.stream` called in this process with the same model, prompt and greedy settings:
time to first token and tokens per second, at 1 client and at 32 clients at once (the backend answers one
request at a time, so 32 clients measure the queue's cost too, alike on both sides). Goals: at most 20 ms more
to the first token and at most 5% fewer tokens per second.

Run from the repository root:
    .venv/bin/python -m bench.bench_api
    .venv/bin/python -m bench.bench_api --clients 1 32 --repeats 5 --new-tokens 64
Raw and API runs alternate, so drifting load hits both alike; compare numbers within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.bench_chat import CONTEXT_TOKENS, PROMPT, Report, print_machine
from chat.conversation import PromptBuilder, user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompts
from models.backend import ChatTemplateTokens
from models.checkpoint import load_model
from models.generation import Generator, SamplingSettings, Usage
from tests.helpers.budgets import CPU_BUDGET
from tests.helpers.server import chat, start_server, stop_server

TTFT_GOAL_MS = 20.0
THROUGHPUT_GOAL = 0.95


@dataclass
class Run:
    """One answer, in seconds from its request: its first and its last piece, and its end (for the API, after
    the answer is stored: the end says it is); its text and its length."""

    first: float
    last: float
    end: float
    text: str
    tokens: int  # as the backend counted them


async def raw_answer(generator: Generator, messages: list[dict[str, Any]], sampling: SamplingSettings) -> Run:
    start, first, last, text, usage = time.perf_counter(), None, 0.0, "", Usage()
    async with aclosing(generator.stream(messages, sampling, usage)) as pieces:
        async for piece in pieces:
            first = first or time.perf_counter() - start
            last, text = time.perf_counter() - start, text + piece
    return Run(first or 0.0, last, time.perf_counter() - start, text, usage.completion_tokens)


async def api_answer(http: httpx.AsyncClient, sampling: SamplingSettings) -> Run:
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "max_tokens": sampling.max_new_tokens,
    }
    start, first, last, text, tokens = time.perf_counter(), None, 0.0, "", 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as events:
        events.raise_for_status()
        async for line in events.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif piece := (chunk["choices"] or [{}])[0].get("delta", {}).get("content"):
                first = first or time.perf_counter() - start
                last, text = time.perf_counter() - start, text + piece
    return Run(first or 0.0, last, time.perf_counter() - start, text, tokens)


async def measure(url: str, key: str, generator: Generator, sampling: SamplingSettings, clients: int, repeats: int):
    """`repeats` rounds, each `clients` raw answers at once, then as many through the API at once."""
    messages = PromptBuilder(ChatTemplateTokens(generator.loaded.processor), CPU_BUDGET).build(
        system_prompts()[DEFAULT_PROMPT], [user_turn(PROMPT, [])], CONTEXT_TOKENS - sampling.max_new_tokens
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        await api_answer(http, sampling)  # warm-up: the server's first answer loads what it loads lazily
        raw, api = [], []
        for _ in range(repeats):
            raw.append(await batch([raw_answer(generator, messages, sampling) for _ in range(clients)]))
            api.append(await batch([api_answer(http, sampling) for _ in range(clients)]))
    return raw, api


async def batch(answers: list) -> list[Run]:
    return await asyncio.gather(*answers)


def report_runs(part: str, report: Report, raw: list[list[Run]], api: list[list[Run]]) -> None:
    """Medians over rounds of: the round's median time to the first piece, and its tokens per second (all its
    answers' tokens over the time to the last piece of the last)."""
    sides = {"raw": raw, "api": api}
    ttft = {
        side: statistics.median(statistics.median(run.first for run in runs) for runs in rounds)
        for side, rounds in sides.items()
    }
    rate = {
        side: statistics.median(sum(run.tokens for run in runs) / max(run.last for run in runs) for runs in rounds)
        for side, rounds in sides.items()
    }
    stored = statistics.median(run.end - run.last for runs in api for run in runs) * 1000
    same = all(run.text == raw[0][0].text for runs in raw + api for run in runs)
    overhead = (ttft["api"] - ttft["raw"]) * 1000
    report.add(part, "API text == raw text (greedy)", "yes" if same else "NO")
    report.add(part, "raw TTFT (median)", f"{ttft['raw'] * 1000:.1f} ms")
    report.add(part, "API TTFT (median)", f"{ttft['api'] * 1000:.1f} ms")
    report.add(part, "API TTFT overhead", f"{overhead:.1f} ms", f"goal <= {TTFT_GOAL_MS:g} ms")
    report.add(part, "raw tokens/s", f"{rate['raw']:.1f}")
    report.add(part, "API tokens/s", f"{rate['api']:.1f}")
    report.add(part, "API/raw throughput", f"{rate['api'] / rate['raw']:.3f}", f"goal >= {THROUGHPUT_GOAL}")
    report.add(part, "API: last piece -> end of stream", f"{stored:.1f} ms", "the answer stored before the end")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    print_machine()
    report = Report()
    sampling = SamplingSettings(temperature=0.0, top_p=0.8, max_new_tokens=args.new_tokens, repetition_penalty=1.05)
    generator = Generator(load_model("demo", device="cpu"))
    with tempfile.TemporaryDirectory(prefix="loupe-bench-api-") as root:
        process, server = start_server(Path(root), LOUPE_MESSAGES_PER_MINUTE="100000")
        try:
            key = chat(server, Path(root) / "adapters", "keys", "add", "admin").splitlines()[-1]
            for clients in args.clients:
                raw, api = asyncio.run(measure(server.url, key, generator, sampling, clients, args.repeats))
                report_runs(f"{clients} client(s)", report, raw, api)
        finally:
            stop_server(process)
    print(report.table())


if __name__ == "__main__":
    main()
