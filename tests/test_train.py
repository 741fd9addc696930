"""Training adapters with TRL on the demo model, from export folders written here in the export's format.

Every run is a real TRL trainer on the real (tiny, random-weight) Qwen2-VL and Qwen's real processor.
The rows say "LOUPE-OK" in every chosen answer and "LOUPE-ERR" in the rejected one, so DPO has something to learn.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import constants
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments
from trl import DPOConfig, DPOTrainer, KTOConfig, SFTConfig
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from chat.arena.leaderboard import as_markdown, contender_of, held_out_cell, standings, with_held_out
from models.adapters import METADATA_FILE, AdapterDirectory, adapter_version
from models.arguments import EvaluateArguments, TrainArguments
from models.checkpoint import load_model
from models.doubts import Plan, end_warnings, plan_warnings
from models.evaluate import evaluate, logp_margins, preference_scores, scoring_model, table
from models.evaluate import main as evaluate_command
from models.train import (
    TRITON_DECIDES,
    TrainingError,
    image_dataset,
    main,
    parse_arguments,
    quantized_layers,
    read_rows,
    split_held_out,
    train,
)
from tests.helpers.battles import battles
from tests.helpers.budgets import GPU_BUDGET
from tests.helpers.datasets import MARKER, lora_weights, write_export
from tests.helpers.hostile import FORGED
from tests.helpers.server import REPO

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
LORA_WEIGHT = re.compile(
    r"base_model\.model\.model\.language_model\.layers\.\d+\.(self_attn|mlp)\.(?P<projection>\w+_proj)\.lora_[AB]\.weight"
)


# An export folder, as `python -m chat export --format trl-dpo / trl-kto` writes it ---------------------


def settings(data: Path, out: Path, **changes: Any) -> tuple[TrainArguments, TrainingArguments]:
    """Small, fast runs: two rows a step, and a learning rate at which the random-weight demo model moves; parsed
    from the command line that asks for them, as `python -m models train` parses it."""
    options = {"method": "dpo", "base": "demo", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}
    options |= {"max_steps": 2, "learning_rate": 5e-3, "warmup_steps": 0, "logging_steps": 1, "eval_fraction": 0}
    options |= {"seed": 0, **changes}
    return parse_arguments(["--data", str(data), "--out", str(out), *command_line(options)])


def command_line(options: dict[str, Any]) -> list[str]:
    return [item for name, value in options.items() for item in (f"--{name.replace('_', '-')}", str(value))]


@dataclass
class Run:
    data: Path
    out: Path
    metadata: dict[str, Any]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """DPO for 4 steps on 16 prompts, a quarter of them held out, checkpointing every 2 steps."""
    root = tmp_path_factory.mktemp("dpo")
    data = write_export(root / "export", "dpo", prompts=16, seed=0)
    out = root / "adapter"
    return Run(data, out, train(*settings(data, out, max_steps=4, save_steps=2, eval_fraction=0.25)))


def demo_model() -> torch.nn.Module:
    """A fresh demo model as training loads it (all float32); peft changes the model it adapts."""
    return load_model("demo", device="cpu", dtype="float32").model


# DPO ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dpo_writes_the_adapter_its_metadata_and_a_report(dpo_run: Run) -> None:
    out, metadata = dpo_run.out, dpo_run.metadata
    assert json.loads((out / "loupe.json").read_text()) == metadata
    assert metadata["base"] == "demo" and metadata["method"] == "dpo"
    assert metadata["version"] == adapter_version(out)  # the version the app records for its answers
    data_file = (dpo_run.data / "train.jsonl").read_bytes()
    assert metadata["data"]["sha256"] == hashlib.sha256(data_file).hexdigest()
    assert metadata["data"] | {"sha256": None} == {
        "file": "train.jsonl",
        "sha256": None,
        "rows": 16,
        "train_rows": 13,
        "held_out_rows": 3,
        "images": 2,
        "eval_fraction": 0.25,  # the split, which `models evaluate` keeps to
        "seed": 0,
    }
    assert metadata["training"]["steps"] == 4 and metadata["training"]["resumed_from_step"] is None
    assert metadata["lora"] | {"target_modules": None} == {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "target_modules": None,
    }
    assert metadata["versions"]["trl"] == "1.16.0"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["target_modules"] == metadata["lora"]["target_modules"]

    report = (out / "report.md").read_text()
    for plot in ("loss.png", "reward_margin.png", "reward_accuracy.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({plot})" in report
    assert "| rows | 16 |" in report and "## Held-out rows (3)" in report
    # 4 steps cannot learn much: said in loupe.json and first in the report.
    assert [doubt["code"] for doubt in metadata["warnings"]] == ["few_steps"]
    assert "## Warnings\n\n- **few_steps**: 4 steps are too few to learn from (fewer than 10)" in report
    assert sorted(path.name for path in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_the_adapter_loads_on_the_demo_model_and_adapts_only_the_language_models_projections(dpo_run: Run) -> None:
    saved = lora_weights(dpo_run.out)
    assert not [key for key in saved if "visual" in key]
    assert all(LORA_WEIGHT.fullmatch(key) for key in saved), sorted(saved)
    assert {LORA_WEIGHT.fullmatch(key)["projection"] for key in saved} == PROJECTIONS
    assert len(saved) == 2 * len(PROJECTIONS) * 2  # lora_A and lora_B, in each of the demo model's 2 layers

    model = PeftModel.from_pretrained(demo_model(), dpo_run.out)
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert len(adapted) == 2 * len(PROJECTIONS) and not [name for name in adapted if "visual" in name]
    loaded = dict(model.named_parameters())
    for key, tensor in saved.items():
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], tensor)
    assert any(tensor.abs().sum() > 0 for key, tensor in saved.items() if "lora_B" in key)  # B starts at zero


@pytest.mark.slow
def test_dpo_raises_the_margin_of_marked_answers_on_held_out_pairs(dpo_run: Run, processor, tmp_path: Path) -> None:
    held_out = dpo_run.metadata["held_out"]
    before, after = held_out["before"]["logp_margin"], held_out["after"]["logp_margin"]
    # In nats. Over data and training seeds 0-2 the gain was +1.5 to +1.8, here and on fresh pairs alike
    # (before the rejected answers carried LOUPE-ERR, seeds 0-10 gave +1.9 to +3.3, and +1.6 to +3.5).
    assert after > before + 1.0, held_out
    assert f"| logp_margin | {before:.4g} | {after:.4g} |" in (dpo_run.out / "report.md").read_text()

    # The same, measured here on pairs the run never saw, with the saved adapter against the base model.
    fresh = write_export(tmp_path / "fresh", "dpo", prompts=8, seed=1)
    dataset = image_dataset(read_rows(fresh / "train.jsonl", "dpo", fresh), fresh, GPU_BUDGET)
    pairs = [dataset[index] for index in range(len(dataset))]
    base_margins = torch.tensor(logp_margins(scoring_model(demo_model()), processor, pairs))
    adapted = PeftModel.from_pretrained(scoring_model(demo_model()), dpo_run.out).eval()
    adapted_margins = torch.tensor(logp_margins(adapted, processor, pairs))
    assert adapted_margins.mean() > base_margins.mean() + 1.0, (base_margins, adapted_margins)


@pytest.mark.slow
def test_training_continues_from_an_adapter(dpo_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "engineering-v2"
    metadata = train(*settings(dpo_run.data, out, from_adapter=str(dpo_run.out), max_steps=1, eval_fraction=0.25))
    # Same data and seed, so the same held-out rows: the run starts where the first adapter ended.
    first_after = dpo_run.metadata["held_out"]["after"]["logp_margin"]
    assert metadata["held_out"]["before"]["logp_margin"] == pytest.approx(first_after, abs=1e-3)
    assert metadata["from_adapter"] == {"name": "adapter", "version": dpo_run.metadata["version"], "method": "dpo"}
    assert lora_weights(out).keys() == lora_weights(dpo_run.out).keys()
    assert not (out / "ref").exists()  # TRL's frozen reference copy of the starting adapter stays out


# Evaluating ---------------------------------------------------------------------------------------

ADAPTER = "marker-v1"


@dataclass
class Evaluation:
    adapters_dir: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def evaluated(dpo_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluation]:
    """`python -m models evaluate` on the DPO run's export, with a copy of its adapter in LOUPE_ADAPTERS_DIR
    (so the run's own loupe.json stays as training wrote it)."""
    adapters_dir = tmp_path_factory.mktemp("adapters")
    shutil.copytree(dpo_run.out, adapters_dir / ADAPTER, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOUPE_ADAPTERS_DIR", str(adapters_dir))
        yield Evaluation(adapters_dir, evaluate(EvaluateArguments(data=dpo_run.data, adapter=[ADAPTER], base="demo")))


@pytest.mark.slow
def test_evaluation_finds_that_the_adapter_prefers_the_chosen_answers_more_than_the_base(
    dpo_run: Run, evaluated: Evaluation, processor
) -> None:
    base, adapter = evaluated.result["scores"]["base"], evaluated.result["scores"][ADAPTER]
    print(table(evaluated.result))  # pytest -s shows it
    assert base["pairs"] == adapter["pairs"] == dpo_run.metadata["data"]["held_out_rows"]
    assert adapter["accuracy"] > base["accuracy"] and adapter["mean_margin"] > base["mean_margin"], (base, adapter)
    for scores in (base, adapter):
        low, high = scores["accuracy_interval"]
        assert 0 <= low <= scores["accuracy"] <= high <= 1
        low, high = scores["mean_margin_interval"]
        assert low <= scores["mean_margin"] <= high
    # The pairs training held out, scored as TRL scored them before training. Its logp_margin is the mean of
    # its evaluation batches' means (batches of 2), which weighs 3 pairs unequally; the evaluation's is per pair.
    rows = read_rows(dpo_run.data / "train.jsonl", "dpo", dpo_run.data)
    dataset = image_dataset(split_held_out(rows, 0.25, 0)[1], dpo_run.data, GPU_BUDGET)  # training's budget
    margins = logp_margins(scoring_model(demo_model()), processor, [dataset[index] for index in range(len(dataset))])
    assert statistics.fmean(margins) == pytest.approx(base["mean_margin"], abs=1e-4)
    batch_means = [statistics.fmean(margins[start : start + 2]) for start in range(0, len(margins), 2)]
    assert statistics.fmean(batch_means) == pytest.approx(
        dpo_run.metadata["held_out"]["before"]["logp_margin"], abs=1e-3
    )


@pytest.mark.slow
def test_the_adapters_metadata_keeps_its_result_beside_the_base_models(dpo_run: Run, evaluated: Evaluation) -> None:
    metadata = json.loads((evaluated.adapters_dir / ADAPTER / METADATA_FILE).read_text())
    assert metadata | {"evaluations": None} == dpo_run.metadata | {"evaluations": None}  # training's record stays
    [entry] = metadata["evaluations"]
    scores = evaluated.result["scores"]
    assert entry["scores"] == {"adapter": scores[ADAPTER], "base": scores["base"]}
    assert entry["base"] == "demo" and entry["version"] == dpo_run.metadata["version"]
    assert entry["data"] == dpo_run.metadata["data"] | {"eval_fraction": 0.25, "seed": 0}  # the run's own split
    assert entry["evaluated_at"] == evaluated.result["evaluated_at"]

    # Shown beside the arena score: on the leaderboard, the adapter's present version carries it.
    adapters = AdapterDirectory(evaluated.adapters_dir)
    board = with_held_out(standings(battles(contender_of(adapters.get(ADAPTER)), "base", "a", 3)), adapters)
    held_out = board.held_out[contender_of(adapters.get(ADAPTER))]
    assert (held_out.accuracy, held_out.base_accuracy) == (scores[ADAPTER]["accuracy"], scores["base"]["accuracy"])
    assert held_out_cell(held_out) in as_markdown(board)


@pytest.mark.slow
def test_the_command_prints_the_same_numbers_again_and_replaces_the_stored_result(
    dpo_run: Run, evaluated: Evaluation, tmp_path: Path
) -> None:
    """Its arguments from a YAML file (`--config`, as training takes them), the command line's beside them."""
    recipe = tmp_path / "evaluate.yaml"
    recipe.write_text(f"data: {dpo_run.data}\nadapter: [{ADAPTER}]\nbase: demo\n")
    command = [sys.executable, "-m", "models", "evaluate", "--config", str(recipe), "--json"]
    environment = os.environ | {"LOUPE_ADAPTERS_DIR": str(evaluated.adapters_dir)}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert json.loads(result.stdout)["scores"] == evaluated.result["scores"]  # fixed seed: same pairs, same numbers
    held_out_rows = dpo_run.metadata["data"]["held_out_rows"]
    assert "Loading demo" in result.stderr and f"Pairs scored: {held_out_rows} of {held_out_rows}" in result.stderr
    metadata = json.loads((evaluated.adapters_dir / ADAPTER / METADATA_FILE).read_text())
    assert len(metadata["evaluations"]) == 1  # the same measurement again: replaced, not added


def test_on_a_cpu_only_the_answers_positions_are_scored_and_their_log_probabilities_are_trls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TRL scores all 151,657 logits at every position on a CPU; the answer's positions alone carry the loss."""
    model = demo_model()
    add_fused_lm_head(model)
    input_ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = input_ids.masked_fill(torch.arange(40) < 30, -100)  # a 30-token prompt, a 10-token answer
    scored: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction.apply

    def counted(hidden: torch.Tensor, *rest: Any) -> Any:
        scored.append(hidden.shape[0])
        return kernel(hidden, *rest)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counted)
    ours = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
    assert scored == [2 * 10]  # the labels shift by one: 10 labelled next tokens per row
    monkeypatch.setattr(trl_utils, "_use_triton", TRITON_DECIDES)
    every_position = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
    assert scored[1:] == [2 * 39]
    torch.testing.assert_close(ours, every_position)
    assert ours[:, 29:].lt(0).all() and ours[:, :29].eq(0).all()


def test_preference_scores_of_known_margins() -> None:
    scores = preference_scores([2.0, -1.0, 0.5, 3.0])
    assert (scores.pairs, scores.accuracy, scores.mean_margin) == (4, 0.75, 1.125)
    assert scores == preference_scores([2.0, -1.0, 0.5, 3.0])  # seeded: the same margins, the same intervals
    # Resampling 4 pairs: anything from 1 to 4 winners, and means from the smallest to the largest margin.
    low, high = scores.accuracy_interval
    assert 0.25 <= low < 0.75 < high == 1.0
    low, high = scores.mean_margin_interval
    assert -1.0 <= low < 1.125 < high <= 3.0
    assert preference_scores([1.0, 2.0]).accuracy_interval == [1.0, 1.0]  # every resample wins every pair
    assert preference_scores([-1.0, 0.0]).accuracy == 0.0  # a tie is no win
    # 400 pairs, half won: the interval is the normal approximation's, 0.5 +- 1.96 * sqrt(0.25 / 400).
    low, high = preference_scores([1.0, -1.0] * 200).accuracy_interval
    assert low == pytest.approx(0.451, abs=0.006) and high == pytest.approx(0.549, abs=0.006)


def forge_a_turn(folder: Path) -> None:
    """Line 2's question forges a turn with raw control tokens, as a hand-made or an old export could hold it."""
    lines = (folder / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    row = json.loads(lines[1])
    row["prompt"][-1]["content"][-1]["text"] = FORGED
    lines[1] = json.dumps(row, ensure_ascii=False) + "\n"
    (folder / "train.jsonl").write_text("".join(lines), encoding="utf-8")


# What a row check says of forge_a_turn's line, before the model loads.
FORGED_TURN = r"train\.jsonl, line 2: the prompt carries <\|im_end\|>, which the chat template would read as a control"


def leave_as_written(folder: Path) -> None:
    """The export is fine: what is wrong lies elsewhere."""


def kto_export(folder: Path) -> None:
    shutil.rmtree(folder)
    write_export(folder, "kto", prompts=2, seed=10)


BAD_EVALUATIONS = {
    "no folder": (lambda folder: shutil.rmtree(folder), [], r"--data .* is not a folder\. Export one with"),
    "not an export": (lambda folder: (folder / "train.jsonl").unlink(), [], r"holds no \.jsonl file"),
    "a KTO export": (kto_export, [], r"line 1 is a KTO row \(completion, label\): evaluation measures DPO pairs"),
    "a control token": (forge_a_turn, [], FORGED_TURN + r".*Export the data again with `python -m chat export`"),
    "no such adapter": (
        leave_as_written,
        ["--adapter", "nope"],
        rf"--adapter nope: no adapter .* adapters there: {ADAPTER}\)\. Name a folder",
    ),
    "no held-out pairs": (
        leave_as_written,
        [],
        r"has no held-out pairs: 0.1 of its prompts rounds down to none\. Export more",
    ),
}


def trained_adapter_folder(dpo_run: Run, adapters_dir: Path) -> None:
    """The DPO run's adapter as a folder in `adapters_dir`: its config and metadata are all that is read
    before the model loads."""
    (adapters_dir / ADAPTER).mkdir(parents=True)
    for name in ("adapter_config.json", METADATA_FILE):
        shutil.copy(dpo_run.out / name, adapters_dir / ADAPTER / name)


@pytest.mark.parametrize("damage", BAD_EVALUATIONS.values(), ids=BAD_EVALUATIONS.keys())
def test_evaluation_stops_before_loading_the_model_with_what_to_do(
    dpo_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage
) -> None:
    spoil, arguments, expected = damage
    trained_adapter_folder(dpo_run, tmp_path / "adapters")
    monkeypatch.setenv("LOUPE_ADAPTERS_DIR", str(tmp_path / "adapters"))
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=11)
    spoil(data)
    with pytest.raises(SystemExit, match=expected):
        evaluate_command(["--data", str(data), "--base", "demo", *arguments])


def test_an_adapter_is_not_measured_on_pairs_it_was_trained_on(
    dpo_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_adapter_folder(dpo_run, tmp_path / "adapters")
    monkeypatch.setenv("LOUPE_ADAPTERS_DIR", str(tmp_path / "adapters"))
    command = ["--data", str(dpo_run.data), "--base", "demo", "--adapter", ADAPTER, "--eval-fraction", "0.5"]
    expected = rf"--adapter {ADAPTER} was trained on this export with --eval-fraction 0.25 --seed 0; held out with 0.5"
    with pytest.raises(SystemExit, match=expected):
        evaluate_command(command)


@pytest.mark.slow
def test_the_evaluate_command_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "models", "evaluate", "--data", str(tmp_path / "missing"), "--base", "demo"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: --data") and "Traceback" not in result.stderr


# Options: Loupe's and TRL's -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "config_class", "learning_rate"),
    [("dpo", DPOConfig, 5e-6), ("kto", KTOConfig, 5e-6), ("sft", SFTConfig, 2e-4)],
)
def test_trls_own_options_take_loupes_defaults_where_none_is_given(
    tmp_path: Path, method: str, config_class: type, learning_rate: float
) -> None:
    """Each method's TRL config, with Loupe's defaults where TRL's suit full fine-tuning on large data."""
    arguments, config = parse_arguments(["--method", method, "--data", str(tmp_path), "--out", str(tmp_path / "a")])
    assert type(config) is config_class and arguments.method == method and arguments.eval_fraction == 0.1
    assert config.learning_rate == learning_rate
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 4)
    assert (config.num_train_epochs, config.warmup_steps, config.logging_steps) == (1, 0.1, 5)
    assert (config.save_steps, config.save_total_limit) == (50, 2)
    assert config.use_cpu and config.dataloader_num_workers == 0  # on this machine, which has no GPU
    assert config.seed == 42 and config.activation_checkpointing  # TRL's own


@pytest.mark.slow
def test_a_yaml_config_sets_trls_options_and_loupes_and_the_command_line_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--config FILE` as in TRL's scripts: options by name, TRL's (even one Loupe never mirrored: the scheduler)
    and Loupe's, environment variables under `env`; the command line over the file, Loupe's defaults under it.
    loupe.json keeps what the trainer was given."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=14)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(
        "method: dpo\nbase: demo\neval_fraction: 0\nmax_steps: 5\nbeta: 0.25\nlr_scheduler_type: cosine\n"
        "per_device_train_batch_size: 2\ngradient_accumulation_steps: 1\nenv:\n  LOUPE_RECIPE: read\n"
    )
    monkeypatch.setenv("LOUPE_RECIPE", "unset")  # restored after the test
    out = tmp_path / "adapter"
    main(["--config", str(recipe), "--data", str(data), "--out", str(out), "--max-steps", "1"])
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["training"]["steps"] == 1 and metadata["settings"]["max_steps"] == 1  # the command line's
    given = metadata["settings"]
    assert (given["base"], given["eval_fraction"]) == ("demo", 0)
    assert (given["beta"], given["lr_scheduler_type"]) == (0.25, "cosine")
    assert given["learning_rate"] == 5e-6 and given["logging_steps"] == 5  # Loupe's defaults under the file's
    assert given["max_length"] is None  # Loupe's decision: image tokens are never cut
    assert "weight_decay" not in given  # TRL's defaults are not repeated
    assert os.environ["LOUPE_RECIPE"] == "read"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--batch-size", "4"], r"Unknown arguments: --batch-size 4\. .*--batch-size is --per-device-train-batch-size"),
        (["--warmup", "0"], r"Unknown arguments: --warmup 0\. .*--warmup --warmup-steps"),
        (["--config", "missing.yaml"], r"--config missing\.yaml: no such file"),
        (["--config", "{recipe}"], r"--config: unknown keys batch_size\. .*--batch-size is --per-device-train"),
        (["--config", "{broken}"], r"--config .*broken\.yaml is not YAML"),
        (["--lora-rank", "12"], r"invalid choice: '12'"),
        (["--beta", "much"], r"invalid float value: 'much'"),
    ],
)
def test_an_unknown_or_renamed_option_is_refused_with_its_name_today(
    tmp_path: Path, capsys: pytest.CaptureFixture, options: list[str], expected: str
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("batch_size: 4\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("beta: [0.1\n")
    options = [option.format(recipe=recipe, broken=broken) for option in options]
    with pytest.raises(SystemExit) as stopped:
        main(["--method", "dpo", "--data", str(tmp_path), "--out", str(tmp_path / "adapter"), *options])
    said = str(stopped.value.code) + capsys.readouterr().err
    assert re.search(expected, said), said
    assert not (tmp_path / "adapter").exists()


# Resuming -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_complete_checkpoint(tmp_path: Path) -> None:
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=2)
    out = tmp_path / "adapter"
    train(*settings(data, out, max_steps=2, save_steps=1))
    first_run = json.loads((out / "checkpoints/checkpoint-2/trainer_state.json").read_text())["log_history"]
    # A run killed while saving step 3 leaves a checkpoint folder without its trainer state.
    (out / "checkpoints/checkpoint-3").mkdir()
    (out / "checkpoints/checkpoint-3/adapter_model.safetensors").write_bytes(b"")

    metadata = train(*settings(data, out, max_steps=4, save_steps=1, resume=True))

    assert metadata["training"]["resumed_from_step"] == 2 and metadata["training"]["steps"] == 4
    history = json.loads((out / "checkpoints/checkpoint-4/trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    # Steps 1 and 2 are the first run's records, logged under its 2-step schedule (half the rate at step 2);
    # a run that started over with max_steps=4 would have logged three quarters of it there.
    assert steps[:2] == [entry for entry in first_run if "loss" in entry]
    assert steps[1]["learning_rate"] == pytest.approx(5e-3 / 2)

    other_data = write_export(tmp_path / "other", "dpo", prompts=4, seed=3)
    with pytest.raises(TrainingError, match="are of another run"):
        train(*settings(other_data, out, max_steps=6, resume=True))
    with pytest.raises(TrainingError, match=r"another run .*quantization none -> 4bit"):
        train(*settings(data, out, max_steps=6, resume=True, quantization="4bit"))
    with pytest.raises(TrainingError, match=r"another run .*images .*'max_pixels': 50176"):
        train(*settings(data, out, max_steps=6, resume=True, max_pixels=64 * 28 * 28))


def test_a_question_asked_again_in_other_words_is_held_out_whole_or_not_at_all() -> None:
    """The split compares prompts as the export's rule 8 does (models/prompt_key.py): case, spacing and
    punctuation aside, with the same images."""

    def row(question: str, image: str) -> dict[str, Any]:
        content = [{"type": "image"}, {"type": "text", "text": question}]
        completion = [{"role": "assistant", "content": [{"type": "text", "text": "It divides the voltage."}]}]
        prompt = [{"role": "user", "content": content}]
        return {"images": [f"images/{image}.png"], "prompt": prompt, "chosen": completion, "rejected": completion}

    asked = [row(f"What does circuit {n} do?", f"{n:064x}") for n in range(20)]
    again = [row(f"  what does CIRCUIT {n} do", f"{n:064x}") for n in range(20)]
    other_image = [row(f"What does circuit {n} do?", f"{n + 100:064x}") for n in range(20)]
    train_rows, held_out = split_held_out(asked + again + other_image, 0.5, seed=0)
    held = {json.dumps(row) for row in held_out}
    for first, second in zip(asked, again, strict=True):
        assert (json.dumps(first) in held) == (json.dumps(second) in held), first["prompt"]
    assert held_out and train_rows


# QLoRA --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_qlora_trains_on_a_4bit_base_an_adapter_that_serves_on_the_unquantized_one(tmp_path: Path) -> None:
    """`python -m models train --quantization 4bit` with bitsandbytes as `make qlora` installs it, beside the
    environment; without it, the run stops before loading anything and says what to do."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=7)
    with pytest.raises(TrainingError, match=r"make qlora`, then this command with PYTHONPATH=\.venv-qlora"):
        train(*settings(data, tmp_path / "refused", quantization="4bit"))
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--data", str(data), "--base", "demo"]
    command += ["--out", str(tmp_path / "adapter"), "--max-steps", "2", "--eval-fraction", "0"]
    command += ["--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1"]
    command += ["--learning-rate", "5e-3", "--warmup-steps", "0", "--quantization", "4bit"]
    environment = {**os.environ, "PYTHONPATH": str(REPO / ".venv-qlora")}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    metadata = json.loads((tmp_path / "adapter" / METADATA_FILE).read_text())
    assert metadata["training"]["quantized_layers"] == 2 * len(PROJECTIONS), "the language model's, in 4 bits"
    weights = lora_weights(tmp_path / "adapter")
    assert {LORA_WEIGHT.fullmatch(name)["projection"] for name in weights} == PROJECTIONS
    assert any(name.endswith("lora_B.weight") and tensor.any() for name, tensor in weights.items()), "it trained"
    served = PeftModel.from_pretrained(demo_model(), tmp_path / "adapter")  # the app's base: not quantized
    assert quantized_layers(served) == 0


# Merged checkpoints -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_merged_checkpoint_loads_without_peft_and_answers_as_base_and_adapter_did(
    dpo_run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "models", "merge", "--adapter", str(dpo_run.out), "--out", str(out)]
    result = subprocess.run([*command, "--dtype", "float32"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    merged = AutoModelForImageTextToText.from_pretrained(out)
    assert not [name for name, _ in merged.named_parameters() if "lora" in name] and not hasattr(merged, "peft_config")
    processor = AutoProcessor.from_pretrained(out)
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does it show?"}]}]
    prompt = processor.apply_chat_template(question, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 84), "red")], return_tensors="pt")

    def greedy(model: torch.nn.Module) -> list[int]:
        return model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()

    adapted = greedy(PeftModel.from_pretrained(demo_model(), dpo_run.out))
    assert greedy(merged) == adapted != greedy(demo_model()), "the adapter's answer, which is not the base model's"
    card = (out / "README.md").read_text()
    assert f"`demo` with the LoRA adapter `adapter` (version {dpo_run.metadata['version']}, DPO)" in card


# KTO and SFT --------------------------------------------------------------------------------------


@pytest.mark.slow
# SFT's batches are built by 2 worker processes, as they are on CUDA.
@pytest.mark.parametrize(("method", "kind", "rows", "workers"), [("kto", "kto", 8, 0), ("sft", "dpo", 4, 2)])
def test_kto_and_sft_train_a_few_steps(tmp_path: Path, method: str, kind: str, rows: int, workers: int) -> None:
    data = write_export(tmp_path / "export", kind, prompts=4, seed=4)
    metadata = train(*settings(data, tmp_path / "adapter", method=method, dataloader_num_workers=workers))
    assert metadata["method"] == method and metadata["training"]["steps"] == 2
    assert metadata["data"]["rows"] == rows
    assert torch.isfinite(torch.tensor(metadata["training"]["last_logged"]["loss"]))
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file() and (tmp_path / "adapter/loss.png").is_file()


def test_sft_learns_the_answers_labelled_desirable(tmp_path: Path) -> None:
    data = write_export(tmp_path / "export", "kto", prompts=4, seed=5)
    rows = read_rows(data / "train.jsonl", "sft", data)
    assert len(rows) == 4 and all(row.keys() == {"images", "prompt", "completion"} for row in rows)
    assert all(row["completion"][0]["content"][0]["text"].startswith(MARKER) for row in rows)


# Runs that cannot learn ---------------------------------------------------------------------------

# A plan with enough of everything: 100 steps of 8 rows, 10 of them warming up, 20 rows held out.
SOUND = Plan(train_rows=800, held_out_rows=20, rows_per_step=8, steps=100, warmup_steps=10)
DOUBTFUL_PLANS = {
    "sound": (SOUND, []),
    "warm-up to the end": (replace(SOUND, warmup_steps=100), ["warmup"]),
    "nine steps": (replace(SOUND, steps=9, warmup_steps=1), ["few_steps"]),
    "ten steps": (replace(SOUND, steps=10, warmup_steps=1, train_rows=80), []),
    "79 rows over 10 steps": (replace(SOUND, steps=10, warmup_steps=1, train_rows=79), ["few_rows"]),
    "nothing held out": (replace(SOUND, held_out_rows=0), ["no_held_out"]),
    "the newcomer's run": (
        Plan(train_rows=2, held_out_rows=0, rows_per_step=8, steps=1, warmup_steps=1),
        ["warmup", "few_steps", "no_held_out"],
    ),
}


@pytest.mark.parametrize(("plan", "codes"), DOUBTFUL_PLANS.values(), ids=DOUBTFUL_PLANS.keys())
def test_a_plan_that_cannot_learn_says_why(plan: Plan, codes: list[str]) -> None:
    assert [code for code, _ in plan_warnings(plan)] == codes


def test_a_dpo_loss_still_at_ln_2_says_nothing_was_learned() -> None:
    (code, message), *others = end_warnings("dpo", 0.69312)
    assert code == "loss_unchanged" and not others
    assert message.startswith("the DPO loss ended at 0.6931, ln 2, where it starts")
    assert end_warnings("dpo", 0.6925) == end_warnings("dpo", None) == end_warnings("kto", 0.6931) == []


@pytest.mark.slow
def test_the_readme_example_trains_on_the_demo_model_the_app_serves_and_says_it_cannot_learn(tmp_path: Path) -> None:
    """`python -m models train --method dpo --data DIR --out DIR` as the docs write it, on a fresh install that
    serves the demo model (no weights, no hub), on a first export of 4 pairs."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=13)
    environment = {key: value for key, value in os.environ.items() if key != "LOUPE_MODEL"}
    environment |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "no-hub-cache")}
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--data", str(data)]
    command += ["--out", str(tmp_path / "adapters/engineering-v2")]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "The app serves the demo model because 'Qwen/Qwen2-VL-2B-Instruct' is not on" in result.stderr
    assert "The base model is the DEMO model (random weights)" in result.stderr
    assert "Serving" not in result.stderr and "LOUPE_MODEL is set to 'demo'" not in result.stderr
    metadata = json.loads((tmp_path / "adapters/engineering-v2/loupe.json").read_text())
    assert metadata["base"] == "demo" and metadata["training"]["steps"] == 1
    # 4 pairs: 1 step of 8 rows, spent warming up from learning rate 0; none of 4 prompts held out; loss ln 2.
    expected = ["warmup", "few_steps", "no_held_out", "loss_unchanged"]
    assert [doubt["code"] for doubt in metadata["warnings"]] == expected
    warnings = [line for line in result.stdout.splitlines() if line.startswith("Warning: ")]
    assert warnings == [f"Warning: {doubt['message']}." for doubt in metadata["warnings"]]
    assert warnings[0] == (
        "Warning: the warm-up takes 1 step of 1: the learning rate starts at 0 and never reaches --learning-rate. "
        "Lower --warmup-steps, or train more steps."
    )
    assert "This run cannot learn much: no rows are held out" in result.stderr, "said before it trains"


# Clear errors -------------------------------------------------------------------------------------


def test_kto_rows_given_to_dpo_say_what_they_are_and_what_to_do(tmp_path: Path) -> None:
    data = write_export(tmp_path / "export", "kto", prompts=2, seed=6)
    expected = r"line 1 is a KTO row \(completion, label\), not a DPO pair \(chosen, rejected\) as --method dpo needs"
    with pytest.raises(SystemExit, match=expected + r".*--method kto.*--format trl-dpo"):
        main(["--method", "dpo", "--data", str(data), "--out", str(tmp_path / "adapter"), "--base", "demo"])
    assert not (tmp_path / "adapter").exists()


def llamafactory_rows(folder: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "<image>Which part?"}], "images": ["images/a.png"]}
    (folder / "train.jsonl").write_text(json.dumps(row) + "\n")


def cut_short(folder: Path) -> None:
    data = folder / "train.jsonl"
    data.write_bytes(data.read_bytes()[:-40])


def drop_an_image(folder: Path) -> None:
    next((folder / "images").iterdir()).unlink()


BAD_EXPORTS = {
    "no folder": (lambda folder: shutil.rmtree(folder), r"--data .* is not a folder\. Export one with"),
    "no rows": (lambda folder: (folder / "train.jsonl").write_text(""), r"holds no rows\. Rate more answers"),
    "no data file": (lambda folder: (folder / "train.jsonl").unlink(), r"holds no \.jsonl file"),
    "LLaMA-Factory rows": (llamafactory_rows, r"in LLaMA-Factory's format\. Export with --format trl-dpo"),
    "cut short": (cut_short, r"line 2 is not JSON .* Export it again"),
    "missing image": (drop_an_image, r"image images/\w+\.png is not in .* Copy the whole export folder"),
    "a control token": (forge_a_turn, FORGED_TURN + r".*Export the data again with `python -m chat export`"),
}


@pytest.mark.parametrize("damage", BAD_EXPORTS.values(), ids=BAD_EXPORTS.keys())
def test_unusable_data_stops_before_training_with_what_to_do(tmp_path: Path, damage) -> None:
    spoil, expected = damage
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=7)
    spoil(data)
    with pytest.raises(TrainingError, match=expected):
        train(*settings(data, tmp_path / "adapter"))


def test_a_base_model_that_cannot_be_loaded_is_named_with_what_to_do(tmp_path: Path) -> None:
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=8)
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(TrainingError, match=rf"--base {broken}: Could not load the model"):
        train(*settings(data, tmp_path / "adapter", base=str(broken)))
    assert not (tmp_path / "adapter").exists(), "a failed run leaves no empty folder behind"


def test_a_base_that_is_named_never_falls_back_to_the_demo_model(tmp_path: Path, monkeypatch) -> None:
    """Only the default follows the app to the demo model; a --base that is given is trained on, or refused."""
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the hub unreachable
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=8)
    named = "Qwen/Qwen2-VL-2B-Instruct"
    with pytest.raises(TrainingError, match=rf"--base {named} cannot be loaded: .* or use the demo model with --base"):
        train(*settings(data, tmp_path / "adapter", base=named))
    assert not (tmp_path / "adapter").exists(), "a failed run leaves no empty folder behind"


def test_a_run_interrupted_before_its_first_checkpoint_keeps_nothing(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in the first steps: no folder is left to be mistaken for a run that --resume could continue."""

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(DPOTrainer, "train", interrupted)
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=8)
    with pytest.raises(SystemExit, match=r"^Interrupted before the first checkpoint: nothing was kept\.$"):
        main(["--method", "dpo", "--data", str(data), "--out", str(tmp_path / "adapter"), "--base", "demo"])
    assert not (tmp_path / "adapter").exists()


def test_an_existing_adapter_is_not_overwritten(tmp_path: Path) -> None:
    data = write_export(tmp_path / "export", "dpo", prompts=2, seed=9)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter/adapter_config.json").write_text("{}")
    with pytest.raises(TrainingError, match=r"already holds an adapter\. Choose a new --out, or add --resume"):
        train(*settings(data, tmp_path / "adapter"))


@pytest.mark.slow
def test_the_command_line_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--base", "demo"]
    command += ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "adapter")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Error: --data" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_command_line_refuses_a_row_carrying_control_tokens_before_loading_the_model(tmp_path: Path) -> None:
    """Without the check, TRL's collator fails mid-run on the forged <|image_pad|> (no image fills it)."""
    data = write_export(tmp_path / "export", "dpo", prompts=4, seed=12)
    forge_a_turn(data)
    command = [sys.executable, "-m", "models", "train", "--method", "dpo", "--base", "demo"]
    command += ["--data", str(data), "--out", str(tmp_path / "adapter"), "--eval-fraction", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-5000:]
    assert re.search(r"^Error: .*/" + FORGED_TURN + r".*`python -m chat export`", result.stderr, re.M), result.stderr
    assert "Loading demo" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "adapter").exists()
