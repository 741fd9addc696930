"""`python -m models train` on two processes, as torchrun and accelerate launch start it (on the CPU, over gloo):
one adapter, on which the processes agree, written once. In a file of its own, so that the suite's second
worker can take it beside test_train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.adapters import METADATA_FILE
from models.checkpoint import build_demo_model, write_checkpoint
from tests.helpers.datasets import lora_weights, write_export
from tests.helpers.server import REPO

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def accelerate(config: str) -> list[str]:
    """`accelerate launch` with one of the shipped configs (models/accelerate/)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"models/accelerate/{config}.yaml"]


# DeepSpeed, where `make deepspeed` installs it (`make test` does), for the ZeRO configs.
DEEPSPEED = {**os.environ, "PYTHONPATH": str(REPO / ".venv-deepspeed")}


def launch(
    launcher: list[str], data: Path, out: Path, *options: str, base: str = "demo", environment: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m models train` on two CPU processes, as the launcher starts it: one row a process and step,
    then each process's trainable weights in OUT/rank-N.pt (tests/helpers/ddp_train.py)."""
    command = [*launcher, "-m", "tests.helpers.ddp_train", "--method", "dpo", "--data", str(data), "--out", str(out)]
    command += ["--base", base, "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1"]
    command += ["--learning-rate", "5e-3", "--warmup-steps", "0", "--eval-fraction", "0.25", "--seed", "0", *options]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def agreed_weights(out: Path) -> dict[str, torch.Tensor]:
    """The processes' trainable weights after training, which must be one adapter's; as its file names them."""
    first, second = (torch.load(out / f"rank-{rank}.pt") for rank in (0, 1))
    assert first.keys() == second.keys() and first
    assert [name for name in first if not torch.equal(first[name], second[name])] == [], "the processes diverged"
    return {name.replace(".default.", "."): weights for name, weights in first.items()}


@pytest.mark.slow
def test_two_processes_train_one_adapter_on_which_they_agree_and_resume_it(tmp_path: Path) -> None:
    """The shipped DDP config (accelerate launch), then torchrun resuming the run, on the CPU over gloo: the
    gradients are averaged across the processes, so both hold the same weights; the first process alone writes
    the adapter, loupe.json and the report."""
    data = write_export(tmp_path / "export", "dpo", prompts=8, seed=5)
    out = tmp_path / "adapter"
    result = launch(accelerate("ddp"), data, out, "--max-steps", "1", "--save-steps", "1")
    weights = agreed_weights(out)
    assert lora_weights(out).keys() == weights.keys()
    assert all(torch.equal(lora_weights(out)[name], weights[name]) for name in weights), "the first process's"
    first = json.loads((out / METADATA_FILE).read_text())
    assert first["training"]["processes"] == 2 and first["training"]["steps"] == 1
    assert result.stdout.count("Wrote the adapter") == 1 and result.stderr.count("Loading demo...") == 1

    (out / "adapter_config.json").unlink()  # as if killed after its first checkpoint
    launch(TORCHRUN, data, out, "--max-steps", "2", "--save-steps", "1", "--resume")
    weights = agreed_weights(out)
    assert any(name.endswith("lora_B.weight") and weights[name].any() for name in weights), "it trained"
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert metadata["training"]["resumed_from_step"] == 1 and metadata["training"]["steps"] == 2
    held_out = metadata["held_out"]
    assert held_out["before"] == first["held_out"]["before"], "measured once, before the first step"
    assert held_out["before"]["logp_margin"] != held_out["after"]["logp_margin"]


@pytest.mark.slow
def test_deepspeed_zero_2_and_3_train_the_adapter_ddp_trains(tmp_path: Path) -> None:
    """The shipped ZeRO configs on two CPU processes over gloo, from a checkpoint folder (ZeRO-3 loads it sharded):
    the processes agree, the first one's weights are the adapter's, and it is the adapter DDP trains from the same
    rows (bit for bit under ZeRO-2; ZeRO-3's sharded sums add in another order). The demo model, which ZeRO-3
    cannot shard, is refused with what to use instead."""
    data = write_export(tmp_path / "export", "dpo", prompts=8, seed=5)
    base = str(write_checkpoint(build_demo_model(), tmp_path / "base"))
    launch(accelerate("ddp"), data, tmp_path / "ddp", "--max-steps", "1", base=base)
    ddp = agreed_weights(tmp_path / "ddp")
    assert (tmp_path / "ddp/wrapper.txt").read_text() == "DistributedDataParallel"
    for stage in ("zero2", "zero3"):
        out = tmp_path / stage
        launch(accelerate(stage), data, out, "--max-steps", "1", base=base, environment=DEEPSPEED)
        assert (out / "wrapper.txt").read_text() == "DeepSpeedEngine", "DeepSpeed trained it, not DDP"
        weights = agreed_weights(out)
        assert all(torch.equal(lora_weights(out)[name], weights[name]) for name in weights), "the first process's"
        assert json.loads((out / METADATA_FILE).read_text())["training"]["processes"] == 2
        tolerance = 0 if stage == "zero2" else 1e-4
        assert all(torch.allclose(weights[name], ddp[name], rtol=0, atol=tolerance) for name in ddp), stage

    command = [*accelerate("zero3"), "-m", "models", "train", "--method", "dpo", "--data", str(data)]
    command += ["--base", "demo", "--out", str(tmp_path / "demo"), "--max-steps", "1"]
    refused = subprocess.run(command, cwd=REPO, env=DEEPSPEED, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "the demo model is built in each process" in refused.stderr
    assert "zero2.yaml" in refused.stderr and not (tmp_path / "demo").exists()
