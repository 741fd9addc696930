"""Adapters as chat profiles in the running app: listed without a restart, recorded on every answer,
compared blind in the arena, ranked on the leaderboard, and promoted to the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat.store.generations import CONTENDER_FIELDS
from chat.ui.routes import VOTE_FIRST
from tests.helpers.client import (
    GREEDY,
    ChatClient,
    arena_answers,
    listed_profiles,
    login,
    offered_profiles,
    only_answer,
)
from tests.helpers.datasets import save_adapter
from tests.helpers.server import Server, add_account, chat, start_server, stored


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    save_adapter(folder / "engineering-v1", seed=1)
    return folder


@pytest.fixture(scope="module")
def server_with_adapters(tmp_path_factory: pytest.TempPathFactory, adapters_dir: Path) -> Iterator[Server]:
    process, running = start_server(tmp_path_factory.mktemp("app"), LOUPE_ADAPTERS_DIR=str(adapters_dir))
    yield running
    process.terminate()
    process.wait(timeout=20)


async def test_a_new_adapter_becomes_a_profile_without_a_restart(
    server_with_adapters: Server, adapters_dir: Path
) -> None:
    assert await listed_profiles(server_with_adapters) == {"Base model": True, "engineering-v1": False, "Arena": False}
    save_adapter(adapters_dir / "engineering-v2", seed=2)
    assert list(await listed_profiles(server_with_adapters)) == [
        "Base model",
        "engineering-v1",
        "engineering-v2",
        "Arena",
    ]

    async with ChatClient(server_with_adapters.url, profile="engineering-v2") as client:
        await client.change_settings(GREEDY)
        answer = only_answer(await client.ask("Which bolt grade is stronger?"))
    [(adapter, version)] = await stored(
        server_with_adapters,
        "SELECT adapter, adapter_version FROM generations WHERE step_id = ?",
        answer["id"],
        count=1,
    )
    assert adapter == "engineering-v2" and len(version) == 16


async def test_a_users_last_profile_and_settings_start_their_next_chats(server_with_adapters: Server) -> None:
    """Kept with the user, not the browser: another tab (or computer) starts with the profile and settings the
    user last chose, until they pick the default again; another user's chats are untouched."""
    url = server_with_adapters.url
    for name in ("rita", "sam"):
        add_account(server_with_adapters, name, f"{name}-password-1")
    async with ChatClient(url, username="rita", password="rita-password-1", profile="engineering-v1") as tab:
        assert initial_settings(tab)["max_new_tokens"] == 128, "the demo model's default: a short answer"
        await tab.change_settings({"max_new_tokens": 48, "system_prompt": "concise"})

    rita = await login(url, "rita", "rita-password-1")  # a login of its own: another browser
    assert (await offered_profiles(url, rita))["engineering-v1"] is True
    async with ChatClient(url, username="rita", cookies=rita, profile="engineering-v1") as other:
        assert {"max_new_tokens": 48, "system_prompt": "concise"}.items() <= initial_settings(other).items()
        answer = only_answer(await other.ask("Which bolt grade is stronger?"))
    [(settings,)] = await stored(
        server_with_adapters, "SELECT settings FROM generations WHERE step_id = ?", answer["id"], count=1
    )
    assert json.loads(settings)["max_new_tokens"] == 48, "answered with them"

    sam = await login(url, "sam", "sam-password-1")
    assert (await offered_profiles(url, sam))["Base model"] is True
    async with ChatClient(url, username="sam", cookies=sam) as theirs:
        assert initial_settings(theirs)["max_new_tokens"] == 128

    async with ChatClient(url, username="rita", cookies=rita, profile="Base model"):
        pass  # back to the team's default: it is followed again
    assert (await offered_profiles(url, rita))["Base model"] is True
    async with ChatClient(url, username="rita", cookies=rita) as later:
        assert initial_settings(later)["max_new_tokens"] == 48, "the settings stay remembered"


def initial_settings(client: ChatClient) -> dict[str, object]:
    """The settings panel's values as the chat opened."""
    return {widget["id"]: widget["initial"] for widget in client.settings_panel}


async def test_arena_answers_blind_twice_and_the_vote_is_a_battle(
    server_with_adapters: Server, adapters_dir: Path
) -> None:
    async with ChatClient(server_with_adapters.url, profile="Arena") as client:
        assert any(greeting["output"].startswith("**Arena.**") for greeting in client.greetings)
        await client.change_settings(GREEDY)
        reply = await client.ask("What torque for an M8 bolt?")
        a, b = arena_answers(reply)
        assert a["output"].startswith("*Answer A*\n\n") and b["output"].startswith("*Answer B*\n\n")
        assert not client.actions_for(a["id"], "regenerate")
        # Blind means blind on the socket too: nothing the browser was sent names who wrote A or B.
        sent = [message for message in client.seen_messages if message["id"] in (a["id"], b["id"])]
        assert sent and all(set(message["metadata"]["generation"]).isdisjoint(CONTENDER_FIELDS) for message in sent)
        async with httpx.AsyncClient(base_url=server_with_adapters.url, cookies=client.cookies) as http:
            thread = (await http.get(f"/project/thread/{client.thread_id}")).json()
        answers = [step for step in thread["steps"] if step["id"] in (a["id"], b["id"])]
        assert len(answers) == 2
        assert all(set(step["metadata"]["generation"]).isdisjoint(CONTENDER_FIELDS) for step in answers)
        assert all(step["metadata"]["generation"]["completion"] for step in answers), "the rest is there"
        # Until the vote, the answers cannot be rated: a thumb would be cast blind and show who wrote it.
        refused = await client.rate(a["parentId"], 1)
        assert (refused.status_code, refused.json()["detail"]) == (409, VOTE_FIRST)
        votes = {action["payload"]["choice"]: action for action in client.actions_for(b["id"], "vote")}
        (await client.click(votes["a"])).raise_for_status()
        reveal = client.seen_messages[-1]["output"]
        assert reveal.startswith("Answer A was **")
        # A battle has one vote: once the contenders are known, voting again changes nothing.
        (await client.click(votes["b"])).raise_for_status()
        assert client.toasts[-1]["message"] == "This battle has its vote: a battle is voted once, before the reveal."
        (await client.rate(a["parentId"], 1)).raise_for_status()
        async with httpx.AsyncClient(base_url=server_with_adapters.url, cookies=client.cookies) as http:
            thread = (await http.get(f"/project/thread/{client.thread_id}")).json()
        [view] = [element["props"] for element in thread["elements"] if element["name"] == "SideBySide"]

    [(contender_a, contender_b, choice, blind_choice)] = await stored(
        server_with_adapters,
        "SELECT contender_a, contender_b, choice, blind_choice FROM battles WHERE answer_a = ?",
        a["id"],
        count=1,
    )
    assert contender_a != contender_b and (choice, blind_choice) == ("a", "a")
    shown_a, shown_b = ("the base model" if name == "base" else name for name in (contender_a, contender_b))
    assert reveal == f"Answer A was **{shown_a}**; answer B was **{shown_b}**."
    # A resumed chat shows the battle as it now stands: the vote marked, who wrote which named.
    assert [vote["chosen"] for vote in view["votes"]] == [True, False, False, False]
    assert [column["contender"] for column in view["columns"]] == [shown_a, shown_b]
    generated = await stored(
        server_with_adapters,
        "SELECT COALESCE(adapter, 'base') FROM generations WHERE step_id IN (?, ?) ORDER BY created_at",
        a["id"],
        b["id"],
        count=2,
    )
    assert [name for (name,) in generated] == [contender_a, contender_b], "each side answered as recorded"
    assert (
        await stored(server_with_adapters, "SELECT choice FROM comparisons WHERE answer_a = ?", a["id"], count=1)
    ) == [("a",)], "the vote is also a preference pair for export"

    board = json.loads(chat(server_with_adapters, adapters_dir, "leaderboard", "--json"))
    assert (board["stored"], board["counted"], board["changed_after_reveal"]) == (1, 1, 0)
    standing = {row["contender"].split("@")[0]: row for row in board["standings"]}
    assert (standing[contender_a]["wins"], standing[contender_b]["losses"]) == (1, 1), "the blind vote counts"
    assert all(row["provisional"] and not row["retired"] for row in board["standings"])
    table = chat(server_with_adapters, adapters_dir, "leaderboard")
    assert "1 of 1 battles counted." in table


async def test_a_battle_voted_in_a_later_session_shows_the_vote_when_resumed(server_with_adapters: Server) -> None:
    async with ChatClient(server_with_adapters.url, profile="Arena") as client:
        await client.change_settings(GREEDY)
        a, b = arena_answers(await client.ask("Which thread pitch for an M6 bolt?"))
    async with ChatClient(server_with_adapters.url, profile="Arena", thread_id=client.thread_id) as resumed:
        [tie] = [action for action in resumed.actions_for(b["id"], "vote") if action["payload"]["choice"] == "tie"]
        (await resumed.click(tie)).raise_for_status()
        [shown] = [element["props"] for element in resumed.elements.values() if element["name"] == "SideBySide"]
        async with httpx.AsyncClient(base_url=server_with_adapters.url, cookies=resumed.cookies) as http:
            thread = (await http.get(f"/project/thread/{resumed.thread_id}")).json()
    [view] = [element["props"] for element in thread["elements"] if element["name"] == "SideBySide"]
    assert view == shown, "the page's view is the stored one, redrawn"
    assert [vote["chosen"] for vote in view["votes"]] == [False, False, True, False]
    assert [column["answerId"] for column in view["columns"]] == [a["id"], b["id"]]
    assert all(column["contender"] for column in view["columns"]), "who wrote which, named"
    assert all(column["text"] for column in view["columns"]), "the answers, as they were"


async def test_promotion_makes_an_adapter_the_default_profile(server_with_adapters: Server, adapters_dir: Path) -> None:
    refused = chat(server_with_adapters, adapters_dir, "promote", "engineering-v1", fails=True)
    assert "Not promoted: engineering-v1@" in refused and "Promote anyway with --force." in refused
    assert (await listed_profiles(server_with_adapters))["Base model"] is True, "refused: nothing changed"
    chat(server_with_adapters, adapters_dir, "promote", "engineering-v1", "--force")
    assert (await listed_profiles(server_with_adapters))["engineering-v1"] is True
    async with ChatClient(server_with_adapters.url) as client:  # no profile chosen: the default
        await client.change_settings(GREEDY)
        answer = only_answer(await client.ask("Hello?"))
    [(adapter,)] = await stored(
        server_with_adapters, "SELECT adapter FROM generations WHERE step_id = ?", answer["id"], count=1
    )
    assert adapter == "engineering-v1"
    chat(server_with_adapters, adapters_dir, "promote", "base", "--force")
    assert (await listed_profiles(server_with_adapters))["Base model"] is True
