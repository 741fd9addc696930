"""The command-line arguments of `python -m models train` and `evaluate`: Loupe's own, in one place.

Everything TRL already knows how to configure (learning rate, batch size, steps, warm-up, logging, saving, seed,
DPO's beta...) is TRL's own `DPOConfig`/`KTOConfig`/`SFTConfig`, parsed with `TrlParser` under its own names
(models/train.py `parse_arguments`); this module holds only what Loupe adds: the export to read, the base model
and how it runs, the adapter to write or continue, the held-out share, and quantization. Training and evaluation
share `SharedArguments`, so the two read an export, fit its images and load a base model from the same flags.

Both commands take `--config FILE.yaml` as TRL's scripts do: its keys are these arguments' and TRL's names, and
the command line overrides them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Method = Literal["dpo", "kto", "sft"]
# vLLM serves LoRA ranks up to --max-lora-rank, which takes only these values (vllm/config/lora.py).
VllmRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]
BASE_HELP = (
    "Base model: hub id, local folder or 'demo'. Default: the model the app serves, LOUPE_MODEL, or the demo "
    "model where the app falls back to it."
)
DEFAULT_EVAL_FRACTION = 0.1  # a tenth of the prompts: enough pairs to see a margin move, few taken from training


@dataclass(kw_only=True)
class SharedArguments:
    """What training and evaluation both read: the export, the base model, its images, where it runs."""

    data: Path = field(metadata={"help": "Export folder (python -m chat export): a JSONL file and its images."})
    data_file: str | None = field(default=None, metadata={"help": "JSONL file in DATA, when it holds several."})
    base: str | None = field(default=None, metadata={"help": BASE_HELP})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Per-image pixel budget. Default: the app's on CUDA, 1280 visual tokens of the base model."},
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Smaller images are scaled up. Default: the model's."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda, mps, cpu), or a device such as cuda:1."})
    dtype: str = field(default="auto", metadata={"help": "auto: bfloat16 on CUDA, float32 elsewhere."})


@dataclass(kw_only=True)
class TrainArguments(SharedArguments):
    """Loupe's arguments of a training run; TRL's config for the method holds the rest."""

    method: Method = field(metadata={"help": "dpo: chosen/rejected pairs; kto: labelled answers; sft: good answers."})
    out: Path = field(metadata={"help": "Adapter folder to write, e.g. models/adapters/engineering-v2."})
    eval_fraction: float = field(
        default=DEFAULT_EVAL_FRACTION,
        metadata={"help": "Share of prompts held out to measure the adapter before and after (split by --seed)."},
    )
    from_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this adapter (a folder, or a name in LOUPE_ADAPTERS_DIR)."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from OUT's last checkpoint, if it has one."})
    quantization: Literal["none", "4bit"] = field(
        default="none",
        metadata={
            "help": "4bit: QLoRA, the base model's language model in 4-bit NF4 (bitsandbytes, double quantization, "
            "bf16 compute), about a third of bf16's memory for its weights. The adapter serves on the unquantized base."
        },
    )
    lora_rank: VllmRank = 16
    lora_alpha: int = 32
    lora_dropout: float = field(default=0.05, metadata={"help": "SFT only: TRL turns dropout off for DPO and KTO."})


@dataclass(kw_only=True)
class EvaluateArguments(SharedArguments):
    """Loupe's arguments of an evaluation of adapters on an export's held-out pairs."""

    adapter: list[str] = field(
        default_factory=list,
        metadata={"help": "Adapters to measure beside the base model: folder names in LOUPE_ADAPTERS_DIR."},
    )
    eval_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Share of prompts held out. Default: what the adapters trained on DATA held out, else "
            f"training's default ({DEFAULT_EVAL_FRACTION})."
        },
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the split. Default: as for --eval-fraction (training's: 42)."}
    )
    batch_size: int = field(default=2, metadata={"help": "Pairs per forward pass."})
    json: bool = field(default=False, metadata={"help": "Print the result as JSON (progress goes to stderr)."})


class ConfigError(Exception):
    """A --config file that cannot be read; the message says why."""


def read_config(argv: list[str]) -> dict[str, Any]:
    """The values of `--config FILE`, which is removed from argv, as TRL's scripts read it: a YAML mapping of
    argument names, whose `env` mapping sets environment variables."""
    if "--config" not in argv:
        return {}
    index = argv.index("--config")
    path = Path(argv[index + 1]) if index + 1 < len(argv) else None
    del argv[index : index + 2]
    if path is None or not path.is_file():
        raise ConfigError(f"--config {path or ''}: no such file.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path} is not YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a YAML mapping of argument names to values.")
    os.environ.update({key: str(value) for key, value in (values.pop("env", None) or {}).items()})
    return values
