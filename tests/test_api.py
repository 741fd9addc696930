"""Loupe's OpenAI-compatible API, called by the real `openai` SDK and by raw HTTP: answers stored as the
page stores them, feedback that reaches the export, keys that read and write only their user's data."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.helpers.server import Server, add_account, chat, export_rows, rows, start_server, stop_server

PASSWORD = "api-test-password"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    process, running = start_server(tmp_path_factory.mktemp("api"), LOUPE_MESSAGES_PER_MINUTE="1000")
    for name in ("ada", "bob"):
        add_account(running, name, PASSWORD + "\n")
    yield running
    stop_server(process)


def new_key(server: Server, user: str, *options: str) -> str:
    """`python -m chat keys add USER`: the key is its output's last line."""
    return chat(server, server.data_dir / "adapters", "keys", "add", user, *options).splitlines()[-1]


def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def png_data_url(color: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_a_script_streams_an_answer_about_an_image_rates_it_and_the_export_holds_it(
    app: Server, tmp_path: Path
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
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text and chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    stored = rows(
        app,
        "SELECT g.completion, g.prompt_id, t.metadata FROM generations g JOIN threads t ON t.id = g.thread_id "
        "WHERE g.step_id = ?",
        completion_id,
    )
    assert len(stored) == 1 and stored[0][0] == text, "the answer is stored under the completion's id"
    assert json.loads(stored[0][2])["source"] == "api"
    assert rows(app, "SELECT type FROM elements WHERE for_id = ?", stored[0][1]) == [("image",)], "with its image"

    # Another user's key finds nothing there; the owner's rating is stored.
    with pytest.raises(openai.NotFoundError):
        client(app, bob).post("/feedback", body={"id": completion_id, "value": -1}, cast_to=httpx.Response)
    client(app, ada).post(
        "/feedback",
        body={"id": completion_id, "value": 1, "reasons": ["correct"], "comment": "good"},
        cast_to=httpx.Response,
    )
    assert rows(app, "SELECT value, reasons, comment FROM feedbacks") == [(1, '["correct"]', "good")]
    exported = export_rows(app, tmp_path / "kto", "trl-kto")
    assert [(row["completion"][0]["content"][0]["text"], row["label"]) for row in exported] == [(text, True)]
    assert len(exported[0]["images"]) == 1

    # A revoked key is refused at once.
    chat(app, app.data_dir / "adapters", "keys", "revoke", "ada", "script")
    with pytest.raises(openai.AuthenticationError):
        client(app, ada).models.list()


def test_models_list_the_base_model_as_the_default(app: Server) -> None:
    listed = client(app, new_key(app, "ada")).models.list()
    assert [(model.id, model.loupe["default"]) for model in listed.data] == [("base", True)]


def test_a_whole_answer_names_its_conversation_which_a_follow_up_continues(app: Server) -> None:
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
    record = rows(app, "SELECT context, thread_id FROM generations WHERE step_id = ?", follow_up.id)
    assert record == [(json.dumps([first.id]), conversation)], "the follow-up saw the first answer"
    bob = client(app, new_key(app, "bob"))
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"loupe": {"conversation": conversation}},
        )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}, 404, "model_not_found"),
        (
            {
                "model": "base",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
                    }
                ],
            },
            400,
            "invalid_image_url",
        ),
        (
            {
                "model": "base",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:text/html;base64,PGgxPg=="}}],
                    }
                ],
            },
            400,
            "invalid_image_url",
        ),
        (
            {
                "model": "base",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}
                        ],
                    }
                ],
            },
            400,
            "invalid_image",
        ),
        (
            {
                "model": "base",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 9}
                ],
            },
            400,
            "invalid_image",
        ),
        ({"model": "base", "messages": [{"role": "user", "content": "x" * 40_000}]}, 400, "message_too_long"),
        ({"model": "base", "messages": [{"role": "user", "content": "Hi"}], "temperature": 9}, 400, "invalid_value"),
        ({"model": "base", "messages": []}, 400, "invalid_request"),
        ({"model": "base"}, 400, "invalid_request"),
    ],
)
def test_bad_calls_get_openai_shaped_errors(app: Server, body: dict, status: int, code: str) -> None:
    key = new_key(app, "ada")
    answer = httpx.post(
        f"{app.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert answer.json()["error"]["message"]


def test_malformed_json_and_missing_or_unknown_keys(app: Server) -> None:
    key = new_key(app, "ada")
    garbled = httpx.post(
        f"{app.url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert garbled.status_code == 400 and garbled.json()["error"]["code"] == "invalid_request"
    for headers in ({}, {"Authorization": "Bearer loupe-forged"}, {"Authorization": key}):
        refused = httpx.get(f"{app.url}/v1/models", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


def test_a_seed_samples_the_same_answer_and_a_stop_sequence_ends_it(app: Server) -> None:
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
    assert rows(app, "SELECT completion FROM generations WHERE completion = ?", cut), "stored as returned"


def test_a_regenerated_answer_and_its_comparison_reach_the_dpo_export(app: Server, tmp_path: Path) -> None:
    ada = client(app, new_key(app, "bob"))
    asked = [{"role": "user", "content": "Which capacitor for a 5 V rail?"}]
    first = ada.chat.completions.create(model="base", messages=asked, max_tokens=8)
    again = ada.chat.completions.create(
        model="base", messages=asked, max_tokens=8, extra_body={"loupe": {"regenerate_of": first.id}}
    )
    prompts = rows(app, "SELECT DISTINCT prompt_id FROM generations WHERE step_id IN (?, ?)", first.id, again.id)
    assert len(prompts) == 1, "both answer the one stored message"
    ada.post("/feedback", body={"id": again.id, "compared_with": first.id, "choice": "b"}, cast_to=httpx.Response)
    pairs = [
        (row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"])
        for row in export_rows(app, tmp_path / "dpo", "trl-dpo")
        if row["prompt"][-1]["content"][-1]["text"] == asked[0]["content"]
    ]
    assert pairs == [(again.choices[0].message.content, first.choices[0].message.content)]


def test_a_stream_the_client_drops_stops_the_answer_and_stores_it_as_stopped(app: Server) -> None:
    key = new_key(app, "ada")
    body = {
        "model": "base",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{app.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as events:
        lines = events.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    for _ in range(100):
        if stored := rows(app, "SELECT ended, completion_tokens FROM generations WHERE step_id = ?", first["id"]):
            break
        time.sleep(0.2)
    assert stored and stored[0][0] == "stopped" and stored[0][1] < 2000
