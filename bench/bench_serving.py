"""Serving a team: the embedded backend against vLLM, on the same tiny checkpoint, in one run.

Both apps run the real Loupe (`python -m chat serve`) on one tiny random Qwen2-VL checkpoint
(models.checkpoint.SERVABLE_SIZE, which vLLM's CPU build can serve): one with LOUPE_BACKEND=local (the
model in the app's process, one answer at a time), one with LOUPE_BACKEND=vllm (a vLLM server from
`make vllm`'s environment). For 1, 8 and 32 users asking at once (socket.io clients, as the web page),
each answer greedy and MAX_NEW_TOKENS long, it measures the aggregate throughput (every answer's
tokens over the time from the first question to the last answer) and the time to first token
(from sending the question to the first streamed piece) at p50 and p99.

Run from the repository root, after `make vllm` has installed its environment:
    .venv/bin/python -m bench.bench_serving
Goal on this CPU: p99 time to first token at 32 users at most 1/10 of the local backend's, and an
aggregate throughput not below it.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from bench.bench_chat import Report, print_machine
from models.checkpoint import SERVABLE_SIZE, build_demo_model, write_checkpoint
from tests.helpers.client import ChatClient, only_answer
from tests.helpers.server import start_server, stop_server
from tests.helpers.vllm import VllmServer

USERS = (1, 8, 32)
MAX_NEW_TOKENS = 64  # long enough that answers overlap, short enough for 32 sequential ones on a CPU
SERVED_NAME = "tiny"


async def answer(client: ChatClient, number: int) -> tuple[float, float, float, int]:
    """(sent, first piece, last piece) times and the tokens of one user's answer."""
    sent = time.monotonic()
    await client.send(f"Question {number}: what does this circuit do?")
    await client.wait_for("stream_start")
    first = time.monotonic()
    reply = await client.collect()
    return sent, first, time.monotonic(), only_answer(reply)["metadata"]["generation"]["completion_tokens"]


async def measure(url: str, users: int) -> tuple[float, float, float]:
    """Aggregate tokens/s, and time to first token p50 and p99 (s), for `users` asking at once."""
    async with AsyncExitStack() as stack:
        # Logged in and set up first (each login is an argon2 check), then all of them ask at once.
        clients = [await stack.enter_async_context(ChatClient(url)) for _ in range(users)]
        for client in clients:
            await client.change_settings({"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS})
        answers = await asyncio.gather(*(answer(client, number) for number, client in enumerate(clients)))
    ttfts = sorted(first - sent for sent, first, _, _ in answers)
    span = max(ended for _, _, ended, _ in answers) - min(sent for sent, _, _, _ in answers)
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
    return sum(tokens for *_, tokens in answers) / span, statistics.median(ttfts), p99


def main() -> None:
    print_machine()
    report = Report()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        checkpoint = write_checkpoint(build_demo_model(SERVABLE_SIZE), root / "checkpoint")
        vllm = VllmServer.on(checkpoint, SERVED_NAME, root / "vllm.log")
        vllm.start()
        try:
            results = {}
            for backend, extra in (("local", {}), ("vllm", {"LOUPE_VLLM_URL": vllm.url})):
                (root / backend).mkdir()
                process, server = start_server(
                    root / backend,
                    LOUPE_MODEL=str(checkpoint),
                    LOUPE_BACKEND=backend,
                    LOUPE_VLLM_MODEL=SERVED_NAME,
                    LOUPE_MESSAGES_PER_MINUTE="10000",  # the users share one account
                    **extra,
                )
                try:
                    asyncio.run(measure(server.url, 1))  # warm-up: first requests compile and allocate
                    for users in USERS:
                        throughput, p50, p99 = asyncio.run(measure(server.url, users))
                        results[backend, users] = throughput, p99
                        report.add(
                            backend,
                            f"{users} users",
                            f"{throughput:.0f} tokens/s",
                            f"TTFT p50 {p50:.2f} s, p99 {p99:.2f} s",
                        )
                finally:
                    stop_server(process)
        finally:
            vllm.stop()
    top = max(USERS)
    throughput_ratio = results["vllm", top][0] / results["local", top][0]
    ttft_ratio = results["vllm", top][1] / results["local", top][1]
    report.add("vllm / local", f"{top} users", f"throughput x{throughput_ratio:.2f}", f"TTFT p99 x{ttft_ratio:.3f}")
    print()
    print(report.table())


if __name__ == "__main__":
    main()
