"""What refusing costs the server: a huge upload, the longest message, a password-guessing loop.

Run against a real server (demo model, SQLite, its own data directory), from the repository root:
    .venv/bin/python -m bench.bench_security

  upload  The server's resident memory, sampled every 5 ms, while a 200 MB upload is refused: sent
          chunked (no Content-Length, so it is counted while it arrives) and with its length declared
          (refused on its headers). Goal: under +20 MB. For scale, the same measure for an accepted
          upload just under the 20 MB cap (Chainlit reads an accepted upload whole).
  stall   The event loop's stall while the server takes the longest message allowed (32,000
          Korean characters, about a token each, so the most tokenizer work a message can ask for) and a
          0.9 MB one (refused before any work): the worst latency of a tiny request sent every 10 ms
          meanwhile, beside the worst when idle. Goal: under 50 ms. Baseline: the time PromptBuilder.build takes
          for that message, which is how long the loop stalled when it ran there.
  login   Attempts answered per second while a user name is throttled (each a 429 at once), against
          wrong passwords per second before (each an argon2 verification).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.bench_chat import Report, print_machine
from tests.helpers.client import ChatClient, login
from tests.helpers.memory import MB, PeakMemory
from tests.helpers.server import ADMIN_PASSWORD, add_account, start_server, stop_server

MAXIMAL_MESSAGE = "저항기 " * 8000  # 32,000 characters, LOUPE_MAX_MESSAGE_CHARS's default
HUGE_MESSAGE = "x" * 900_000  # the message that froze every user for 1.4 s before


async def chunked(total: int):
    yield b'--loupe\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    yield b"Content-Type: image/png\r\n\r\n"
    for _ in range(total // MB):
        yield b"\0" * MB


async def upload(client: ChatClient, body, length: int | None = None) -> int | str:
    headers = {"Content-Type": "multipart/form-data; boundary=loupe"}
    if length is not None:
        headers["Content-Length"] = str(length)
    async with httpx.AsyncClient(base_url=client.url, cookies=client.cookies, timeout=120) as http:
        try:
            response = await http.post(
                "/project/file", params={"session_id": client.session_id}, content=body, headers=headers
            )
        except httpx.HTTPError as error:  # the server answered 413 and closed while the body was still being sent
            return type(error).__name__
    return response.status_code


async def measure_uploads(report: Report, url: str, pid: int) -> None:
    async with ChatClient(url) as client:
        for name, body, length in (
            ("refused 200 MB, chunked", chunked(200 * MB), None),
            ("refused 200 MB, declared", chunked(200 * MB), 200 * MB),
        ):
            with PeakMemory(pid) as memory:
                answer = await upload(client, body, length)
            report.add("upload", name, f"+{memory.growth_mb:.1f} MB", f"answer {answer}; goal under +20 MB")
        accepted = b'--loupe\r\nContent-Disposition: form-data; name="file"; filename="ok.png"\r\n'
        accepted += b"Content-Type: image/png\r\n\r\n"
        accepted += b"\0" * (19 * MB) + b"\r\n--loupe--\r\n"
        with PeakMemory(pid) as memory:
            answer = await upload(client, accepted)
        report.add("upload", "accepted 19 MB (for scale)", f"+{memory.growth_mb:.1f} MB", f"answer {answer}")


async def worst_latency(url: str, until: asyncio.Event) -> float:
    """The slowest of tiny requests sent one after another, 10 ms apart, until `until` is set."""
    worst = 0.0
    async with httpx.AsyncClient(base_url=url) as http:
        while not until.is_set():
            started = time.perf_counter()
            await http.get("/loupe/model")
            worst = max(worst, time.perf_counter() - started)
            await asyncio.sleep(0.01)
    return worst


async def stall_during(url: str, work) -> float:
    done = asyncio.Event()
    probe = asyncio.create_task(worst_latency(url, done))
    await asyncio.sleep(0.5)
    await work()
    done.set()
    return await probe


async def measure_stall(report: Report, url: str) -> None:
    from chat.conversation import PromptBuilder, user_turn
    from chat.prompts import DEFAULT_PROMPT, system_prompt
    from models.backend import ChatTemplateTokens
    from models.checkpoint import QWEN2_VL_FILES, load_processor
    from models.settings import CPU_MAX_PIXELS, DEFAULT_MIN_PIXELS

    async with ChatClient(url) as client:
        await client.change_settings({"max_new_tokens": 16})
        idle = await stall_during(url, lambda: asyncio.sleep(3))
        for name, message, expected in (
            ("longest message allowed (32,000 chars)", MAXIMAL_MESSAGE, "Your message is too long for the model"),
            ("0.9 MB message", HUGE_MESSAGE, "Your message has"),
        ):

            async def send(message: str = message, expected: str = expected) -> None:
                await client.send(message)
                await client.wait_for_message(expected, timeout=120)

            worst = await stall_during(url, send)
            report.add(
                "stall",
                name,
                f"{worst * 1000:.0f} ms",
                f"worst request while idle: {idle * 1000:.0f} ms; goal under 50 ms",
            )

    builder = PromptBuilder(ChatTemplateTokens(load_processor(QWEN2_VL_FILES)), DEFAULT_MIN_PIXELS, CPU_MAX_PIXELS)
    turn = user_turn(MAXIMAL_MESSAGE, [], "bench")
    started = time.perf_counter()
    try:
        builder.build(system_prompt(DEFAULT_PROMPT), [turn], 8192)
    except Exception as refused:  # noqa: BLE001 -- PromptTooLong is the expected end
        kind = type(refused).__name__
    else:
        kind = "fits"
    on_loop = time.perf_counter() - started
    report.add("stall", "baseline: tokenizing it on the loop", f"{on_loop * 1000:.0f} ms", f"in-process build, {kind}")


async def measure_login(report: Report, url: str, server) -> None:
    add_account(server, "target", "target-password-1")
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def attempt(name: str) -> httpx.Response:
            return await http.post("/login", data={"username": name, "password": "wrong"})

        started, answered = time.perf_counter(), 0
        while answered < 10:  # unthrottled: each answer waits for an argon2 check
            assert (await attempt(f"guess{answered}")).status_code == 401
            answered += 1
        unthrottled = answered / (time.perf_counter() - started)
        failures = 0
        while failures < 9:  # five free failures, then 1, 2 and 4 s waits sat out: the next wait is 8 s
            response = await attempt("target")
            if response.status_code == 429:
                await asyncio.sleep(int(response.headers["retry-after"]))
            else:
                failures += 1
        started, answered = time.perf_counter(), 0
        while time.perf_counter() - started < 5:
            assert (await attempt("target")).status_code == 429
            answered += 1
        throttled = answered / (time.perf_counter() - started)
    report.add("login", "throttled attempts answered", f"{throttled:.0f}/s", "each a 429 with Retry-After")
    report.add("login", "wrong passwords, unthrottled", f"{unthrottled:.1f}/s", f"ratio {throttled / unthrottled:.0f}x")
    assert (await login(url, "admin", ADMIN_PASSWORD))["access_token"]  # others still log in


async def main() -> None:
    print_machine()
    report = Report()
    with tempfile.TemporaryDirectory() as root:
        process, server = start_server(Path(root))
        try:
            await measure_uploads(report, server.url, process.pid)
            await measure_stall(report, server.url)
            await measure_login(report, server.url, server)
        finally:
            stop_server(process)
    print(report.table())


if __name__ == "__main__":
    asyncio.run(main())
