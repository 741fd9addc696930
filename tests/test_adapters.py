"""Adapters are folders: found without a restart, served side by side on one base model, reloaded when retrained."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest

from models.adapters import AdapterDirectory, AdapterError
from models.checkpoint import load_model
from models.generation import Generator, SamplingSettings
from tests.helpers.datasets import save_adapter

GREEDY = SamplingSettings(temperature=0, top_p=1, max_new_tokens=12, repetition_penalty=1.0)
QUESTION = [{"role": "user", "content": [{"type": "text", "text": "Which bolt grade is stronger?"}]}]


async def answer(generator: Generator, adapter=None) -> str:
    async with aclosing(generator.stream(QUESTION, GREEDY, adapter=adapter)) as pieces:
        return "".join([piece async for piece in pieces])


def test_only_folders_with_an_adapter_are_listed_and_versions_follow_content(tmp_path: Path) -> None:
    save_adapter(tmp_path / "beta", seed=1)
    save_adapter(tmp_path / "alpha", seed=2)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.md").write_text("not an adapter")
    directory = AdapterDirectory(tmp_path)
    assert [adapter.name for adapter in directory.list()] == ["alpha", "beta"]

    before = directory.get("alpha").version
    (tmp_path / "alpha" / "report.md").write_text("training report")  # not part of the adapter
    assert directory.get("alpha").version == before
    save_adapter(tmp_path / "alpha", seed=3)  # retrained in place
    assert directory.get("alpha").version != before
    assert directory.get("missing") is None
    assert AdapterDirectory(tmp_path / "nowhere").list() == []


async def test_one_base_model_serves_each_adapter_and_the_base_in_turn(tmp_path: Path) -> None:
    save_adapter(tmp_path / "first", seed=1)
    save_adapter(tmp_path / "second", seed=2)
    directory = AdapterDirectory(tmp_path)
    generator = Generator(load_model("demo", device="cpu"))
    base = await answer(generator)

    first = await answer(generator, directory.get("first"))
    second = await answer(generator, directory.get("second"))
    assert len({base, first, second}) == 3, "each adapter changes the answer"
    assert await answer(generator) == base, "the base model is untouched by the adapters beside it"
    assert await answer(generator, directory.get("first")) == first

    save_adapter(tmp_path / "first", seed=4)  # retrained: the new weights are served, without a restart
    assert await answer(generator, directory.get("first")) not in (first, base)
    assert len(generator.adapters.keys) == 2, "the old version was dropped"


async def test_an_adapter_for_another_model_is_refused_with_a_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    save_adapter(broken, seed=1)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    generator = Generator(load_model("demo", device="cpu"))
    with pytest.raises(AdapterError, match="Could not load the LoRA adapter 'broken'"):
        await answer(generator, AdapterDirectory(tmp_path).get("broken"))
    assert await answer(generator)  # the model still serves
