"""The Qwen-VL family beyond the demo model's Qwen2-VL: tiny random Qwen2.5-VL and Qwen3-VL checkpoints, built
from their real configs and processor files, each answer an image question in the app, with its own image
geometry; the answer's rating is exported and trains an adapter, which the app then serves on that checkpoint."""

from __future__ import annotations

import base64
import io
import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from langchain_core.messages import SystemMessage
from PIL import Image

from chat.conversation import PromptBuilder, user_turn
from chat.prompts import DEFAULT_PROMPT, system_prompt
from chat.store.generations import BASE
from models.arguments import EvaluateArguments
from models.backend import ChatTemplateTokens
from models.checkpoint import FAMILY_FILES, build_tiny_model, load_model, vendored_processor, write_checkpoint
from models.evaluate import evaluate
from models.generation import Generator
from models.images import ImageBudget, fit_to_budget
from models.merge import MergeSettings, merge
from tests.helpers.datasets import write_export
from tests.helpers.server import REPO, Server, add_account, chat, start_server, stop_server

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]  # Qwen2-VL is the demo model, which every other test runs on
PHOTO = (640, 480)  # over the CPU budget (256 tokens) of either geometry: fitted down
PASSWORD = "family-test-password"
QUESTION = "What does this figure show?"
ARCHITECTURES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoint(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint of the family: a folder such as the hub gives, weights and processor files."""
    return write_checkpoint(build_tiny_model(FAMILY_FILES[family]), tmp_path_factory.mktemp(family))


@pytest.fixture(scope="module")
def budget(family: str) -> ImageBudget:
    """The app's image budget for the family on a CPU."""
    return ImageBudget.of(vendored_processor(FAMILY_FILES[family]), "cpu")


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize(size).save(out, "PNG")
    return out.getvalue()


def test_the_prompt_is_counted_as_the_model_reads_it(checkpoint: Path, budget: ImageBudget) -> None:
    """The app's token count of a prompt with an image is exactly the length of what the model is given."""
    generator = Generator(load_model(str(checkpoint), device="cpu"))
    builder = PromptBuilder(generator, ImageBudget.of(generator.processor, "cpu"))
    image = fit_to_budget(Image.open(io.BytesIO(png(PHOTO))), budget)
    turns = [SystemMessage("You are Loupe."), user_turn(QUESTION, [image])]
    inputs = generator.prepare_inputs(builder.build(turns[0].content, turns[1:], budget=4096))
    assert sum(map(builder.count_tokens, turns)) + builder.generation_prompt_tokens == inputs["input_ids"].shape[1]
    visual = int((inputs["input_ids"] == generator.loaded.model.config.image_token_id).sum())
    assert visual == budget.tokens(*PHOTO) == (image.width // budget.token_side) * (image.height // budget.token_side)


def test_models_evaluate_scores_pairs_on_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    """`python -m models evaluate` loads the family's checkpoint and gives each held-out pair, with its image, a
    margin."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=5, image_size=PHOTO)
    result = evaluate(EvaluateArguments(data=data, base=str(checkpoint), eval_fraction=0.5, device="cpu"))
    scores = result["scores"][BASE]
    assert result["base"] == str(checkpoint) and scores["pairs"] == 2
    assert math.isfinite(scores["mean_margin"]) and scores["mean_margin"] != 0


@pytest.fixture(scope="module")
def app(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """Loupe serving the checkpoint (LOUPE_MODEL), with ada's API key; and its adapters folder."""
    root = tmp_path_factory.mktemp("app")
    adapters = root / "adapters"
    adapters.mkdir()
    process, server = start_server(
        root, LOUPE_MODEL=str(checkpoint), LOUPE_ADAPTERS_DIR=str(adapters), LOUPE_MESSAGES_PER_MINUTE="1000"
    )
    try:
        add_account(server, "ada", PASSWORD + "\n")
        yield server, adapters
    finally:
        stop_server(process)


def ask(server: Server, key: str, model: str) -> tuple[str, str]:
    """An image question through the API, as a script asks it: the answer's id and text."""
    url = "data:image/png;base64," + base64.b64encode(png(PHOTO)).decode()
    content = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    answer = api.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], max_tokens=8)
    return answer.id, answer.choices[0].message.content


def stored(server: Server, query: str, *parameters: object) -> list[tuple]:
    with sqlite3.connect(server.data_dir / "loupe.db") as database:
        return database.execute(query, parameters).fetchall()


@pytest.mark.slow
def test_the_app_answers_about_an_image_and_serves_the_adapter_its_feedback_trained(
    family: str, checkpoint: Path, budget: ImageBudget, app: tuple[Server, Path], tmp_path: Path
) -> None:
    server, adapters = app
    key = chat(server, adapters, "keys", "add", "ada").splitlines()[-1]
    answer_id, answer = ask(server, key, "base")
    [(model, completion, prompt_tokens)] = stored(
        server, "SELECT model, completion, prompt_tokens FROM generations WHERE step_id = ?", answer_id
    )
    assert (model, completion) == (str(checkpoint), answer) and answer
    # The model read the image at the family's geometry, as the app counted it: had the app sized it for another
    # (28 pixels a token for Qwen3-VL's 32), the model's processor would have resized it, to another count.
    builder = PromptBuilder(ChatTemplateTokens(vendored_processor(FAMILY_FILES[family])), budget)
    image = fit_to_budget(Image.open(io.BytesIO(png(PHOTO))), budget)
    turns = [SystemMessage(system_prompt(DEFAULT_PROMPT)), user_turn(QUESTION, [image])]
    assert prompt_tokens == sum(map(builder.count_tokens, turns)) + builder.generation_prompt_tokens

    # Rated and exported as SFT data, with its image.
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    api.post("/feedback", body={"id": answer_id, "value": 1}, cast_to=object)
    export = tmp_path / "export"
    chat(server, adapters, "export", "--format", "trl-sft", "--out", str(export))
    [row] = [json.loads(line) for line in (export / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["completion"][0]["content"][0]["text"] == answer and len(row["images"]) == 1

    # One SFT step on the checkpoint; the adapter is served on it, and its answers are recorded as its.
    out = adapters / "family-v1"
    command = [sys.executable, "-m", "models", "train", "--method", "sft", "--data", str(export), "--out", str(out)]
    command += ["--base", str(checkpoint), "--max-steps", "1", "--eval-fraction", "0", "--dtype", "float32"]
    command += ["--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1"]
    trained = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metadata = json.loads((out / "loupe.json").read_text())
    assert metadata["base"] == str(checkpoint) and metadata["images"]["patch"] == budget.patch
    # Merged into the checkpoint (`python -m models merge`): the same architecture, with the base's license.
    merged = merge(MergeSettings(adapter=str(out), out=tmp_path / "merged", dtype="float32"))
    assert merged["base"] == str(checkpoint), "the base the adapter was trained on (its loupe.json)"
    assert (tmp_path / "merged/LICENSE").read_bytes() == (checkpoint / "LICENSE").read_bytes()
    assert type(load_model(str(tmp_path / "merged"), device="cpu").model).__name__ == ARCHITECTURES[family]
    adapted_id, adapted = ask(server, key, "family-v1")
    assert adapted
    assert stored(server, "SELECT adapter, adapter_version FROM generations WHERE step_id = ?", adapted_id) == [
        ("family-v1", metadata["version"])
    ]
