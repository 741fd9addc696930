"""Model loading: the demo model, its fallback rule, and clear errors for unusable checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from models.checkpoint import ModelLoadError, build_demo_model, load_model


def test_demo_weights_are_deterministic() -> None:
    first, second = build_demo_model().state_dict(), build_demo_model().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_demo_model_uses_qwens_real_processor(demo) -> None:
    tokenizer = demo.processor.tokenizer
    assert demo.is_demo and demo.demo_reason == "LOUPE_MODEL is set to 'demo'"
    assert len(tokenizer) == 151657  # Qwen2-VL's vocabulary with its special tokens
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == demo.model.config.image_token_id


def test_unreachable_hub_falls_back_to_the_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id that is not cached locally, with the hub unreachable (a closed local port)."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    loaded = load_model("Qwen/Qwen2-VL-2B-Instruct", device="cpu")
    assert loaded.is_demo
    assert "unreachable" in loaded.demo_reason


def test_corrupt_checkpoint_folder_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="Could not load the Qwen2-VL model"):
        load_model(str(tmp_path), device="cpu")


def test_other_architecture_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ModelLoadError, match="it is a 'bert' model, not Qwen2-VL"):
        load_model(str(tmp_path), device="cpu")


def test_saved_checkpoint_loads_from_a_folder(tmp_path: Path, demo) -> None:
    """The real loading path: a Qwen2-VL folder with weights and processor files."""
    demo.model.save_pretrained(tmp_path)
    demo.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert not loaded.is_demo and loaded.name == str(tmp_path)
    assert loaded.model.dtype == torch.float32
