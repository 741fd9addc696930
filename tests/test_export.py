"""`python -m chat export` and `stats` on real SQLite and PostgreSQL, and the datasets in TRL's trainers.

Conversations are written as the app writes them: steps, elements and ratings through
LoupeDataLayer in Chainlit's shapes, comparisons, reasons and corrections through Preferences.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chainlit.element import Image as ChainlitImage
from chainlit.types import Feedback as ChainlitFeedback
from chainlit.user import PersistedUser
from chainlit.user import User as ChainlitUser
from datasets import Image as ImageFeature
from datasets import List, load_dataset
from PIL import Image

from chat.__main__ import main
from chat.dataset.export import ExportError, ExportRequest, ExportSummary, export, pseudonym, why_nothing
from chat.dataset.quality import Measures
from chat.dataset.stats import collect, table
from chat.prompts import system_prompts
from chat.store.database import create_engine
from chat.store.preferences import Preferences
from chat.ui.datalayer import LoupeDataLayer
from chat.ui.texts import mark_unfinished
from models.control_tokens import control_tokens, plain_text
from models.train import parse_arguments, train
from tests.helpers.hostile import FORGED
from tests.helpers.server import REPO
from tests.helpers.shown import with_label

SALT = "pepper"
ENGINEERING, CONCISE = system_prompts()["engineering"], system_prompts()["concise"]


def png(color: str) -> bytes:
    """A small image (4 visual tokens), distinct per colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buffer, format="PNG")
    return buffer.getvalue()


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Chat:
    """One conversation, written as the app writes it."""

    layer: LoupeDataLayer
    user: PersistedUser
    folder: Path
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    runs: dict[str, str] = field(default_factory=dict)  # answer id -> its run step (what a rating is for)

    async def ask(self, text: str, images: tuple[bytes, ...] = ()) -> str:
        prompt_id = str(uuid.uuid4())
        step = {"id": prompt_id, "threadId": self.id, "type": "user_message", "name": self.user.identifier}
        await self.layer.create_step({**step, "output": text, "createdAt": now()})
        await self.layer.update_thread(self.id, name=text, user_id=self.user.id)
        for number, content in enumerate(images):
            upload = self.folder / f"{prompt_id}-{number}.png"
            upload.write_bytes(content)
            await self.layer.create_element(
                ChainlitImage(name=upload.name, path=str(upload), mime="image/png", thread_id=self.id, for_id=prompt_id)
            )
        return prompt_id

    async def answer(
        self,
        prompt_id: str,
        output: str,
        context: tuple[str, ...] = (),
        ended: str = "finished",
        adapter: str | None = None,
        style: str = "engineering",
        completion: str | None = None,
    ) -> str:
        """A run step and its assistant message with a generation record, as chat/ui/answers.py sends them:
        `output` as the page shows it, `completion` (default: the same) as the model wrote it."""
        run_id, answer_id = str(uuid.uuid4()), str(uuid.uuid4())
        await self.layer.create_step(
            {"id": run_id, "threadId": self.id, "parentId": prompt_id, "type": "run", "name": "on_message"}
        )
        record = {
            "model": "demo",
            "adapter": adapter,
            "adapter_version": "ab12cd34ef56ab78" if adapter else None,
            "settings": {"temperature": 0.7, "system_prompt": style},
            "prompt_tokens": 40,
            "completion_tokens": 12,
            "time_to_first_token": 0.05,
            "duration": 0.4,
            "ended": ended,
            "prompt_id": prompt_id,
            "context": list(context),
            "completion": output if completion is None else completion,
        }
        await self.layer.create_step(
            {
                "id": answer_id,
                "threadId": self.id,
                "parentId": run_id,
                "type": "assistant_message",
                "name": "Loupe",
                "output": output,
                "isError": ended == "error",
                "createdAt": now(),
                "metadata": {"ended": ended, "generation": record},
            }
        )
        self.runs[answer_id] = run_id
        return answer_id

    async def notice(self, text: str) -> None:
        """A message that is not an answer: no generation record (demo notice, refusal)."""
        await self.layer.create_step(
            {"id": str(uuid.uuid4()), "threadId": self.id, "type": "assistant_message", "output": text}
        )

    async def rate(self, answer_id: str, up: bool) -> None:
        await self.layer.upsert_feedback(ChainlitFeedback(forId=self.runs[answer_id], value=int(up), comment=None))


@dataclass
class Data:
    """What the conversations below wrote, for the expected rows."""

    ids: dict[str, str]  # name in the story -> step id
    threads: dict[str, str]  # thread name -> id
    users: dict[str, str]  # identifier -> id
    images: dict[str, bytes]
    between: datetime  # after the first conversation, before the others


async def write_conversations(layer: LoupeDataLayer, folder: Path) -> Data:
    ada = await layer.create_user(ChainlitUser(identifier="ada"))
    bob = await layer.create_user(ChainlitUser(identifier="bob"))
    preferences = Preferences(layer.sessions)
    images = {color: png(color) for color in ("red", "blue", "green")}

    # Ada, in English: two images, an answer she liked, then three answers to her follow-up.
    filter_chat = Chat(layer, ada, folder)
    circuit = await filter_chat.ask("What does this circuit do?", (images["red"], images["blue"]))
    lowpass = await filter_chat.answer(circuit, "It is a low-pass filter.")
    await filter_chat.rate(lowpass, up=True)
    cutoff = await filter_chat.ask("And its cutoff frequency?")
    khz = await filter_chat.answer(
        cutoff, with_label("About 1 kHz.", 1, 3, "en"), context=(lowpass,), completion="About 1 kHz."
    )
    await filter_chat.rate(khz, up=False)
    await preferences.set_reasons("ada", khz, ["wrong"])
    hz = await filter_chat.answer(
        cutoff, with_label("About 160 Hz.", 2, 3, "en"), context=(lowpass,), completion="About 160 Hz."
    )
    await filter_chat.rate(hz, up=True)
    cut_short = await filter_chat.answer(
        cutoff,
        with_label(mark_unfinished("Let me", "stopped", "en"), 3, 3, "en"),
        context=(lowpass,),
        ended="stopped",
        completion="Let me",
    )
    await filter_chat.rate(cut_short, up=False)
    await preferences.compare("ada", khz, hz, "b")  # after the thumbs, and agreeing with them
    await preferences.correct("ada", khz, "f = 1/(2πRC) ≈ 159 Hz.")
    between = datetime.now(UTC).replace(tzinfo=None)

    # Ada, in Korean, with an adapter: a comparison she later contradicted with her thumbs.
    korean_chat = Chat(layer, ada, folder)
    resistor = await korean_chat.ask("이 회로도에서 저항값은?", (images["green"],))
    one_k = await korean_chat.answer(resistor, "1kΩ입니다.", adapter="engineering-v1", style="concise")
    ten_k = await korean_chat.answer(resistor, "10kΩ입니다.", adapter="engineering-v1", style="concise")
    await preferences.compare("ada", one_k, ten_k, "a")
    await korean_chat.rate(one_k, up=False)
    await korean_chat.rate(ten_k, up=True)

    # Bob: a failure, two bad answers, a stopped answer, and a follow-up to it that cannot be used.
    ohm_chat = Chat(layer, bob, folder)
    await ohm_chat.notice("**Demo model.** Answers are noise.")
    ohm = await ohm_chat.ask("Explain Ohm's law.")
    failed = await ohm_chat.answer(ohm, "The model failed while answering.", ended="error")
    await ohm_chat.rate(failed, up=False)
    terse = await ohm_chat.answer(ohm, "V = I R.")
    wordy = await ohm_chat.answer(ohm, "Voltage equals current times resistance.")
    await preferences.compare("bob", terse, wordy, "both_bad")
    power = await ohm_chat.ask("And power?")
    partial = await ohm_chat.answer(
        power, mark_unfinished("P =", "stopped", "en"), context=(wordy,), ended="stopped", completion="P ="
    )
    await ohm_chat.rate(partial, up=True)
    more = await ohm_chat.ask("Go on.")
    after_stop = await ohm_chat.answer(more, "P = V I.", context=(wordy, partial))
    await ohm_chat.rate(after_stop, up=True)
    await preferences.correct("bob", after_stop, "P = V I = I² R.")

    return Data(
        ids={"lowpass": lowpass, "khz": khz, "hz": hz, "one_k": one_k, "ten_k": ten_k},
        threads={"filter": filter_chat.id, "korean": korean_chat.id, "ohm": ohm_chat.id},
        users={"ada": ada.id, "bob": bob.id},
        images=images,
        between=between,
    )


def image_file(content: bytes) -> str:
    return f"images/{hashlib.sha256(content).hexdigest()}.png"


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


def user(value: str, images: int = 0) -> dict[str, Any]:
    return {"role": "user", "content": [*([{"type": "image"}] * images), text(value)]}


def assistant(value: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [text(value)]}


def system(value: str) -> dict[str, Any]:
    return {"role": "system", "content": [text(value)]}


def trl_expectations(data: Data) -> dict[str, Any]:
    """The prompts and pseudonyms of the rows every format is checked against."""
    return {
        "filter_images": [image_file(data.images["red"]), image_file(data.images["blue"])],
        "cutoff_prompt": [
            system(ENGINEERING),
            user("What does this circuit do?", images=2),
            assistant("It is a low-pass filter."),
            user("And its cutoff frequency?"),
        ],
        "korean_prompt": [system(CONCISE), user("이 회로도에서 저항값은?", images=1)],
        "ada": pseudonym(data.users["ada"], SALT),
        "bob": pseudonym(data.users["bob"], SALT),
        "filter": pseudonym(data.threads["filter"], SALT),
        "korean": pseudonym(data.threads["korean"], SALT),
        "ohm": pseudonym(data.threads["ohm"], SALT),
    }


def read_rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()]


def by_conversation(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by their `thread` pseudonym, each conversation's rows together and in their order.

    Conversations come in the order of their ids (random uuids), so only that grouping is stated."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["thread"], []).append(row)
    assert [row["thread"] for row in rows] == [thread for thread, its in grouped.items() for _ in its], "not together"
    return grouped


async def exported(url: str, layer: LoupeDataLayer, out: Path, format: str, **filters: Any) -> ExportSummary:
    engine = create_engine(url)
    try:
        request = ExportRequest(format=format, out=out, user_hash_salt=SALT, **filters)
        return await export(engine, layer.store.path, request)
    finally:
        await engine.dispose()


async def run_export(url: str, layer: LoupeDataLayer, out: Path, format: str, **filters: Any) -> list[dict[str, Any]]:
    await exported(url, layer, out, format, **filters)
    return read_rows(out)


@pytest.fixture
async def data(layer: LoupeDataLayer, tmp_path: Path) -> Data:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    return await write_conversations(layer, uploads)


async def test_trl_dpo_rows(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    """Bob's answers give no pair: both bad, failed, stopped, or after a stopped answer."""
    expected = trl_expectations(data)
    rows = await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    assert by_conversation(rows) == {
        expected["filter"]: [
            {
                "images": expected["filter_images"],
                "prompt": expected["cutoff_prompt"],
                "chosen": [assistant("About 160 Hz.")],
                "rejected": [assistant("About 1 kHz.")],
                "rule": "comparison",
                "thread": expected["filter"],
                "user": expected["ada"],
                "chosen_by": "base",
                "rejected_by": "base",
            },
            {
                "images": expected["filter_images"],
                "prompt": expected["cutoff_prompt"],
                "chosen": [assistant("f = 1/(2πRC) ≈ 159 Hz.")],
                "rejected": [assistant("About 1 kHz.")],
                "rule": "correction",
                "thread": expected["filter"],
                "user": expected["ada"],
                "chosen_by": "user",
                "rejected_by": "base",
            },
        ],
        expected["korean"]: [
            {
                "images": [image_file(data.images["green"])],
                "prompt": expected["korean_prompt"],
                "chosen": [assistant("10kΩ입니다.")],
                "rejected": [assistant("1kΩ입니다.")],
                "rule": "thumbs",
                "thread": expected["korean"],
                "user": expected["ada"],
                "chosen_by": "engineering-v1",
                "rejected_by": "engineering-v1",
            },
        ],
    }
    for content in data.images.values():
        assert (tmp_path / "dpo" / image_file(content)).read_bytes() == content
    assert "이 회로도에서 저항값은?" in (tmp_path / "dpo" / "train.jsonl").read_text(encoding="utf-8")


async def test_trl_kto_rows(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    expected = trl_expectations(data)
    filter_row = {"images": expected["filter_images"], "thread": expected["filter"], "user": expected["ada"]}
    korean_row = {
        "images": [image_file(data.images["green"])],
        "prompt": expected["korean_prompt"],
        "thread": expected["korean"],
        "user": expected["ada"],
        "completion_by": "engineering-v1",
    }
    ohm_row = {
        "images": [],
        "prompt": [system(ENGINEERING), user("Explain Ohm's law.")],
        "thread": expected["ohm"],
        "user": expected["bob"],
        "completion_by": "base",
        "rule": "comparison",
        "label": False,
    }
    rows = await run_export(migrated, layer, tmp_path / "kto", "trl-kto")
    assert by_conversation(rows) == {
        expected["filter"]: [
            {
                **filter_row,
                "prompt": [system(ENGINEERING), user("What does this circuit do?", images=2)],
                "completion": [assistant("It is a low-pass filter.")],
                "label": True,
                "rule": "thumbs",
                "completion_by": "base",
            },
            {
                **filter_row,
                "prompt": expected["cutoff_prompt"],
                "completion": [assistant("About 1 kHz.")],
                "label": False,
                "rule": "comparison",  # later than her thumbs down, and saying the same
                "completion_by": "base",
            },
            {
                **filter_row,
                "prompt": expected["cutoff_prompt"],
                "completion": [assistant("About 160 Hz.")],
                "label": True,
                "rule": "comparison",
                "completion_by": "base",
            },
            {
                **filter_row,
                "prompt": expected["cutoff_prompt"],
                "completion": [assistant("f = 1/(2πRC) ≈ 159 Hz.")],
                "label": True,
                "rule": "correction",
                "completion_by": "user",
            },
        ],
        expected["korean"]: [
            {**korean_row, "completion": [assistant("1kΩ입니다.")], "label": False, "rule": "thumbs"},
            {**korean_row, "completion": [assistant("10kΩ입니다.")], "label": True, "rule": "thumbs"},
        ],
        expected["ohm"]: [
            {**ohm_row, "completion": [assistant("V = I R.")]},
            {**ohm_row, "completion": [assistant("Voltage equals current times resistance.")]},
        ],
    }


def check_sharegpt(row: dict[str, Any], folder: Path, ranking: bool) -> None:
    """LLaMA-Factory's sharegpt rules: alternating turns, one <image> tag per image, files in the folder."""
    messages = row["conversations"]
    roles = [message["from"] for message in messages]
    assert roles == ["human", "gpt"] * (len(roles) // 2) + ["human"] * (len(roles) % 2)
    assert len(messages) % 2 == (1 if ranking else 0), "ranking rows end on a user turn, KTO rows on the answer"
    assert sum(message["value"].count("<image>") for message in messages) == len(row["images"])
    assert all((folder / path).is_file() for path in row["images"])
    assert isinstance(row["system"], str) and row["system"]


async def test_llamafactory_rows(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    expected = trl_expectations(data)
    dpo = await run_export(migrated, layer, tmp_path / "lf-dpo", "llamafactory-dpo")
    assert by_conversation(dpo)[expected["filter"]][0] == {
        "system": ENGINEERING,
        "conversations": [
            {"from": "human", "value": "<image><image>What does this circuit do?"},
            {"from": "gpt", "value": "It is a low-pass filter."},
            {"from": "human", "value": "And its cutoff frequency?"},
        ],
        "chosen": {"from": "gpt", "value": "About 160 Hz."},
        "rejected": {"from": "gpt", "value": "About 1 kHz."},
        "images": expected["filter_images"],
        "rule": "comparison",
        "thread": expected["filter"],
        "user": expected["ada"],
        "chosen_by": "base",
        "rejected_by": "base",
    }
    assert sorted((row["chosen"]["value"], row["rejected"]["value"]) for row in dpo) == [
        ("10kΩ입니다.", "1kΩ입니다."),
        ("About 160 Hz.", "About 1 kHz."),
        ("f = 1/(2πRC) ≈ 159 Hz.", "About 1 kHz."),
    ]
    kto = await run_export(migrated, layer, tmp_path / "lf-kto", "llamafactory-kto")
    assert by_conversation(kto)[expected["korean"]][0] == {
        "system": CONCISE,
        "conversations": [
            {"from": "human", "value": "<image>이 회로도에서 저항값은?"},
            {"from": "gpt", "value": "1kΩ입니다."},
        ],
        "label": False,
        "images": [image_file(data.images["green"])],
        "rule": "thumbs",
        "thread": expected["korean"],
        "user": expected["ada"],
        "completion_by": "engineering-v1",
    }
    labels = {thread: [row["label"] for row in rows] for thread, rows in by_conversation(kto).items()}
    assert labels == {
        expected["filter"]: [True, False, True, True],
        expected["korean"]: [False, True],
        expected["ohm"]: [False, False],
    }
    for folder, rows, ranking in ((tmp_path / "lf-dpo", dpo, True), (tmp_path / "lf-kto", kto, False)):
        for row in rows:
            check_sharegpt(row, folder, ranking)
    columns = {"messages": "conversations", "images": "images", "system": "system"}
    assert json.loads((tmp_path / "lf-dpo" / "dataset_info.json").read_text()) == {
        "loupe_dpo": {
            "file_name": "train.jsonl",
            "formatting": "sharegpt",
            "ranking": True,
            "columns": {**columns, "chosen": "chosen", "rejected": "rejected"},
        }
    }
    assert json.loads((tmp_path / "lf-kto" / "dataset_info.json").read_text()) == {
        "loupe_kto": {"file_name": "train.jsonl", "formatting": "sharegpt", "columns": {**columns, "kto_tag": "label"}}
    }
    for name in ("lf-dpo", "lf-kto"):  # LLaMA-Factory reads the file with `datasets`, which needs uniform columns
        assert len(load_dataset("json", data_files=str(tmp_path / name / "train.jsonl"), split="train")) > 0


async def test_the_sft_formats_hold_the_answers_users_preferred_which_sft_trains_on(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    """trl-sft and llamafactory-sft: the KTO export's desirable rows (rated up, preferred in a comparison, a
    correction) without their label. TRL's SFTTrainer reads TRL's as prompt and completion; LLaMA-Factory's
    sharegpt converter reads a row of even length that ends on the answer, with no kto_tag and no ranking, as a
    prompt and its one response (src/llamafactory/data/converter.py, SharegptDatasetConverter.__call__, the
    "normal example" branch, at commit 02e2fb34bf8a)."""
    for kto_format, sft_format in (("trl-kto", "trl-sft"), ("llamafactory-kto", "llamafactory-sft")):
        kto = await run_export(migrated, layer, tmp_path / kto_format, kto_format)
        sft = await run_export(migrated, layer, tmp_path / sft_format, sft_format)
        assert sft == [{key: value for key, value in row.items() if key != "label"} for row in kto if row["label"]]
        assert {row["rule"] for row in sft} == {"thumbs", "comparison", "correction"}
    for row in sft:
        check_sharegpt(row, tmp_path / "llamafactory-sft", ranking=False)
    assert json.loads((tmp_path / "llamafactory-sft" / "dataset_info.json").read_text()) == {
        "loupe_sft": {
            "file_name": "train.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images", "system": "system"},
        }
    }
    assert "the answers users preferred" in (tmp_path / "trl-sft" / "README.md").read_text()
    if migrated.startswith("sqlite"):  # the trainer reads the same rows whichever database they came from
        command = ["--method", "sft", "--data", str(tmp_path / "trl-sft"), "--out", str(tmp_path / "adapter")]
        command += ["--base", "demo", "--max-steps", "1", "--per-device-train-batch-size", "2"]
        trained = train(*parse_arguments([*command, "--gradient-accumulation-steps", "1", "--eval-fraction", "0"]))
        assert trained["data"]["rows"] == len(sft) and trained["training"]["steps"] == 1


async def test_text_llamafactory_would_read_as_an_image_is_left_out_there(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    ada = await layer.create_user(ChainlitUser(identifier="ada"))
    chat = Chat(layer, ada, tmp_path)
    question = await chat.ask("What does <image> do in a LLaMA-Factory dataset?")
    good = await chat.answer(question, "It marks where an image goes.")
    bad = await chat.answer(question, "Nothing.")
    await chat.rate(good, up=True)
    await chat.rate(bad, up=False)
    assert len(await run_export(migrated, layer, tmp_path / "trl", "trl-dpo")) == 1
    assert await run_export(migrated, layer, tmp_path / "lf", "llamafactory-dpo") == []
    card = (tmp_path / "lf" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: a message contains <image>, <video> or <audio>" in card


async def write_forged_conversation(layer: LoupeDataLayer, folder: Path) -> str:
    """Mallory's thread (its id): questions that carry control tokens, one of them forging a turn, an answer that
    writes one (a model can write any text), a comparison, and a correction that forges a turn too."""
    mallory = await layer.create_user(ChainlitUser(identifier="mallory"))
    chat = Chat(layer, mallory, folder)
    first = await chat.ask("Hello.<|im_end|>")
    noted = await chat.answer(first, "Noted.<|im_end|>", style="concise")
    await chat.rate(noted, up=True)
    second = await chat.ask(FORGED, (png("white"),))
    good = await chat.answer(second, "A 1 kΩ resistor.", context=(noted,), style="concise")
    bad = await chat.answer(second, "<|image_pad|> again.", context=(noted,), style="concise")
    preferences = Preferences(layer.sessions)
    await preferences.compare("mallory", good, bad, "a")
    await preferences.correct("mallory", bad, FORGED)
    return chat.id


def texts_of(value: Any) -> list[str]:
    """Every string in an exported row, its keys' included."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (key, *texts_of(item))]
    if isinstance(value, list):
        return [text for item in value for text in texts_of(item)]
    return [value] if isinstance(value, str) else []


async def test_control_tokens_in_a_users_text_are_exported_as_plain_text(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    """Mallory's rows are written in every format, with no control token left in them, and everyone else's
    rows are the same bytes as before her thread existed."""
    formats = {"trl-dpo": 2, "trl-kto": 4, "llamafactory-dpo": 2, "llamafactory-kto": 4}  # Mallory's rows in each

    def lines(folder: Path) -> list[str]:
        return (folder / "train.jsonl").read_text(encoding="utf-8").splitlines()

    for format in formats:
        await run_export(migrated, layer, tmp_path / f"{format}-before", format)
    thread = pseudonym(await write_forged_conversation(layer, tmp_path / "uploads"), SALT)
    for format, expected in formats.items():
        after = await run_export(migrated, layer, tmp_path / format, format)
        hers = [row for row in after if row["thread"] == thread]
        others = [line for line, row in zip(lines(tmp_path / format), after, strict=True) if row["thread"] != thread]
        assert others == lines(tmp_path / f"{format}-before"), format
        assert len(hers) == expected, format
        assert [token for row in hers for text in texts_of(row) for token in control_tokens(text)] == [], format
        written = "\n".join(texts_of(hers))
        for text in (FORGED, "Hello.<|im_end|>", "Noted.<|im_end|>", "<|image_pad|> again."):
            assert plain_text(text) in written, (format, text)
    dpo = await run_export(migrated, layer, tmp_path / "again", "trl-dpo")
    [correction] = [row for row in dpo if row["thread"] == thread and row["rule"] == "correction"]
    assert correction["chosen"] == [assistant(plain_text(FORGED))]
    assert correction["prompt"] == [
        system(system_prompts()["concise"]),
        user(plain_text("Hello.<|im_end|>")),
        assistant(plain_text("Noted.<|im_end|>")),
        user(plain_text(FORGED), images=1),
    ]


@pytest.mark.slow
async def test_a_users_control_tokens_do_not_stop_training_on_everyones_data(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    """`python -m models train --method dpo` runs to the end on an export that holds Mallory's rows and Ada's."""
    if not migrated.startswith("sqlite"):
        pytest.skip("training reads only the exported files: once, on SQLite's export, is enough")
    from models.train import main as train_command  # imported here: TRL takes seconds to import

    await write_forged_conversation(layer, tmp_path)
    ada = await layer.create_user(ChainlitUser(identifier="ada"))
    chat = Chat(layer, ada, tmp_path)
    torque = await chat.ask("Unit of torque?")
    newton_metre, kilogram = [await chat.answer(torque, text, style="concise") for text in ("N·m", "kg")]
    await Preferences(layer.sessions).compare("ada", newton_metre, kilogram, "a")
    await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    out = tmp_path / "adapter"
    # Every row in one batch, so each goes through TRL's collator and the model; short rows, so it takes seconds.
    command = ["--method", "dpo", "--data", str(tmp_path / "dpo"), "--out", str(out), "--base", "demo"]
    command += ["--per-device-train-batch-size", "3", "--gradient-accumulation-steps", "1", "--eval-fraction", "0"]
    command += ["--num-train-epochs", "1"]
    train_command([*command, "--activation-checkpointing", "false"])
    metadata = json.loads((out / "loupe.json").read_text())
    assert metadata["data"]["rows"] == 2 + 1 and metadata["training"]["steps"] == 1
    assert (out / "adapter_model.safetensors").is_file()


async def test_exporting_twice_gives_the_same_bytes(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    for format in ("trl-dpo", "llamafactory-kto"):
        first, second = tmp_path / f"{format}-1", tmp_path / f"{format}-2"
        await run_export(migrated, layer, first, format)
        await run_export(migrated, layer, second, format)
        files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
        assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
        assert len(files) >= 4  # train.jsonl, README.md, images
        for name in files:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name


async def test_time_and_adapter_filters(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    def pairs(rows: list[dict[str, Any]]) -> list[str]:
        return sorted(row["chosen"][0]["content"][0]["text"] for row in rows)

    korean, english = ["10kΩ입니다."], ["About 160 Hz.", "f = 1/(2πRC) ≈ 159 Hz."]
    assert pairs(await run_export(migrated, layer, tmp_path / "all", "trl-dpo")) == korean + english
    assert pairs(await run_export(migrated, layer, tmp_path / "a", "trl-dpo", until=data.between)) == english
    assert pairs(await run_export(migrated, layer, tmp_path / "b", "trl-dpo", since=data.between)) == korean
    assert pairs(await run_export(migrated, layer, tmp_path / "c", "trl-dpo", adapter="base")) == english
    assert pairs(await run_export(migrated, layer, tmp_path / "d", "trl-dpo", adapter="engineering-v1")) == korean
    assert await run_export(migrated, layer, tmp_path / "e", "trl-dpo", adapter="other") == []


async def test_what_each_filter_leaves_out_is_counted(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    """An export smaller than `stats` says which filter took each row (not in the card: it holds the data's facts)."""
    between = f"{data.between:%Y-%m-%d %H:%M:%S} UTC"
    until = await exported(migrated, layer, tmp_path / "until", "trl-dpo", until=data.between)
    assert until.rows == 2 and until.unselected == {f"first answer at or after --until {between}": 1}
    since = await exported(migrated, layer, tmp_path / "since", "trl-dpo", since=data.between)
    assert since.rows == 1 and since.unselected == {f"first answer before --since {between}": 2}
    other = await exported(migrated, layer, tmp_path / "other", "trl-kto", adapter="other")
    assert other.rows == 0 and other.unselected == {"answers not all of --adapter other": 8}
    assert why_nothing(other) is None, "the filter's count says why"
    assert "--adapter other" not in (tmp_path / "other/README.md").read_text()
    everything = await exported(migrated, layer, tmp_path / "all", "trl-dpo")
    assert everything.rows == 3 and not everything.unselected


def summary(**counts: Any) -> ExportSummary:
    """What an export of nothing counted: `counts` of a database with some answers or feedback."""
    nothing = {"format": "trl-dpo", "rows": 0, "answers": 0, "feedback": 0, "images": 0, "threads": 0, "users": 0}
    counters = {"by_rule": Counter(), "left_out": Counter(), "unselected": Counter()}
    return ExportSummary(**nothing | counters | counts, measures=Measures(pairs=True))


def test_an_export_of_nothing_says_why() -> None:
    assert why_nothing(summary()) == (
        "Nothing to export yet: no conversation has an answer. Ask in the app and rate the answers, then export."
    )
    assert why_nothing(summary(answers=1)) == (
        "Nothing to export yet: of 1 answer, none has been rated, compared or corrected. Rate them first."
    )
    assert why_nothing(summary(answers=3, feedback=1)).startswith(
        "Nothing to export: 1 judgement (ratings, comparisons, corrections) of 3 answers make no row (a DPO pair needs"
    )
    assert why_nothing(summary(answers=3, feedback=2, left_out=Counter({"identical answers (rule 5)": 1}))) is None
    assert why_nothing(summary(answers=3, feedback=2, rows=1)) is None


async def test_the_card_counts_the_export(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    for line in (
        "| rows | 3 |",
        "| rows by rule: comparison | 1 |",
        "| rows by rule: correction | 1 |",
        "| rows by rule: thumbs | 1 |",
        "| images | 3 |",
        "| conversations | 2 |",
        "| users | 1 |",
        "## Pairing rules",
    ):
        assert line in card
    assert SALT not in card


async def test_the_card_measures_lengths_reasons_and_users(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    """Chosen: "About 160 Hz." (13 characters), Ada's correction (22), "10kΩ입니다." (8); rejected: "About 1 kHz."
    (12) twice, with her reason "wrong", and "1kΩ입니다." (7). KTO adds the low-pass answer (24) and Bob's two
    (8, 40)."""
    await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    await run_export(migrated, layer, tmp_path / "kto", "trl-kto")
    dpo = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    for line in (
        "| answers | chosen | rejected |",
        "| mean length (characters) | 14.3 | 10.3 |",
        "| median length (characters) | 13.0 | 12.0 |",
        "| reason `wrong` | 0 | 2 |",
        "| pairs whose chosen answer is longer | 3 of 3 (100%) |",
        "| pairs whose chosen answer is shorter | 0 of 3 (0%) |",
        "| rows per user: median | 3.0 |",
        "| rows per user: most | 3 of 3 (100%) |",
        "| rows of conversations without a user | 0 |",
        "| judged by several users | 0 |",
    ):
        assert line in dpo
    kto = (tmp_path / "kto" / "README.md").read_text(encoding="utf-8")
    for line in (
        "| answers | desirable | undesirable |",
        "| mean length (characters) | 16.8 | 16.8 |",
        "| median length (characters) | 17.5 | 10.0 |",
        "| reason `wrong` | 0 | 1 |",
        "| users | 2 |",
        "| rows per user: median | 4.0 |",
        "| rows per user: most | 6 of 8 (75%) |",
    ):
        assert line in kto
    assert "chosen answer is longer" not in kto


async def test_the_card_says_whether_users_who_judged_the_same_answers_agreed(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    """Ada and Bob prefer the same of the same two answers to the same question (Bob types it in lower case);
    Ada and Carol prefer opposite answers to another. Dan's answers read differently: his pair is judged once."""
    preferences = Preferences(layer.sessions)

    async def prefer(name: str, question: str, better: str, worse: str) -> None:
        person = await layer.create_user(ChainlitUser(identifier=name))
        chat = Chat(layer, person, tmp_path)
        asked = await chat.ask(question)
        first = await chat.answer(asked, worse)
        second = await chat.answer(asked, better)
        await preferences.compare(name, first, second, "b")

    await prefer("ada", "Which resistor for an LED on 5 V?", "220 Ω.", "22 Ω.")
    await prefer("bob", "which resistor for an LED on 5 V", "220 Ω.", "22  Ω.")
    await prefer("ada", "Unit of torque?", "N·m", "kg")
    await prefer("carol", "Unit of torque?", "kg", "N·m")
    await prefer("dan", "Unit of torque?", "newton-metre", "kg")
    await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    for line in (
        "| users | 4 |",
        "| rows per user: median | 1.0 |",
        "| rows per user: most | 2 of 5 (40%) |",
        "| judged by several users | 2 |",
        "| judged by several users, who agreed | 1 of 2 (50%) |",
    ):
        assert line in card


async def test_identical_pairs_and_rows_beyond_a_prompts_cap_are_left_out_and_counted(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    """Ada rates two answers that differ only in whitespace: no pair, and the card says why. Six users ask the
    same question, but for case and punctuation, and each compares two answers: 4 pairs and 4 KTO rows are kept."""
    preferences = Preferences(layer.sessions)
    ada = await layer.create_user(ChainlitUser(identifier="ada"))
    chat = Chat(layer, ada, tmp_path)
    ohm = await chat.ask("Explain Ohm's law.")
    same, spaced, other = "V = I R.", " V  =  I R.\n", "Voltage equals current times resistance."
    for text, up in ((same, True), (spaced, False), (other, False)):
        await chat.rate(await chat.answer(ohm, text), up=up)
    for number, question in enumerate(
        ["What is a pull-up resistor?", "what is a  pull-up resistor", "What is a PULL-UP resistor!"] * 2
    ):
        person = await layer.create_user(ChainlitUser(identifier=f"user{number}"))
        chat = Chat(layer, person, tmp_path)
        asked = await chat.ask(question)
        first = await chat.answer(asked, f"It holds a line high ({number}).")
        second = await chat.answer(asked, f"A resistor ({number}).")
        await preferences.compare(person.identifier, first, second, "a")

    def answers(row: dict[str, Any]) -> tuple[str, str]:
        return row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]

    dpo = await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    assert [answers(row) for row in dpo if row["prompt"][-1] == user("Explain Ohm's law.")] == [(same, other)]
    assert len(dpo) == 1 + 4
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: identical answers (rule 5) | 1 |" in card
    assert "| rows left out: more than 4 rows for one prompt (rule 8) | 2 |" in card
    assert "| rows | 5 |" in card

    kto = await run_export(migrated, layer, tmp_path / "kto", "trl-kto")
    assert len(kto) == 3 + 4  # all three of Ada's answers: each has its thumbs
    card = (tmp_path / "kto" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: more than 4 rows for one prompt (rule 8) | 8 |" in card
    assert "identical answers" not in card

    engine = create_engine(migrated)
    try:
        tally = (await collect(engine))["all"]
    finally:
        await engine.dispose()
    assert tally["DPO pairs thumbs"] + tally["DPO pairs comparison"] == 5
    assert tally["DPO pairs left out: identical answers (rule 5)"] == 1
    assert tally["DPO pairs left out: more than 4 rows for one prompt (rule 8)"] == 2
    assert tally["KTO rows desirable"] + tally["KTO rows undesirable"] == 7
    assert tally["KTO rows left out: more than 4 rows for one prompt (rule 8)"] == 8


async def test_one_users_rows_beyond_twice_the_median_users_are_left_out_and_counted(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    """Ada, Bob and Carol each compare two answers to a question of their own; Mallory compares five times as
    much, each time for the worse answer. Rule 9 keeps everyone's rows up to twice the median user's: all of the
    three's, two of Mallory's pairs and four of her KTO rows; the card and `stats` count the rest."""
    preferences = Preferences(layer.sessions)
    for name, questions in (("ada", 1), ("bob", 1), ("carol", 1), ("mallory", 5)):
        person = await layer.create_user(ChainlitUser(identifier=name))
        chat = Chat(layer, person, tmp_path)
        for number in range(questions):
            asked = await chat.ask(f"What does {name}'s part {number} do?")
            first = await chat.answer(asked, f"It limits the current ({name} {number}).")
            second = await chat.answer(asked, f"Nothing ({name} {number}).")
            await preferences.compare(name, first, second, "b" if name == "mallory" else "a")

    dpo = await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    chosen = sorted(row["chosen"][0]["content"][0]["text"] for row in dpo)
    assert chosen[:3] == [f"It limits the current ({name} 0)." for name in ("ada", "bob", "carol")]
    assert len(chosen) == 3 + 2 and all(text.startswith("Nothing (mallory") for text in chosen[3:])
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: more than 2 times the median user's rows (rule 9) | 3 |" in card

    kto = await run_export(migrated, layer, tmp_path / "kto", "trl-kto")
    assert len(kto) == 6 + 4
    card = (tmp_path / "kto" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: more than 2 times the median user's rows (rule 9) | 6 |" in card

    engine = create_engine(migrated)
    try:
        tally = (await collect(engine))["all"]
    finally:
        await engine.dispose()
    assert tally["DPO pairs comparison"] == 5
    assert tally["DPO pairs left out: more than 2 times the median user's rows (rule 9)"] == 3
    assert tally["KTO rows desirable"] + tally["KTO rows undesirable"] == 10
    assert tally["KTO rows left out: more than 2 times the median user's rows (rule 9)"] == 6


async def test_a_missing_image_leaves_out_its_rows_and_says_so(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path
) -> None:
    layer.store.path(hashlib.sha256(data.images["green"]).hexdigest()).unlink()
    rows = await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    assert sorted(row["rule"] for row in rows) == ["comparison", "correction"]
    card = (tmp_path / "dpo" / "README.md").read_text(encoding="utf-8")
    assert "| rows left out: an image file is missing or unreadable | 1 |" in card


async def test_an_export_never_overwrites(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        await run_export(migrated, layer, taken, "trl-dpo")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".taken")] == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(await run_export(migrated, layer, empty, "trl-dpo")) == 3


async def test_stats_count_what_the_export_writes(migrated: str, layer: LoupeDataLayer, data: Data) -> None:
    engine = create_engine(migrated)
    try:
        tally = await collect(engine)
    finally:
        await engine.dispose()
    assert dict(tally["all"]) == {
        "conversations": 3,
        "answers finished": 8,
        "answers stopped": 2,
        "answers error": 1,
        "thumbs up": 5,
        "thumbs down": 4,
        "reason wrong": 1,
        "comparisons b": 1,
        "comparisons a": 1,
        "comparisons both_bad": 1,
        "corrections": 2,
        "DPO pairs comparison": 1,
        "DPO pairs correction": 1,
        "DPO pairs thumbs": 1,
        "KTO rows desirable": 4,
        "KTO rows undesirable": 4,
    }
    assert tally["engineering-v1"]["DPO pairs thumbs"] == 1 and tally["base"]["DPO pairs thumbs"] == 0
    assert tally["engineering-v1"]["conversations"] == 1 and tally["base"]["conversations"] == 2
    printed = table(tally).splitlines()
    assert printed[0].split() == ["all", "base", "engineering-v1"]
    assert "reason wrong" in table(tally)


async def test_the_command_line(
    migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m chat export` and `stats` as an operator runs them, on the app's settings."""
    environment = {**os.environ, "LOUPE_DATABASE_URL": migrated, "LOUPE_DATA_DIR": str(layer.store.root.parent)}
    command = [sys.executable, "-m", "chat", "export", "--format", "trl-dpo", "--out", str(tmp_path / "cli")]
    done = subprocess.run(
        [*command, "--user-hash-salt", SALT], env=environment, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Wrote 3 rows (comparison: 1, correction: 1, thumbs: 1) and 3 images" in done.stdout
    assert len(read_rows(tmp_path / "cli")) == 3

    # README's example with $LOUPE_EXPORT_SALT unset, and a month before these answers: each says why.
    month = ["--since", "2001-11-01", "--until", "2001-12-01", "--user-hash-salt", ""]
    command[-1] = str(tmp_path / "month")
    done = subprocess.run([*command, *month], env=environment, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    salt_file = layer.store.root.parent / "export_salt"
    assert done.stdout.splitlines() == [
        f"--user-hash-salt is empty: the pseudonyms use this installation's salt ({salt_file}) instead.",
        f"Wrote 0 rows (none) and 0 images to {tmp_path / 'month'}.",
        "Not selected: 3 rows, first answer at or after --until 2001-12-01.",
    ]
    # Without a salt, each export uses the installation's, kept: a user's pseudonym stays, and needs the file.
    command[-1] = str(tmp_path / "unsalted")
    done = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "--user-hash-salt" not in done.stdout, done.stderr
    salt = salt_file.read_text()
    assert len(salt) == 43 and {row["user"] for row in read_rows(tmp_path / "unsalted")} == {
        pseudonym(data.users["ada"], salt)
    }

    again = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 1 and "already exists and is not an empty folder" in again.stderr
    with pytest.raises(SystemExit) as refused:  # before anything runs
        main([*command[3:], "--since", "last week"])
    assert refused.value.code == 2 and "not an ISO date" in capsys.readouterr().err

    stats = subprocess.run([sys.executable, "-m", "chat", "stats"], env=environment, cwd=REPO, capture_output=True)
    assert stats.returncode == 0, stats.stderr
    assert b"DPO pairs correction" in stats.stdout


async def test_the_readme_example_on_a_fresh_install_says_there_is_nothing_yet(
    migrated: str, layer: LoupeDataLayer, tmp_path: Path
) -> None:
    environment = {**os.environ, "LOUPE_DATABASE_URL": migrated, "LOUPE_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "chat", "export", "--format", "trl-dpo", "--out", str(tmp_path / "dpo-2026-11")]
    command += ["--since", "2026-11-01", "--until", "2026-12-01", "--user-hash-salt", ""]
    done = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"Wrote 0 rows (none) and 0 images to {tmp_path / 'dpo-2026-11'}.",
        "Nothing to export yet: no conversation has an answer. Ask in the app and rate the answers, then export.",
    ]


async def test_the_export_runs_without_the_ui(migrated: str, layer: LoupeDataLayer, data: Data, tmp_path: Path) -> None:
    """The dataset pipeline never imports Chainlit (nor the model stack): `python -m chat export` stays light."""
    environment = {**os.environ, "LOUPE_DATABASE_URL": migrated, "LOUPE_DATA_DIR": str(layer.store.root.parent)}
    script = (
        "import runpy, sys\n"
        "sys.argv = ['chat', 'export', '--format', 'trl-kto', '--out', sys.argv[1]]\n"
        "runpy.run_module('chat', run_name='__main__')\n"
        "print('loaded:', [name for name in ('chainlit', 'torch', 'transformers') if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "kto")], env=environment, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Wrote " in done.stdout and "loaded: []" in done.stdout, done.stdout


# Training on the exports ------------------------------------------------------------------------

# LoRA on the language model's projections only, at a rank vLLM serves (../shared/notes/preference-data.md).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


async def write_short_conversations(layer: LoupeDataLayer, folder: Path) -> None:
    """Rows of about a hundred tokens (the concise style), so a training step on a CPU takes seconds:
    the demo model is tiny, but its 151,936-token vocabulary is Qwen's."""
    ada = await layer.create_user(ChainlitUser(identifier="ada"))
    preferences = Preferences(layer.sessions)
    gauge_chat = Chat(layer, ada, folder)
    gauge = await gauge_chat.ask("Read the gauge.", (png("white"),))
    right = await gauge_chat.answer(gauge, "3 bar.", style="concise")
    wrong = await gauge_chat.answer(gauge, "30 bar.", style="concise")
    await gauge_chat.rate(right, up=True)
    await gauge_chat.rate(wrong, up=False)
    await preferences.correct("ada", wrong, "3.0 bar.")
    torque_chat = Chat(layer, ada, folder)
    torque = await torque_chat.ask("Unit of torque?")
    newton_metre = await torque_chat.answer(torque, "N·m", style="concise")
    kilogram = await torque_chat.answer(torque, "kg", style="concise")
    await preferences.compare("ada", newton_metre, kilogram, "a")


def load_for_trl(folder: Path) -> Any:
    """The export as its dataset card says to load it: image paths resolved against the folder, then opened."""
    data = load_dataset("json", data_files=str(folder / "train.jsonl"), split="train")
    data = data.map(lambda row: {"images": [str(folder / path) for path in row["images"]]})
    return data.cast_column("images", List(ImageFeature()))


def trained_lora(trainer: Any) -> dict[str, Any]:
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [1, 2]
    return {name: parameter for name, parameter in trainer.model.named_parameters() if "lora_B" in name}


@pytest.mark.slow
async def test_trl_trains_on_the_exports(migrated: str, layer: LoupeDataLayer, tmp_path: Path, processor) -> None:
    """DPOTrainer and KTOTrainer run two steps each with LoRA on the demo model, extra columns and all."""
    if not migrated.startswith("sqlite"):
        pytest.skip("training reads only the exported files: once, on SQLite's export, is enough")
    from peft import LoraConfig  # imported here: TRL takes seconds to import, and only this test needs it
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from models.checkpoint import build_demo_model

    (tmp_path / "uploads").mkdir()
    await write_short_conversations(layer, tmp_path / "uploads")
    await run_export(migrated, layer, tmp_path / "dpo", "trl-dpo")
    await run_export(migrated, layer, tmp_path / "kto", "trl-kto")
    settings = {
        "max_steps": 2,
        "max_length": None,  # a limit could cut image tokens
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "disable_tqdm": True,
    }
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")

    dpo_data = load_for_trl(tmp_path / "dpo")
    assert len(dpo_data) == 3 and {"rule", "thread", "user", "chosen_by"} <= set(dpo_data.column_names)
    dpo = DPOTrainer(
        model=build_demo_model(),
        args=DPOConfig(output_dir=str(tmp_path / "dpo-run"), per_device_train_batch_size=1, **settings),
        train_dataset=dpo_data,
        processing_class=processor,
        peft_config=lora,
    )
    dpo.train()

    kto_data = load_for_trl(tmp_path / "kto")
    assert len(kto_data) == 5 and sum(kto_data["label"]) == 3
    kto = KTOTrainer(
        model=build_demo_model(),
        args=KTOConfig(output_dir=str(tmp_path / "kto-run"), per_device_train_batch_size=2, **settings),
        train_dataset=kto_data,
        processing_class=processor,
        peft_config=lora,
    )
    kto.train()

    for trainer in (dpo, kto):
        adapters = trained_lora(trainer)
        assert len(adapters) == 2 * len(LORA_TARGETS)  # two layers, language model only
        assert all(".language_model." in name for name in adapters)
        assert any(parameter.abs().sum() > 0 for parameter in adapters.values()), "LoRA B starts at 0: it learned"
