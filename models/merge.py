"""Merge an adapter into its base model: a full checkpoint that transformers and vLLM load without peft.

    python -m models merge --adapter engineering-v2 --out merged/engineering-v2
    python -m models merge --adapter models/adapters/engineering-v2 --out DIR --base Qwen/Qwen2-VL-2B-Instruct

Served merged, an adapter costs nothing per token and needs no runtime LoRA (vLLM's --enable-lora); the price
is a whole copy of the weights per adapter. The merge is computed in float32, so the merged weights differ
from base + adapter by one rounding to --dtype at most. OUT receives the weights (safetensors), config.json,
generation_config.json, the processor's files, a model card (README.md) naming the base, the adapter and its
version, and `loupe.json` with the same for programs.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import HfArgumentParser

from models.adapters import METADATA_FILE, adapter_version
from models.checkpoint import DEMO, QWEN2_VL_FILES, ModelLoadError, load_model
from models.train import TrainingError, adapter_folder, read_metadata, served_base

log = logging.getLogger(__name__)

MERGED_DTYPES = ("bfloat16", "float16", "float32")


class MergeError(Exception):
    """The merge cannot be done; the message says what is wrong and what to do."""


@dataclass
class MergeSettings:
    adapter: str = field(metadata={"help": "The adapter: a folder, or a name in LOUPE_ADAPTERS_DIR."})
    out: Path = field(metadata={"help": "The folder to write the merged checkpoint into: new, or empty."})
    base: str | None = field(
        default=None,
        metadata={"help": "Base model. Default: the one the adapter was trained on (its loupe.json), or LOUPE_MODEL."},
    )
    dtype: str = field(
        default="bfloat16",
        metadata={"help": "Precision of the merged weights: bfloat16 (as Qwen-VL ships), float16, float32."},
    )


def merge(settings: MergeSettings) -> dict[str, Any]:
    """Write the merged checkpoint into OUT; returns what its loupe.json says."""
    if settings.dtype not in MERGED_DTYPES:
        raise MergeError(f"--dtype {settings.dtype}: choose one of {', '.join(MERGED_DTYPES)}.")
    if settings.out.exists() and (not settings.out.is_dir() or any(settings.out.iterdir())):
        raise MergeError(f"{settings.out} already exists and is not an empty folder. Choose a new --out.")
    try:
        folder = adapter_folder(settings.adapter)
        trained = read_metadata(folder)
        base = settings.base or trained.get("base") or served_base(None)
    except TrainingError as error:
        raise MergeError(str(error)) from None
    if trained.get("base") not in (None, base):
        raise MergeError(f"{folder} was trained on {trained['base']}, not on --base {base}.")
    try:
        loaded = load_model(base, device="cpu", dtype="float32")
    except ModelLoadError as error:
        raise MergeError(f"--base {base}: {error}") from None
    if loaded.is_demo and base != DEMO:
        raise MergeError(f"--base {base} cannot be loaded: {loaded.demo_reason}. Download it first.")
    log.info("Merging %s into %s...", folder, base)
    merged = PeftModel.from_pretrained(loaded.model, folder).merge_and_unload()
    merged = merged.to(getattr(torch, settings.dtype))
    merged.config.dtype = settings.dtype
    settings.out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(settings.out)
    loaded.processor.save_pretrained(settings.out)
    # The base's license goes with its weights: the demo's processor files are Qwen's, and a local base folder
    # has its own (a hub id's stays in the hub's cache, which its model card names).
    license = (QWEN2_VL_FILES if loaded.is_demo else Path(base)) / "LICENSE"
    if license.is_file():
        (settings.out / "LICENSE").write_bytes(license.read_bytes())
    metadata = {
        "base": base,
        "adapter": {"name": folder.name, "version": adapter_version(folder), "method": trained.get("method")},
        "dtype": settings.dtype,
        "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (settings.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    (settings.out / "README.md").write_text(model_card(settings.out.name, metadata), encoding="utf-8")
    return metadata


def model_card(name: str, metadata: dict[str, Any]) -> str:
    adapter = metadata["adapter"]
    return "\n".join(
        [
            f"# {name}",
            "",
            f"`{metadata['base']}` with the LoRA adapter `{adapter['name']}` (version {adapter['version']}, "
            f"{(adapter['method'] or 'unknown method').upper()}) merged into its weights, in {metadata['dtype']}, "
            f"by `python -m models merge` on {metadata['merged_at']}.",
            "",
            "It loads as the base model does, without peft: `AutoModelForImageTextToText.from_pretrained` with",
            "`AutoProcessor.from_pretrained`, or `vllm serve` on this folder (no `--enable-lora`). Its greedy answers",
            "are the base model's with the adapter, up to the rounding to the stored precision.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(MergeSettings, prog="python -m models merge", description=__doc__.split("\n\n")[0])
    (settings,) = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metadata = merge(settings)
    except MergeError as error:
        sys.exit(f"Error: {error}")
    adapter = metadata["adapter"]
    print(f"Wrote {metadata['base']} with {adapter['name']} ({adapter['version']}) merged to {settings.out}.")
