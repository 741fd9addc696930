"""Model loading: the demo model, its fallback rule, and clear errors for unusable checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from models.backend import DemoReason
from models.checkpoint import (
    NATIVE_BF16_FLAGS,
    ModelLoadError,
    build_demo_model,
    cpu_flags,
    load_model,
    pick_dtype,
    vocabulary_scripts,
)


def test_the_demo_groups_its_vocabulary_by_writing_system() -> None:
    """What lets feedback move the demo's answers (bench/bench_flywheel.py): the tokens of one script share a
    direction of the embedding space, which the tokens of another do not."""
    scripts, names = vocabulary_scripts()
    embeddings = build_demo_model().get_input_embeddings().weight[: len(scripts)].detach()
    han, latin = (embeddings[scripts == names.index(name)] for name in ("CJK", "LATIN"))
    direction = torch.nn.functional.normalize(han.mean(0), dim=0)
    along = {
        name: torch.nn.functional.normalize(tokens, dim=1) @ direction
        for name, tokens in (("han", han), ("latin", latin))
    }
    assert along["han"].mean() > 0.9, "a Han token is mostly its script's shared part"
    assert along["latin"].abs().mean() < 0.5, "a Latin token has little of the Han direction"
    assert len(han) > 20_000 and len(latin) > 90_000  # Qwen's vocabulary, classified by its decoded text


def test_demo_weights_are_deterministic() -> None:
    first, second = build_demo_model().state_dict(), build_demo_model().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_demo_model_uses_qwens_real_processor(demo) -> None:
    tokenizer = demo.processor.tokenizer
    assert demo.is_demo and str(demo.demo_reason) == "LOUPE_MODEL is set to 'demo'"
    assert len(tokenizer) == 151657  # Qwen2-VL's vocabulary with its special tokens
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == demo.model.config.image_token_id


def test_loading_the_demo_model_leaves_why_to_its_caller(caplog: pytest.LogCaptureFixture) -> None:
    """The app says it serves the demo model (chat/ui/runtime.py), training that it trains on it (models/train.py):
    the loader does not claim either, nor blame LOUPE_MODEL for a `--base demo`."""
    with caplog.at_level(logging.INFO):
        loaded = load_model("demo", device="cpu")
    assert loaded.demo_reason == DemoReason("asked", "demo"), "the app's notice says it"
    assert "Serving" not in caplog.text and "LOUPE_MODEL" not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ({"avx2", "avx512f", "avx512bw"}, torch.float32),  # AVX-512 without its BF16 extension
        ({"avx512f", "avx512_bf16"}, torch.bfloat16),  # Zen 4 and newer, Cooper Lake
        ({"amx_bf16", "amx_tile"}, torch.bfloat16),  # Sapphire Rapids and newer
        ({"fp", "asimd", "bf16", "sve"}, torch.bfloat16),  # Arm v8.6 (Graviton 3, Apple M2)
        (set(), torch.float32),  # no /proc/cpuinfo
    ],
)
def test_a_cpu_computes_in_bf16_only_where_it_is_native(flags: set[str], dtype: torch.dtype) -> None:
    chosen, why = pick_dtype("auto", torch.device("cpu"), frozenset(flags))
    assert chosen == dtype and why
    assert pick_dtype("float32", torch.device("cpu"), frozenset(flags))[0] == torch.float32, "LOUPE_DTYPE wins"
    assert pick_dtype("auto", torch.device("cuda"), frozenset(flags))[0] == torch.bfloat16


def test_the_demo_model_runs_in_the_precision_this_cpu_is_fast_in(demo) -> None:
    native = bool(NATIVE_BF16_FLAGS & cpu_flags())
    assert demo.model.dtype == (torch.bfloat16 if native else torch.float32)
    assert demo.precision.startswith("bfloat16, this CPU computes bf16 natively" if native else "float32, ")


def test_unreachable_hub_falls_back_to_the_demo_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id that is not cached locally, with the hub unreachable (a closed local port)."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    loaded = load_model("Qwen/Qwen2-VL-2B-Instruct", device="cpu")
    assert loaded.is_demo
    assert loaded.demo_reason.code == "unreachable" and "unreachable" in str(loaded.demo_reason)


def test_corrupt_checkpoint_folder_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="Could not load the model"):
        load_model(str(tmp_path), device="cpu")


def test_a_path_to_no_folder_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    """A mistyped LOUPE_MODEL=/models/... is no hub id either: the hub is not asked, nor called unreachable."""
    with pytest.raises(ModelLoadError, match="is neither a folder on this machine nor a model hub id"):
        load_model(str(tmp_path / "no-such-model"), device="cpu")


@pytest.mark.parametrize("model_type", ["bert", "llava", "qwen3_vl_moe"])
def test_other_architecture_is_an_error_naming_the_supported_ones(tmp_path: Path, model_type: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    supported = "Qwen2-VL, Qwen2.5-VL, Qwen3-VL"
    with pytest.raises(ModelLoadError, match=f"it is a '{model_type}' model; Loupe serves {supported}"):
        load_model(str(tmp_path), device="cpu")


def test_saved_checkpoint_loads_from_a_folder(tmp_path: Path, demo) -> None:
    """The real loading path: a Qwen2-VL folder with weights and processor files."""
    demo.model.save_pretrained(tmp_path)
    demo.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert not loaded.is_demo and loaded.name == str(tmp_path)
    assert loaded.model.dtype == demo.model.dtype and loaded.precision == demo.precision, "one precision rule"
