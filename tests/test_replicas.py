"""Several replicas for real: two Loupe processes behind HAProxy with the shipped configuration.

Chainlit keeps a chat's socket session, and the files uploaded for it, in the process that opened it, so a
team's replicas need a balancer with sticky sessions (docs/deployment.md, "Several replicas"). Here a user chats,
uploads, rates and stops an answer through the balancer while the process serving them is restarted: their page
reconnects to the other one, and everything the server acknowledged is in the shared database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from chat.store.database import create_engine, session_factory
from chat.store.schema import Element
from tests.helpers.client import LONG_ANSWER, ChatClient, png
from tests.helpers.databases import postgres_database
from tests.helpers.load import QUICK_SETTINGS, Account, add_accounts, read_when_quiet
from tests.helpers.replicas import NAMES, STICKY_COOKIE, Balanced, balanced_replicas

pytestmark = pytest.mark.slow

DISCONNECT_TIMEOUT_S = 30  # a stopped process closes its sockets as it shuts down


@pytest.fixture(scope="module")
async def balanced(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Balanced, Account]]:
    async with postgres_database() as url:
        [account] = await add_accounts(url, 1)
        with balanced_replicas(tmp_path_factory.mktemp("replicas"), url) as running:
            yield running, account


def ended(reply_messages: list[dict[str, Any]], how: str) -> dict[str, Any]:
    [answer] = [message for message in reply_messages if (message.get("metadata") or {}).get("ended") == how]
    return answer


async def test_a_chat_goes_on_through_a_restart_of_its_replica(balanced: tuple[Balanced, Account]) -> None:
    """Its process stopped, the user's page reconnects through the balancer to the other one and resumes the
    thread; with both up again, the chat stays there (an upload, a rating, a Stop); nothing acknowledged is lost."""
    replicas, account = balanced
    async with ChatClient(replicas.url, username=account.name, password=account.password) as before:
        home = before.cookies[STICKY_COOKIE]  # the process the balancer chose at the login
        [survivor] = set(NAMES) - {home}
        await before.change_settings(QUICK_SETTINGS)
        hello = ended((await before.ask("Hello?")).messages, "finished")
        assert (await before.rate(hello["parentId"], 1)).status_code == 200
        await asyncio.to_thread(replicas.stop, home)
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
            while before.sio.connected:
                await asyncio.sleep(0.1)

    restarting = asyncio.create_task(asyncio.to_thread(replicas.start, home))
    try:
        # The page reconnects as the browser does: a new socket to the balancer, with its cookies and the thread.
        async with ChatClient(replicas.url, thread_id=before.thread_id, cookies=before.cookies) as after:
            await after.wait_for("resume_thread")
            assert after.cookies[STICKY_COOKIE] == survivor, "the balancer did not send the page to the other process"
            during = ended((await after.ask("Still there?")).messages, "finished")
            await restarting
            await asyncio.to_thread(replicas.serving, home)  # new users go to it again; this chat must not
            # Two files: without stickiness, consecutive requests alternate between the processes: one would miss.
            images = [await after.upload(f"circuit-{n}.png", png(200 + n), "image/png") for n in range(2)]
            pictured = ended((await after.ask("What is R1?", images)).messages, "finished")
            assert (await after.rate(pictured["parentId"], 0)).status_code == 200
            await after.change_settings(LONG_ANSWER)
            await after.send("Explain the whole diagram in detail.")
            await after.wait_for("stream_start")
            await after.stop()
            stopped = ended((await after.collect()).messages, "stopped")
            assert after.cookies[STICKY_COOKIE] == survivor
    finally:
        await restarting  # a process still starting when the fixture stops the others would outlive the test

    stored = await read_when_quiet(replicas.database_url)
    steps = {step.id: step for step in stored.steps}
    records = {generation.step_id: generation.ended for generation in stored.generations}
    answers = {"finished": [hello, during, pictured], "stopped": [stopped]}
    for how, shown in answers.items():
        for answer in shown:
            assert steps[answer["id"]].metadata_["ended"] == records[answer["id"]] == how, answer["output"]
    assert {(feedback.for_id, feedback.value) for feedback in stored.feedbacks} == {
        (hello["parentId"], 1),
        (pictured["parentId"], 0),
    }
    question = steps[pictured["parentId"]].parent_id  # the user's message, parent of the answer's run
    files = await elements(replicas.database_url, before.thread_id)
    assert [(element.for_id, element.mime) for element in files] == [(question, "image/png")] * 2
    async with httpx.AsyncClient(base_url=replicas.url, cookies=after.cookies) as http:
        for element in files:  # served by either process: the data directory is shared
            assert (await http.get(f"/loupe/files/{element.object_key}")).status_code == 200


async def elements(database_url: str, thread_id: str) -> list[Element]:
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            return list(await session.scalars(select(Element).where(Element.thread_id == thread_id)))
    finally:
        await engine.dispose()


async def test_without_its_cookie_a_session_meets_the_other_replica(balanced: tuple[Balanced, Account]) -> None:
    """Why the stickiness: a page that drops the balancer's cookie has its requests spread over both processes,
    and the one that did not open its socket session answers its upload 404 (issue 22, item 5)."""
    replicas, account = balanced
    for name in NAMES:
        await asyncio.to_thread(replicas.serving, name)
    async with ChatClient(replicas.url, username=account.name, password=account.password) as client:
        del client.cookies[STICKY_COOKIE]
        statuses = []
        for _ in NAMES:  # round robin: one request to each process
            try:
                await client.upload("circuit.png", png(), "image/png")
                statuses.append(200)
            except httpx.HTTPStatusError as error:
                assert "Session not found" in error.response.text
                statuses.append(error.response.status_code)
    assert sorted(statuses) == [200, 404]
