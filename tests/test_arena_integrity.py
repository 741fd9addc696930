"""The arena's evidence cannot be steered by a hostile user (issue 21): a battle exists only because the arena
held one, a vote settles it once, and nothing reachable tells who wrote A or B before the vote.

Each attack is made as it was found, through the socket and HTTP as the page speaks them, against a real server
on SQLite and on PostgreSQL with one adapter; the leaderboard and the stored preferences are read back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import Select, select

from chat.arena.leaderboard import as_json, outcomes, standings
from chat.store.preferences import Preferences
from chat.store.rows import NotYours
from chat.store.schema import Battle, Comparison, Feedback, Generation
from chat.ui.routes import VOTE_FIRST
from tests.helpers.client import GREEDY, ChatClient, arena_answers, only_answer
from tests.helpers.dashboard import dashboard
from tests.helpers.datasets import save_adapter
from tests.helpers.server import Running, add_account, serve

ADAPTER = "engineering-v1"
PASSWORD = "arena-password-1"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def arena(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    app_root, adapters = tmp_path_factory.mktemp(f"arena-{request.param}"), tmp_path_factory.mktemp("adapters")
    save_adapter(adapters / ADAPTER, seed=1)
    async with AsyncExitStack() as stack:
        running = await serve(stack, request.param, app_root, LOUPE_ADAPTERS_DIR=str(adapters))
        for name in ("eve", "ann", "bob"):
            add_account(running.server, name, PASSWORD)
        yield running


def user(arena: Running, name: str, **options: object) -> ChatClient:
    return ChatClient(arena.server.url, username=name, password=PASSWORD, **options)


async def board(arena: Running) -> str:
    """The leaderboard of everything stored, as `python -m chat leaderboard --json` prints it."""
    return as_json(standings(await outcomes(arena.sessions)))


async def scalars(arena: Running, query: Select) -> list:
    async with arena.sessions() as session:
        return list(await session.scalars(query))


async def test_answers_asked_under_two_profiles_are_never_a_battle(arena: Running) -> None:
    """Attack: ask under "Base model", regenerate that answer in a second socket under the adapter's profile,
    then open the thread a third time under "Arena". The restored buttons offered a vote between the two (whose
    writers the user knew), and the vote was ranked. Now only a battle the arena held can be voted on."""
    before = await board(arena)
    async with user(arena, "eve") as eve:
        await eve.change_settings(GREEDY)
        asked = only_answer(await eve.ask("Which bolt grade is stronger?"))
    async with user(arena, "eve", thread_id=eve.thread_id, profile=ADAPTER) as again:
        regenerated = only_answer(await again.regenerate(asked["id"]))
    async with user(arena, "eve", thread_id=eve.thread_id, profile="Arena") as voting:
        offered = [action for action in voting.actions.values() if action["name"] == "vote"]
    assert offered == [], "no vote between answers the arena never held"
    # Nor can the store be made to take one: a vote settles only a battle the arena recorded.
    with pytest.raises(NotYours):
        await Preferences(arena.sessions).vote("eve", asked["id"], regenerated["id"], "b")
    answers = [asked["id"], regenerated["id"]]
    adapters = await scalars(arena, select(Generation.adapter).where(Generation.step_id.in_(answers)))
    assert set(adapters) == {None, ADAPTER}, "written under the two profiles, as the attack needs"
    assert await board(arena) == before
    assert await scalars(arena, select(Battle.id).where(Battle.answer_b.in_(answers))) == []
    assert await scalars(arena, select(Comparison.id).where(Comparison.answer_b.in_(answers))) == []


async def test_before_the_vote_nothing_tells_who_wrote_a_or_b_and_a_battle_has_one_vote(arena: Running) -> None:
    """Attack: in the arena, rate answer A before voting (PUT /feedback answered 200), then open the Dashboard:
    its CSVs and filter buttons named the adapter. And with temperature 0, the same question under each profile
    reproduced answer A. Now blind answers cannot be rated before the vote, nothing shows the contenders, and
    the arena samples with the server's settings; the vote is final, and another user cannot cast it."""
    async with user(arena, "ann", profile="Arena") as ann:
        await ann.change_settings(GREEDY)  # temperature 0: what the arena must not use
        a, b = arena_answers(await ann.ask("What torque for an M8 bolt?"))
        refused = await ann.rate(a["parentId"], 1)
        assert (refused.status_code, refused.json()["detail"]) == (409, VOTE_FIRST)
        text, files = await dashboard(ann)
        shown = [text, *files.values(), *(str(action) for action in ann.actions.values())]
        assert not [part for part in shown if ADAPTER in part], "the dashboard names no contender before the vote"
        assert "vote" in {action["name"] for action in ann.actions_for(b["id"])}
        votes = {action["payload"]["choice"]: action for action in ann.actions_for(b["id"], "vote")}

        # Another user cannot settle ann's battle, not even through the store.
        with pytest.raises(NotYours):
            await Preferences(arena.sessions).vote("bob", a["id"], b["id"], "b")

        (await ann.click(votes["a"])).raise_for_status()
        (await ann.click(votes["b"])).raise_for_status()  # after the reveal: refused
        assert ann.toasts[-1]["message"].startswith("This battle has its vote")
        (await ann.rate(a["parentId"], 1)).raise_for_status()  # voted: it may be rated now

    [battle] = await scalars(arena, select(Battle).where(Battle.answer_a == a["id"]))
    assert (battle.answer_b, battle.choice, battle.blind_choice) == (b["id"], "a", "a")
    assert battle.session_id == ann.session_id and battle.voted_at >= battle.created_at
    async with arena.sessions() as session:
        settings = list(
            await session.scalars(select(Generation.settings).where(Generation.step_id.in_([a["id"], b["id"]])))
        )
        rated = await session.scalar(select(Feedback.value).where(Feedback.for_id == a["parentId"]))
    assert [(s["temperature"], s["top_p"], s["max_new_tokens"]) for s in settings] == [(0.7, 1.0, 16)] * 2
    assert rated == 1
