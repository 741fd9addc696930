"""Attacks on logging in (issue 21, round 2), made as they were found against a running server.

Parallel guesses, a reply to a question sent after its login ended, and forged X-Forwarded-For
addresses. Each test checks what the attacker gets back, what the server's log says it did
(it logs every argon2 check), and that the victim's rows and the export are the same bytes
before and after. The servers here are their own: a test that uses up the login throttle of
127.0.0.1 holds back every later login from it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from chat.store.schema import Correction, Step
from chat.ui.limits import FREE_FAILURES, FREE_FAILURES_PER_ADDRESS
from tests.helpers.client import ChatClient, OwnedThread, login, only_answer, png, rated_thread_with_image
from tests.helpers.databases import quiet_thread_rows, thread_rows
from tests.helpers.server import ADMIN_PASSWORD, REPO, Running, Server, add_account, serve, start_server, stop_server

PASSWORD = "login-attack-password-1"
GUESSES = 60  # as many as the report sent at once
CHECKS_AT_ONCE = 1  # LOUPE_PASSWORD_CHECKS_AT_ONCE's default
CHECKED = re.compile(r"Checking the password of '(?P<name>[^']*)' \((?P<running>\d+) of at most \d+ at once\)")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def attacked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """A server that trusts no proxy (the default), on each database."""
    async with AsyncExitStack() as stack:
        yield await serve(stack, request.param, tmp_path_factory.mktemp(f"logins-{request.param}"))


@pytest.fixture(scope="module")
async def victim(attacked: Running) -> OwnedThread:
    """admin's thread: a question with an image, its answer rated thumbs down (an exported row)."""
    return (await rated_thread_with_image(attacked.server.url, png()))[0]


async def evidence(attacked: Running, thread_id: str, out: Path) -> tuple[dict[str, list[tuple]], dict[str, bytes]]:
    """Every row of the thread, and every file `python -m chat export` writes (DPO and KTO), as bytes."""
    for format in ("trl-dpo", "trl-kto"):  # in a thread: an open chat's socket must go on answering pings
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chat", "export", "--format", format, "--out", str(out / format)],
            cwd=REPO,
            env={**os.environ, "LOUPE_DATA_DIR": str(attacked.server.data_dir), **attacked.server.env},
            check=True,
            capture_output=True,
        )
    files = {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}
    return await thread_rows(attacked.sessions, thread_id), files


def password_checks(server: Server, name: str, since: int = 0) -> list[int]:
    """For each argon2 check of `name`'s password the server made (after byte `since` of its log), how many
    checks were running then."""
    with server.log.open("rb") as log:
        log.seek(since)
        lines = log.read().decode(errors="replace").splitlines()
    found = (CHECKED.search(line) for line in lines)
    return [int(match["running"]) for match in found if match and match["name"] == name]


async def guess(http: httpx.AsyncClient, name: str, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return await http.post("/login", data={"username": name, "password": "a-wrong-guess"}, headers=headers)


# 4. Parallel guesses count before they are checked, and checks run one at a time ------------------


async def test_parallel_guesses_for_one_name_get_only_the_free_failures_checked(
    attacked: Running, victim: OwnedThread, tmp_path: Path
):
    before = await evidence(attacked, victim.thread_id, tmp_path / "before")
    log_before = attacked.server.log.stat().st_size
    async with httpx.AsyncClient(base_url=attacked.server.url, timeout=120) as http:
        answers = await asyncio.gather(*(guess(http, "admin") for _ in range(GUESSES)))
    statuses = Counter(answer.status_code for answer in answers)
    # Guesses in flight count as the failures they may be: the free ones are checked, the rest are refused at
    # once. One more is checked only if it arrives after those have all failed, as it would one after another.
    assert FREE_FAILURES <= statuses[401] <= FREE_FAILURES + 1, statuses
    assert statuses[429] == GUESSES - statuses[401], statuses
    assert all(answer.headers["retry-after"].isdigit() for answer in answers if answer.status_code == 429)
    checks = password_checks(attacked.server, "admin", since=log_before)
    assert len(checks) == statuses[401], "argon2 ran for the admitted guesses only"
    assert max(checks) <= CHECKS_AT_ONCE

    assert await evidence(attacked, victim.thread_id, tmp_path / "after") == before
    await asyncio.sleep(2)  # at most the first wait (1 s) was started: the owner logs in after it
    assert (await login(attacked.server.url, "admin", ADMIN_PASSWORD))["access_token"]


async def test_parallel_guesses_for_many_names_are_checked_one_at_a_time(attacked: Running):
    names = [f"someone-{n}" for n in range(12)]  # fewer than one address's free failures left after the test above
    async with httpx.AsyncClient(base_url=attacked.server.url, timeout=120) as http:
        answers = await asyncio.gather(*(guess(http, name) for name in names))
    assert [answer.status_code for answer in answers] == [401] * len(names)
    checks = [running for name in names for running in password_checks(attacked.server, name)]
    assert len(checks) == len(names)
    assert max(checks) <= CHECKS_AT_ONCE, "argon2 checks ran side by side, taking the CPU from answers"


# 7. A reply to a question, sent after its login ended, is refused and stores nothing ---------------


async def test_a_reply_to_a_question_after_logout_is_refused_and_stores_nothing(attacked: Running, tmp_path: Path):
    add_account(attacked.server, "leaver", PASSWORD)
    async with ChatClient(attacked.server.url, username="leaver", password=PASSWORD) as leaver:
        await leaver.change_settings({"max_new_tokens": 16})
        answer = only_answer(await leaver.ask("What torque for an M8 bolt?"))
        assert (await leaver.rate(answer["parentId"], 0)).status_code == 200
        [correct] = leaver.actions_for(answer["id"], "correct")
        async with httpx.AsyncClient(base_url=leaver.url, cookies=leaver.cookies, timeout=60) as http:
            clicked = asyncio.create_task(
                http.post("/project/action", json={"action": correct, "sessionId": leaver.session_id})
            )
            asked = await leaver.wait_for("ask")  # "Write the answer you wanted"
            for _ in range(100):  # Chainlit stores the question in a task of its own
                if await stored_step(attacked, asked["msg"]["id"]):
                    break
                await asyncio.sleep(0.1)
            assert (await http.post("/logout")).status_code == 200
            assert (await http.get("/user")).status_code == 401
            before = await evidence(attacked, leaver.thread_id, tmp_path / "before")

            await leaver.ask_answers.put("A correction sent after logging out.")  # on the socket still open
            assert (await clicked).status_code == 200  # the button's callback has ended
        # Compared before the socket closes: Chainlit then saves the session into the thread, as for any chat.
        assert await evidence(attacked, leaver.thread_id, tmp_path / "after") == before
        assert (await leaver.wait_for("toast"))["message"].startswith("This login has ended")

    async with attacked.sessions() as session:
        assert not (await session.scalars(select(Correction.id).where(Correction.thread_id == leaver.thread_id))).all()


async def stored_step(attacked: Running, step_id: str) -> bool:
    async with attacked.sessions() as session:
        return await session.scalar(select(Step.id).where(Step.id == step_id)) is not None


async def test_a_stop_after_logout_is_refused_and_the_socket_closed(attacked: Running):
    """Not only messages: a stop (it would cancel the user's run) from a login that has ended is refused with
    a notice, and the socket is closed."""
    add_account(attacked.server, "stopper", PASSWORD)
    async with ChatClient(attacked.server.url, username="stopper", password=PASSWORD) as stopper:
        await stopper.change_settings({"max_new_tokens": 16})
        only_answer(await stopper.ask("Name a pump type."))
        async with httpx.AsyncClient(base_url=stopper.url, cookies=stopper.cookies) as http:
            assert (await http.post("/logout")).status_code == 200
        before = await quiet_thread_rows(attacked.sessions, stopper.thread_id)
        await stopper.stop()
        assert (await stopper.wait_for("new_message"))["output"].startswith("This login has ended")
        async with asyncio.timeout(30):
            await stopper.sio.wait()  # until the server closes it
    after = await thread_rows(attacked.sessions, stopper.thread_id)
    assert after["steps"] == before["steps"], "nothing was stored for the stop"


# 8. X-Forwarded-For counts only from a proxy named in LOUPE_TRUSTED_PROXIES --------------------------
# Last in the module: it uses up the free failures of 127.0.0.1.


async def test_forged_forwarded_addresses_from_an_untrusted_peer_are_ignored(attacked: Running):
    """No proxy is trusted by default, loopback included: guesses for ever-new names, each claiming to be
    forwarded for a new address, still count against the one address they come from."""
    async with httpx.AsyncClient(base_url=attacked.server.url) as http:
        for n in range(FREE_FAILURES_PER_ADDRESS + 2):
            answer = await guess(http, f"nobody-{n}", f"198.51.100.{n}")
            if answer.status_code == 429:
                break
            assert answer.status_code == 401
    assert answer.status_code == 429, "each forged address got free failures of its own"
    await asyncio.sleep(int(answer.headers["retry-after"]))  # the wait sat out: the address may log in again


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server behind a proxy on this host (no storage involved: SQLite only)."""
    process, server = start_server(tmp_path_factory.mktemp("behind-proxy"), LOUPE_TRUSTED_PROXIES="127.0.0.1,::1")
    yield server
    stop_server(process)


async def test_a_trusted_proxy_names_the_client_by_the_right_most_address_it_did_not_add(behind_proxy: Server):
    client, neighbour = "203.0.113.7", "203.0.113.8"
    async with httpx.AsyncClient(base_url=behind_proxy.url) as http:
        # The client writes what it likes left of the address the proxy appended: only that one counts.
        statuses = [
            (await guess(http, f"nobody-{n}", f"198.51.100.{n}, {client}")).status_code
            for n in range(FREE_FAILURES_PER_ADDRESS + 2)
        ]
        assert statuses == [401] * (FREE_FAILURES_PER_ADDRESS + 1) + [429]
        assert (await guess(http, "nobody-else", f"{client}, 127.0.0.1")).status_code == 429  # trusted hops skipped
        assert (await guess(http, "nobody-else", neighbour)).status_code == 401  # another client of the proxy
        assert (await guess(http, "nobody-else")).status_code == 401  # the proxy itself, sending no header
