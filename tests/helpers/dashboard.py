"""The Dashboard as a user receives it (its messages and every file posted with them), and what fills it:
rated answers with reasons and arena battles, made as the page makes them."""

from __future__ import annotations

import csv
import io

import httpx

from tests.helpers.client import ChatClient, arena_answers, only_answer


async def rated_answer(client: ChatClient, question: str, value: int, reason: str | None = None) -> None:
    """Ask, rate the answer, and tick a reason for the rating."""
    answer = only_answer(await client.ask(question))
    (await client.rate(answer["parentId"], value)).raise_for_status()
    if reason is not None:
        [button] = [b for b in client.actions_for(answer["id"], "reason") if b["payload"]["reason"] == reason]
        (await client.click(button)).raise_for_status()


async def battle(client: ChatClient, question: str, choice: str) -> None:
    reply = await client.ask(question)
    _, b = arena_answers(reply)
    [vote] = [action for action in client.actions_for(b["id"], "vote") if action["payload"]["choice"] == choice]
    (await client.click(vote)).raise_for_status()


async def dashboard(client: ChatClient, click: dict | None = None) -> tuple[str, dict[str, str]]:
    """The Dashboard command's (or a filter button's) messages, and every file posted with them by name,
    loaded as the page loads them."""
    before = len(client.seen_messages)
    if click is None:
        await client.ask("", command="Dashboard")
    else:
        (await client.click(click)).raise_for_status()
    messages = {message["id"]: message["output"] for message in client.seen_messages[before:]}
    files = {}
    async with httpx.AsyncClient(base_url=client.url, cookies=client.cookies) as http:
        for element in client.elements.values():
            if element["forId"] in messages:
                response = await http.get(element["url"])
                response.raise_for_status()
                files[element["name"]] = response.text
    return "\n".join(messages.values()), files


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))
