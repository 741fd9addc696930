"""What refusing costs the server: a huge upload, the longest message, a password-guessing loop,
hostile PDFs.

Run against a real server (demo model, SQLite, its own data directory), from the repository root:
    .venv/bin/python -m bench.bench_security                     # every part
    .venv/bin/python -m bench.bench_security --parts documents   # or a comma-separated mix

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
  storm   Another user's answers (64 tokens at most) while 60 wrong logins arrive at once, per token against idle:
          60 for one name, and 60 for 60 names from 60 addresses (through a trusted proxy, so neither the name
          nor the address throttle holds them back), on a server checking one password at a time
          (LOUPE_PASSWORD_CHECKS_AT_ONCE's default) and on one checking up to 60 (unbounded, as before: 34.6 s
          against 0.7 s in the issue). Goal: under 2x idle with the default.
  documents  While another account sends a hostile PDF: the server's resident memory (sampled every 5 ms,
          peak against before) in the attack's first ATTACK_SECONDS, and then the latency of a second user's
          document question (a new one-page PDF attached, read, one page rendered, 16 tokens answered),
          the mean of QUESTIONS (a question that waits for the whole attack counts in full), against as many
          questions just before, with the server idle. The PDFs
          (tests/helpers/pdfs.py): 0.5 MB whose content stream inflates to 512 MB, sent again as soon as it
          is refused; and 20 pages that each take about 2.4 s to read (53 KB), within the default limits,
          so it is still being read while the questions are asked.
          Goals: +50 MB at most; the other user's latency within 1.5x of idle.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

from bench.bench_chat import Report, median, print_machine
from tests.helpers import pdfs
from tests.helpers.client import GREEDY, ChatClient, login
from tests.helpers.memory import MB, PeakMemory
from tests.helpers.server import ADMIN_PASSWORD, add_account, start_server, stop_server

MAXIMAL_MESSAGE = "저항기 " * 8000  # 32,000 characters, LOUPE_MAX_MESSAGE_CHARS's default
HUGE_MESSAGE = "x" * 900_000  # the message that froze every user for 1.4 s before
PARTS = ("upload", "stall", "login", "documents", "storm")
QUESTIONS = 9  # the other user's document questions per condition: their mean is the latency reported
WARM_UP = 4  # questions before measuring: the first few start workers and warm the model (1.5 to 4 s, then ~0.6 s)
ATTACK_SECONDS = 10  # how long the server's memory is watched while the hostile PDF is read, alone
ATTACKER_PASSWORD = "hostile-documents-1"


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
    from tests.helpers.budgets import CPU_BUDGET

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

    builder = PromptBuilder(ChatTemplateTokens(load_processor(QWEN2_VL_FILES)), CPU_BUDGET)
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


STORM = 60  # wrong logins sent at once, as in the report
STORM_TOKENS = 64  # the answer the issue timed during the storm
STORM_CHATS = 24  # enough for a warm-up, 3 idle answers, and answers through the longest storm (~20 s)


async def seconds_per_token(client: ChatClient) -> float:
    """One answer of at most STORM_TOKENS (the demo model may end one early), per token streamed."""
    await client.change_settings({"max_new_tokens": STORM_TOKENS, "temperature": 0})
    started = time.perf_counter()
    reply = await client.ask("Which bolt grade is stronger, 8.8 or 10.9?")
    return (time.perf_counter() - started) / len(reply.tokens)


async def wrong_logins(url: str, names: list[str], addresses: list[str | None]) -> Counter[int]:
    """Wrong passwords for `names`, all sent at once, each forwarded for its address (None: sent directly)."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=STORM)) as http:
        answers = await asyncio.gather(
            *(
                http.post(
                    "/login",
                    data={"username": name, "password": "a-wrong-guess"},
                    headers={"X-Forwarded-For": address} if address else {},
                )
                for name, address in zip(names, addresses, strict=True)
            )
        )
    return Counter(answer.status_code for answer in answers)


async def measure_login_storm(report: Report) -> None:
    storms = {
        "one name": (["admin"] * STORM, [None] * STORM),
        "60 names, 60 addresses": ([f"nobody{n}" for n in range(STORM)], [f"198.51.100.{n}" for n in range(STORM)]),
    }
    for at_once, kinds in ((1, list(storms)), (STORM, ["60 names, 60 addresses"])):
        with tempfile.TemporaryDirectory() as root:
            env = {
                "LOUPE_TRUSTED_PROXIES": "127.0.0.1",
                "LOUPE_PASSWORD_CHECKS_AT_ONCE": str(at_once),
                "LOUPE_MESSAGES_PER_MINUTE": "1000",  # every answer here is admin's
            }
            process, server = start_server(Path(root), **env)
            try:
                # Each answer in a chat of its own (the same question, no history), every chat logged in before
                # the storms: a login during one waits its turn.
                async with AsyncExitStack() as stack:
                    chats = [await stack.enter_async_context(ChatClient(server.url)) for _ in range(STORM_CHATS)]
                    await seconds_per_token(chats.pop())  # warm-up
                    idle = median([await seconds_per_token(chats.pop()) for _ in range(3)])
                    for kind in kinds:
                        storm = asyncio.create_task(wrong_logins(server.url, *storms[kind]))
                        await asyncio.sleep(0.5)  # the checks are under way
                        during = [await seconds_per_token(chats.pop())]
                        while not storm.done() and len(chats) > 1:
                            during.append(await seconds_per_token(chats.pop()))
                        started = time.perf_counter()
                        answered = await storm
                        waited = time.perf_counter() - started
                        report.add(
                            "storm",
                            f"{kind}, {at_once} check(s) at once",
                            f"{median(during) / idle:.1f}x idle",
                            f"{median(during) * 1000:.0f} ms a token over {len(during)} answers, idle "
                            f"{idle * 1000:.0f}; logins answered {dict(sorted(answered.items()))}, the last "
                            f"{waited:.1f} s after the answers",
                        )
            finally:
                stop_server(process)


async def measure_documents(report: Report, server) -> None:
    add_account(server, "pdf-sender", ATTACKER_PASSWORD)
    seeds = iter(range(1000))  # a new one-page PDF for every question, so each is read, not only found

    async def question() -> float:
        """A one-page question in a new chat, timed from the upload to the answer's end."""
        data, facts = pdfs.facts_pdf(1, seed=next(seeds))
        async with ChatClient(server.url) as client:
            await client.change_settings(GREEDY)
            started = time.perf_counter()
            attached = await client.upload("one-page.pdf", data, "application/pdf")
            reply = await client.ask(facts[0].question, [attached])
            elapsed = time.perf_counter() - started
        sources = reply.messages[-1].get("metadata", {}).get("generation", {}).get("sources")
        assert sources, f"no answer from the page: {[message['output'][:200] for message in reply.messages]}"
        return elapsed

    async def questions() -> list[float]:
        return [await question() for _ in range(QUESTIONS)]

    for _ in range(WARM_UP):
        await question()
    for name, data, repeat in (
        ("inflating PDF (0.5 MB to 512 MB)", pdfs.inflating_pdf(512), True),
        ("slow PDF (20 pages, ~2.4 s each)", pdfs.slow_pdf(20, 2_000_000), False),
    ):
        idle = await questions()  # just before, as the load of the machine changes
        async with ChatClient(server.url, username="pdf-sender", password=ATTACKER_PASSWORD) as attacker:
            seen: list[str] = []  # what the sender was told about each sending

            async def attack(data: bytes = data, repeat: bool = repeat, seen: list[str] = seen) -> None:
                while True:
                    reply = await attacker.ask("Summarize.", [await attacker.upload("hostile.pdf", data)])
                    seen.append(reply.messages[-1]["output"])
                    if not repeat:
                        return

            sending = asyncio.create_task(attack())
            with PeakMemory(server.pid) as memory:  # the hostile PDF alone
                await asyncio.sleep(ATTACK_SECONDS)
            during = await questions()
            told = seen[0][:100].replace("\n", " ") if seen else "nothing yet: still being read"
            await attacker.stop()  # ends the reading, if it is still going
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        report.add(
            "documents",
            f"{name}: server memory",
            f"+{memory.growth_mb:.1f} MB",
            f"peak in its first {ATTACK_SECONDS} s, goal +50 MB at most; the sender was told: {told}",
        )
        ratio = statistics.mean(during) / statistics.mean(idle)
        report.add(
            "documents",
            f"{name}: other user's question",
            f"{statistics.mean(during):.2f} s (worst {max(during):.2f} s)",
            f"mean of {QUESTIONS} while it is read; just before, idle: {statistics.mean(idle):.2f} s"
            f" (worst {max(idle):.2f} s); {ratio:.2f}x idle, goal within 1.5x",
        )


async def main(parts: list[str]) -> None:
    print_machine()
    report = Report()
    with tempfile.TemporaryDirectory() as root:
        # The documents part's user asks WARM_UP + 4 x QUESTIONS questions in a few minutes: past the default rate.
        process, server = start_server(Path(root), LOUPE_MESSAGES_PER_MINUTE="600")
        try:
            if "upload" in parts:
                await measure_uploads(report, server.url, process.pid)
            if "stall" in parts:
                await measure_stall(report, server.url)
            if "login" in parts:
                await measure_login(report, server.url, server)
            if "documents" in parts:
                await measure_documents(report, server)
        finally:
            stop_server(process)
    if "storm" in parts:  # servers of its own, with other settings
        await measure_login_storm(report)
    print(report.table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    asyncio.run(main(parser.parse_args().parts.split(",")))
