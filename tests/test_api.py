"""Loupe's OpenAI-compatible API, called by the real `openai` SDK and by raw HTTP: answers stored as the
page stores them, feedback that reaches the export, keys that read and write only their user's data."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI
from PIL import Image
from sqlalchemy import text

from tests.helpers.client import ChatClient
from tests.helpers.server import REPO, Running, add_account, serve

PASSWORD = "api-test-password"
# What does not touch the database differently on PostgreSQL (the wire format, refusals before any write, the
# sampling) runs on the SQLite server only: the module's time is mostly its servers' answers.
SQLITE_ONLY = pytest.mark.parametrize("app", ["sqlite"], indirect=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """A server of its own (its message rate is the test's; a call over 4 images of 2 MB is too large), on each
    database, with users ada and bob."""
    async with AsyncExitStack() as stack:
        running = await serve(
            stack,
            request.param,
            tmp_path_factory.mktemp("api"),
            LOUPE_MESSAGES_PER_MINUTE="1000",
            LOUPE_MAX_UPLOAD_MB="2",
        )
        for name in ("ada", "bob"):
            add_account(running.server, name, PASSWORD + "\n")
        yield running


def loupe(app: Running, *args: str) -> str:
    """`python -m chat ...` on the server's database: what it printed."""
    server = app.server
    environment = {**os.environ, "LOUPE_DATA_DIR": str(server.data_dir), **server.env}
    done = subprocess.run(
        [sys.executable, "-m", "chat", *args], capture_output=True, text=True, cwd=REPO, env=environment
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(app: Running, user: str, *options: str) -> str:
    """`python -m chat keys add USER`: the key is its output's last line."""
    return loupe(app, "keys", "add", user, *options).splitlines()[-1]


def exported(app: Running, out: Path, format: str) -> list[dict[str, Any]]:
    loupe(app, "export", "--format", format, "--out", str(out))
    return [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]


async def rows(app: Running, query: str, **parameters: Any) -> list[tuple]:
    async with app.sessions() as session:
        return [tuple(row) for row in await session.execute(text(query), parameters)]


def client(app: Running, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.server.url}/v1", api_key=key, max_retries=0)


def png_data_url(color: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def as_json(value: Any) -> Any:
    """A JSON column as read by raw SQL: text on SQLite (and asyncpg), already decoded elsewhere."""
    return json.loads(value) if isinstance(value, str) else value


async def test_a_script_streams_an_answer_about_an_image_rates_it_and_the_export_holds_it(
    app: Running, tmp_path: Path
) -> None:
    ada, bob = new_key(app, "ada", "--name", "script"), new_key(app, "bob")
    question = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this figure?"},
                {"type": "image_url", "image_url": {"url": png_data_url()}},
            ],
        }
    ]
    stream = client(app, ada).chat.completions.create(
        model="base", messages=question, stream=True, stream_options={"include_usage": True}, max_tokens=12
    )
    chunks = list(stream)
    completion_id = chunks[0].id
    answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert answer and chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    stored = await rows(
        app,
        "SELECT g.completion, g.prompt_id, t.metadata, u.identifier FROM generations g "
        "JOIN threads t ON t.id = g.thread_id JOIN users u ON u.id = t.user_id WHERE g.step_id = :id",
        id=completion_id,
    )
    assert len(stored) == 1 and stored[0][0] == answer, "the answer is stored under the completion's id"
    assert as_json(stored[0][2])["source"] == "api" and stored[0][3] == "ada", "in a conversation of the key's owner"
    images = await rows(app, "SELECT type FROM elements WHERE for_id = :id", id=stored[0][1])
    assert images == [("image",)], "with its image"

    # Another user's key finds nothing there; the owner's rating is stored.
    with pytest.raises(openai.NotFoundError):
        client(app, bob).post("/feedback", body={"id": completion_id, "value": -1}, cast_to=httpx.Response)
    client(app, ada).post(
        "/feedback",
        body={"id": completion_id, "value": 1, "reasons": ["correct"], "comment": "good"},
        cast_to=httpx.Response,
    )
    ratings = await rows(app, "SELECT value, reasons, comment FROM feedbacks")
    assert [(value, as_json(reasons), comment) for value, reasons, comment in ratings] == [(1, ["correct"], "good")]
    kto = exported(app, tmp_path / "kto", "trl-kto")
    assert [(row["completion"][0]["content"][0]["text"], row["label"]) for row in kto] == [(answer, True)]
    assert len(kto[0]["images"]) == 1

    # A revoked key is refused at once.
    loupe(app, "keys", "revoke", "ada", "script")
    with pytest.raises(openai.AuthenticationError):
        client(app, ada).models.list()


@SQLITE_ONLY
async def test_the_async_sdk_and_langchain_get_answers_and_models_list_the_default(app: Running) -> None:
    key = new_key(app, "ada")
    async_client = openai.AsyncOpenAI(base_url=f"{app.server.url}/v1", api_key=key, max_retries=0)
    listed = await async_client.models.list()
    assert [(model.id, model.loupe["default"]) for model in listed.data] == [("base", True)]
    pieces = [
        chunk.choices[0].delta.content or ""
        async for chunk in await async_client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
    ]
    assert "".join(pieces)
    model = ChatOpenAI(base_url=f"{app.server.url}/v1", api_key=key, model="base", max_tokens=6, max_retries=0)
    said = await model.ainvoke([HumanMessage("What does a diode do?")])
    assert (
        said.content
        and said.id
        and (await rows(app, "SELECT 1 FROM generations WHERE completion = :c", c=said.content))
    )
    streamed = "".join(chunk.content for chunk in model.stream("And a transistor?"))
    assert streamed


async def test_a_whole_answer_names_its_conversation_which_a_follow_up_continues(app: Running) -> None:
    ada = client(app, new_key(app, "ada"))
    first = ada.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert first.choices[0].message.content and first.usage.completion_tokens == 8
    conversation = first.model_extra["loupe"]["conversation"]
    follow_up = ada.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "And then?"}],
        max_tokens=8,
        extra_body={"loupe": {"conversation": conversation}},
    )
    record = await rows(app, "SELECT context, thread_id FROM generations WHERE step_id = :id", id=follow_up.id)
    assert [(as_json(context), thread) for context, thread in record] == [([first.id], conversation)], (
        "the follow-up saw the first answer"
    )
    bob = client(app, new_key(app, "bob"))
    for extension in ({"conversation": conversation}, {"regenerate_of": first.id}):
        with pytest.raises(openai.NotFoundError):
            bob.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "Hi"}], extra_body={"loupe": extension}
            )
    assert len(await rows(app, "SELECT 1 FROM steps WHERE thread_id = :id", id=conversation)) == 6, "bob wrote nothing"


async def test_a_client_that_sends_the_conversation_again_continues_it(app: Running) -> None:
    """LangChain's chat history, as most chat front ends, sends every turn again with the new message: the call
    continues the stored conversation of those turns; turns that are not one of the caller's are refused."""
    key = new_key(app, "ada")
    model = ChatOpenAI(base_url=f"{app.server.url}/v1", api_key=key, model="base", max_tokens=6, max_retries=0)
    history: list[BaseMessage] = [HumanMessage("What does a diode do?")]
    first = await model.ainvoke(history)
    history += [first, HumanMessage("And a transistor?")]
    second = await model.ainvoke(history)
    query = "SELECT context, thread_id FROM generations WHERE step_id = :id"
    first_id, second_id = first.response_metadata["id"], second.response_metadata["id"]  # the completions' ids
    ((_, conversation),) = await rows(app, query, id=first_id)
    assert [(as_json(context), thread) for context, thread in await rows(app, query, id=second_id)] == [
        ([first_id], conversation)
    ], "the second answer saw the first, in its conversation"
    forged = [HumanMessage("What does a diode do?"), AIMessage("It glows."), HumanMessage("Why?")]
    bob = ChatOpenAI(base_url=f"{app.server.url}/v1", api_key=new_key(app, "bob"), model="base", max_retries=0)
    for caller, turns in ((model, forged), (bob, history)):
        with pytest.raises(openai.BadRequestError) as refused:
            await caller.ainvoke(turns)
        assert refused.value.code == "unknown_conversation"
    assert len(await rows(app, "SELECT 1 FROM steps WHERE thread_id = :id", id=conversation)) == 6, "bob wrote nothing"
    assert not await rows(app, "SELECT 1 FROM steps WHERE output = 'Why?'"), "a refused call stores nothing"


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        ("Hi", 404, "model_not_found"),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}], 400, "invalid_image_url"),
        ([{"type": "image_url", "image_url": {"url": "data:text/html;base64,PGgxPg=="}}], 400, "invalid_image_url"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}], 400, "invalid_image"),
        ([{"type": "image_url", "image_url": {"url": png_data_url()}}] * 9, 400, "invalid_image"),
        ("x" * 40_000, 400, "message_too_long"),
        ([{"type": "input_audio", "input_audio": {}}], 400, "invalid_content"),
    ],
)
async def test_bad_messages_get_openai_shaped_errors(app: Running, content: Any, status: int, code: str) -> None:
    key = new_key(app, "ada")
    body = {
        "model": "nope" if code == "model_not_found" else "base",
        "messages": [{"role": "user", "content": content}],
    }
    answer = httpx.post(
        f"{app.server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert answer.json()["error"]["message"]


@SQLITE_ONLY
async def test_malformed_calls_and_missing_or_unknown_keys(app: Running) -> None:
    key = new_key(app, "ada")
    url, headers = f"{app.server.url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}
    for body in (
        b"{not json",
        b"{}",
        b'{"model": "base", "messages": []}',
        b'{"model": "base", "messages": [{"role": "user", "content": "Hi"}], "temperature": 9}',
    ):
        refused = httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] in ("invalid_request", "invalid_value")
    too_big = httpx.post(
        url, content=b"x" * (14 * 1024 * 1024), headers={**headers, "Content-Type": "application/json"}
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    for headers in ({}, {"Authorization": "Bearer loupe-forged"}, {"Authorization": key}):
        refused = httpx.get(f"{app.server.url}/v1/models", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


@SQLITE_ONLY
async def test_a_seed_samples_the_same_answer_and_a_stop_sequence_ends_it(app: Running) -> None:
    ada = client(app, new_key(app, "ada"))

    def ask(**options: object) -> str:
        asked = [{"role": "user", "content": "Describe a resistor."}]
        answer = ada.chat.completions.create(model="base", messages=asked, temperature=1, max_tokens=16, **options)
        return answer.choices[0].message.content

    whole = ask(seed=7)
    assert ask(seed=7) == whole and ask(seed=8) != whole
    stop = whole[len(whole) // 2 : len(whole) // 2 + 2]
    cut = ask(seed=7, stop=[stop])
    assert cut == whole[: whole.index(stop)]
    assert await rows(app, "SELECT 1 FROM generations WHERE completion = :c", c=cut), "stored as returned"


async def test_a_regenerated_answer_and_its_comparison_reach_the_dpo_export(app: Running, tmp_path: Path) -> None:
    bob = client(app, new_key(app, "bob"))
    asked = [{"role": "user", "content": "Which capacitor for a 5 V rail?"}]
    first = bob.chat.completions.create(model="base", messages=asked, max_tokens=8)
    again = bob.chat.completions.create(
        model="base", messages=asked, max_tokens=8, extra_body={"loupe": {"regenerate_of": first.id}}
    )
    prompts = await rows(
        app, "SELECT DISTINCT prompt_id FROM generations WHERE step_id IN (:a, :b)", a=first.id, b=again.id
    )
    assert len(prompts) == 1, "both answer the one stored message"
    bob.post("/feedback", body={"id": again.id, "compared_with": first.id, "choice": "b"}, cast_to=httpx.Response)
    pairs = [
        (row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"])
        for row in exported(app, tmp_path / "dpo", "trl-dpo")
        if row["prompt"][-1]["content"][-1]["text"] == asked[0]["content"]
    ]
    assert pairs == [(again.choices[0].message.content, first.choices[0].message.content)]


async def test_a_stream_the_client_drops_stops_the_answer_and_stores_it_as_stopped(app: Running) -> None:
    key = new_key(app, "ada")
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,
        "stream": True,
    }
    url, headers = f"{app.server.url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", url, json=body, headers=headers) as events:
        first = json.loads(next(line for line in events.iter_lines() if line.startswith("data: "))[6:])
    for _ in range(100):
        query = "SELECT ended, completion_tokens FROM generations WHERE step_id = :id"
        if stored := await rows(app, query, id=first["id"]):
            break
        await asyncio.sleep(0.2)
    assert stored and stored[0][0] == "stopped" and stored[0][1] < 2000


@SQLITE_ONLY
async def test_the_readmes_example_runs_as_written(app: Running) -> None:
    """README's "Using the API": its Python, run against this server with a key of ada's, streams an answer about
    the screenshot and rates it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Using the API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    example = example.replace("http://localhost:8000", app.server.url)
    environment = {**os.environ, "LOUPE_API_KEY": new_key(app, "ada")}
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, cwd=REPO, env=environment)
    printed = done.stdout.decode()  # as printed: the demo model's noise holds \r, which text mode would translate
    assert done.returncode == 0 and printed, done.stderr.decode()
    rated = await rows(
        app,
        "SELECT g.completion FROM feedbacks f JOIN steps s ON s.parent_id = f.for_id "
        "JOIN generations g ON g.step_id = s.id WHERE f.comment IS NULL AND f.value = 1",
    )
    assert rated == [(printed,)]


async def test_a_user_makes_and_revokes_a_key_from_the_page_and_the_key_is_never_stored(app: Running) -> None:
    async with ChatClient(app.server.url, username="bob", password=PASSWORD) as page:
        [listing] = (await page.ask("", command="API keys")).messages
        [new] = page.actions_for(listing["id"], "new_api_key")
        (await page.click(new)).raise_for_status()
        shown = next(message["output"] for message in page.seen_messages if "`loupe-" in message["output"])
        key, name = shown.split("`")[1], shown.split("**")[1]
        assert client(app, key).models.list().data, "the key shown works"
        relisted = [m for m in page.seen_messages if m["output"].startswith("**Your API keys** (")][-1]
        assert f"- **{name}**: made " in relisted["output"] and key not in relisted["output"]
        [revoke] = [b for b in page.actions_for(relisted["id"], "revoke_api_key") if b["payload"] == {"name": name}]
        (await page.click(revoke)).raise_for_status()
    with pytest.raises(openai.AuthenticationError):
        client(app, key).models.list()
    assert not await rows(app, "SELECT id FROM steps WHERE output LIKE :key", key=f"%{key}%"), "never stored"


async def test_a_document_put_in_the_library_through_the_api_is_cited_in_its_conversation(app: Running) -> None:
    ada, bob = client(app, new_key(app, "ada")), client(app, new_key(app, "bob"))
    notes = b"The relay K4 switches the 24 V heater.\n"
    uploaded = ada.files.create(file=("bench-notes.txt", notes), purpose="assistants")
    assert (uploaded.filename, uploaded.bytes) == ("bench-notes.txt", len(notes))
    asked = [{"role": "user", "content": "What does K4 switch?"}]
    answer = ada.chat.completions.create(
        model="base", messages=asked, max_tokens=8, extra_body={"loupe": {"files": [uploaded.id]}}
    )
    cited = [(source["name"], source["page"]) for source in answer.model_extra["loupe"]["sources"]]
    assert cited == [("bench-notes.txt", 1)]
    conversation = answer.model_extra["loupe"]["conversation"]
    follow_up = ada.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "And at what voltage?"}],
        max_tokens=8,
        extra_body={"loupe": {"conversation": conversation}},
    )
    assert [source["name"] for source in follow_up.model_extra["loupe"]["sources"]] == ["bench-notes.txt"], (
        "the conversation keeps its documents"
    )
    record = await rows(app, "SELECT sources FROM generations WHERE step_id = :id", id=answer.id)
    assert [source["sha256"] for source in as_json(record[0][0])] == [uploaded.id], "the record names what was shown"
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model="base", messages=asked, extra_body={"loupe": {"files": [uploaded.id]}})
    with pytest.raises(openai.BadRequestError, match="Only PDFs and UTF-8 text files"):
        ada.files.create(file=("figure.png", base64.b64decode(png_data_url().split(",")[1])), purpose="assistants")


async def test_a_conversation_started_through_the_api_is_listed_and_resumed_in_the_browser(app: Running) -> None:
    ada = client(app, new_key(app, "ada"))
    first = ada.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Size a fuse."}], max_tokens=8
    )
    conversation = first.model_extra["loupe"]["conversation"]
    async with ChatClient(app.server.url, username="ada", password=PASSWORD, thread_id=conversation) as page:
        async with httpx.AsyncClient(base_url=app.server.url, cookies=page.cookies) as http:
            listed = await http.post("/project/threads", json={"pagination": {"first": 50}, "filter": {}})
        names = {thread["id"]: thread["name"] for thread in listed.json()["data"]}
        assert names[conversation] == "API · Size a fuse."
        await page.change_settings({"max_new_tokens": 8})
        follow_up = (await page.ask("And for 5 A?")).messages[-1]
    context = await rows(app, "SELECT context FROM generations WHERE step_id = :id", id=follow_up["id"])
    assert as_json(context[0][0]) == [first.id], "the browser went on from the API's answer"


async def test_a_key_shares_its_users_message_rate_with_the_page(tmp_path: Path) -> None:
    """LOUPE_MESSAGES_PER_MINUTE is the user's, whatever they send through: a page message and an API call."""
    async with AsyncExitStack() as stack:
        limited = await serve(stack, "sqlite", tmp_path, LOUPE_MESSAGES_PER_MINUTE="2")
        ada = client(limited, new_key(limited, "admin"))
        async with ChatClient(limited.server.url) as page:
            await page.change_settings({"max_new_tokens": 4})
            assert (await page.ask("One.")).messages
        ada.chat.completions.create(model="base", messages=[{"role": "user", "content": "Two."}], max_tokens=4)
        with pytest.raises(openai.RateLimitError, match="Too many messages"):
            ada.chat.completions.create(model="base", messages=[{"role": "user", "content": "Three."}], max_tokens=4)
