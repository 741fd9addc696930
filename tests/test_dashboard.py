"""The dashboard in the running app: the Dashboard command posts the charts and their CSVs, of the user's
own data, or of everyone's for an admin (LOUPE_ADMINS); a filter button narrows it to one contender."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from chat.ui.texts import text
from tests.helpers.client import GREEDY, ChatClient
from tests.helpers.dashboard import battle, dashboard, rated_answer, table
from tests.helpers.datasets import save_adapter
from tests.helpers.server import Server, add_account, start_server, stop_server

BOB_PASSWORD = "bob-password-1"
CHARTS = ("leaderboard", "feedback", "reasons", "battles")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    adapters = tmp_path_factory.mktemp("adapters")
    save_adapter(adapters / "engineering-v1", seed=1)
    process, running = start_server(tmp_path_factory.mktemp("app"), LOUPE_ADAPTERS_DIR=str(adapters))
    add_account(running, "bob", BOB_PASSWORD)
    yield running
    stop_server(process)


async def test_a_users_dashboard_shows_their_data_and_an_admins_everyones(server: Server) -> None:
    async with ChatClient(server.url, username="bob", password=BOB_PASSWORD) as bob:
        await bob.change_settings(GREEDY)
        await rated_answer(bob, "Which pull-up for I2C at 400 kHz?", 1, "helpful")
        await rated_answer(bob, "And at 100 kHz?", 0)
    async with ChatClient(server.url, username="bob", password=BOB_PASSWORD, profile="Arena") as bob:
        await bob.change_settings(GREEDY)
        await battle(bob, "Which bolt grade is stronger?", "a")
    async with ChatClient(server.url) as admin:
        await admin.change_settings(GREEDY)
        for question in ("What torque for M8?", "What torque for M10?", "What torque for M12?"):
            await rated_answer(admin, question, 0, "wrong")

    async with ChatClient(server.url, username="bob", password=BOB_PASSWORD) as bob:
        text, files = await dashboard(bob)
    assert "your data" in text and "everyone" not in text
    assert "1 of 1 battles counted" in text
    for chart in CHARTS:
        figure = json.loads(files[chart])  # the Plotly element's figure, as the page loads it
        assert figure["data"] is not None and figure["layout"]["title"]["text"]
    [(up, down)] = [(int(r["up"]), int(r["down"])) for r in table(files["feedback.csv"]) if r["contender"] == "base"]
    assert (up, down) == (1, 1), "bob's own thumbs only: not the admin's three thumbs down"
    assert {r["reason"]: int(r["answers"]) for r in table(files["reasons.csv"])} == {"helpful": 1}
    assert [(int(r["stored"]), int(r["counted"])) for r in table(files["battles.csv"])] == [(1, 1)]
    board = table(files["leaderboard.csv"])
    assert len(board) == 2 and all(row["provisional"] == "True" for row in board)
    assert sum(int(row["wins"]) for row in board) == 1
    dataset = table(files["dataset.csv"])
    assert dataset and all(row["adapter"] for row in dataset)

    async with ChatClient(server.url) as admin:
        text, files = await dashboard(admin)
    assert "everyone's data" in text
    totals = table(files["feedback.csv"])
    assert (sum(int(row["up"]) for row in totals), sum(int(row["down"]) for row in totals)) == (1, 4)
    reasons = {r["reason"]: int(r["answers"]) for r in table(files["reasons.csv"])}
    assert reasons["wrong"] == 3 and reasons["helpful"] == 1


async def test_a_filter_narrows_the_dashboard_to_one_contender(server: Server) -> None:
    async with ChatClient(server.url, username="bob", password=BOB_PASSWORD, profile="Arena") as bob:
        await bob.change_settings(GREEDY)
        await battle(bob, "Is a 2.2k pull-up too strong?", "tie")
        await dashboard(bob)
        [shown] = [m for m in bob.seen_messages if m["output"].startswith("**Dashboard")]
        filters = {action["payload"]["contender"]: action for action in bob.actions_for(shown["id"], "dashboard")}
        adapter = next(name for name in filters if name.startswith("engineering-v1@"))
        assert set(filters) >= {"", "base", adapter}
        text, files = await dashboard(bob, click=filters[adapter])
    assert f"only {adapter}" in text
    board = table(files["leaderboard.csv"])
    assert adapter in {row["contender"] for row in board}
    assert all(int(row["stored"]) >= 1 for row in table(files["battles.csv"]))
    assert {row["adapter"] for row in table(files["dataset.csv"])} <= {"engineering-v1"}


async def test_the_dashboard_files_are_the_owners(server: Server) -> None:
    """The charts and CSVs are files of the dashboard's thread: another user cannot load them."""
    async with ChatClient(server.url) as admin:
        await dashboard(admin)
    urls = {element["url"] for element in admin.elements.values()}
    assert urls and all(url.startswith("/loupe/files/") for url in urls)
    async with ChatClient(server.url, username="bob", password=BOB_PASSWORD) as bob:
        await dashboard(bob)
        async with httpx.AsyncClient(base_url=server.url, cookies=bob.cookies) as http:
            for url in urls - {element["url"] for element in bob.elements.values()}:
                assert (await http.get(url)).status_code == 404


async def test_a_chart_with_nothing_to_draw_says_so(server: Server) -> None:
    """A new user's dashboard: every chart says it fills in as answers are rated, instead of bare axes."""
    add_account(server, "newbie", "newbie-password-1")
    async with ChatClient(server.url, username="newbie", password="newbie-password-1") as newbie:
        _, files = await dashboard(newbie)
    for chart in (*CHARTS, "dataset"):
        layout = json.loads(files[chart])["layout"]
        assert [note["text"] for note in layout["annotations"]] == [text("chart_empty", "en")], chart
        assert layout["xaxis"]["visible"] is False
