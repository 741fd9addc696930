"""Benchmark adapter training (models/train.py): DPO throughput and peak memory on this machine.

Each variant trains the same DPO pairs, in its own process (so its peak memory is its own), and is timed
per optimizer step; the first step (lazy set-up, allocator growth) is left out of the rate.

  loupe           the trainer `python -m models train` builds: LoRA r=16 on the language model's
                  projections, gradient checkpointing, fp32 on CPU and bf16 on CUDA.
  loupe-no-gc     the same without gradient checkpointing: the speed it costs, the memory it saves.
  loupe-qlora     the same on a 4-bit NF4 base (--quantization 4bit, QLoRA): the memory the base's weights
                  no longer take, and what dequantizing them at every step costs. Only when asked for, with
                  bitsandbytes on the path (`make qlora`; PYTHONPATH=.venv-qlora).
  loupe-every-position
                  the same, scoring every position's 151,657 logits as TRL does where Triton is missing (a
                  CPU); Loupe scores only the answer's positions there (models/train.scores_only_completions).
  trl-defaults    the baseline: TRL's DPOTrainer with DPOConfig's defaults (bf16 autocast, gradient
                  checkpointing) and LoRA on every linear layer, vision tower included, the usual recipe.

Parts (select with --parts):
  demo   the demo model on CPU.
  full   a full-size Qwen2-VL-2B (the vendored real config, random weights), saved as a checkpoint folder
         and loaded through `--base FOLDER` as a real model would be: on CUDA in bf16 when a GPU is present
         (--full-devices adds cpu, at minutes per step).

Run from the repository root:
    .venv/bin/python -m bench.bench_train
    .venv/bin/python -m bench.bench_train --parts full --steps 10 --image-size 1024x768
Other processes may share the machine, so compare numbers within one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import DPOConfig, DPOTrainer

from bench.bench_chat import GiB, Report, build_random_qwen2_vl_2b, print_machine
from models import train
from models.arguments import TrainArguments
from models.checkpoint import QWEN2_VL_FILES, load_model, load_processor
from models.train import base_budget, build_trainer, load_training_data, parse_arguments, training_dtype
from tests.helpers.budgets import GPU_BUDGET
from tests.helpers.datasets import write_export

PARTS = ("demo", "full")
VARIANTS = ("loupe", "loupe-no-gc", "loupe-qlora", "loupe-every-position", "trl-defaults")
ASKED_FOR = ("loupe-qlora",)  # not run by default: it needs bitsandbytes, which the environment leaves out


@dataclass
class BenchSettings:
    parts: list[str]
    variants: list[str]
    steps: int
    batch_size: int
    image_size: tuple[int, int]
    answer_words: int
    full_devices: list[str]


def parse_args(argv: list[str] | None = None) -> BenchSettings:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    default_variants = ",".join(variant for variant in VARIANTS if variant not in ASKED_FOR)
    parser.add_argument("--variants", default=default_variants, help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per variant (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step (no gradient accumulation)")
    parser.add_argument("--image-size", default="320x240", help="WxH of each row's image, fitted to the budget")
    parser.add_argument("--answer-words", type=int, default=40, help="words in each chosen and rejected answer")
    parser.add_argument("--full-devices", default="cuda", help="full: devices to train on (cuda needs a GPU)")
    args = parser.parse_args(argv)
    parts, variants = [p for p in args.parts.split(",") if p], [v for v in args.variants.split(",") if v]
    if unknown := set(parts) - set(PARTS) | set(variants) - set(VARIANTS):
        parser.error(f"unknown parts or variants {sorted(unknown)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not timed")
    width, height = (int(side) for side in args.image_size.split("x"))
    return BenchSettings(
        parts=parts,
        variants=variants,
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=(width, height),
        answer_words=args.answer_words,
        full_devices=[device for device in args.full_devices.split(",") if device],
    )


class StepClock(TrainerCallback):
    """When each optimizer step ends; on CUDA after the GPU has finished it."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


@dataclass
class TrainResult:
    seconds_per_step: list[float]  # each step after the first
    samples_per_step: int
    trainable_params: int
    total_params: int
    peak_memory_gib: float
    memory_kind: str

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_step / statistics.median(self.seconds_per_step)


def baseline_trainer(arguments: TrainArguments, steps: int, batch_size: int, train_dataset: Dataset) -> DPOTrainer:
    """TRL's DPOTrainer as its documentation sets one up for a vision-language model."""
    dtype = training_dtype(arguments.device, arguments.dtype)
    loaded = load_model(arguments.base, device=arguments.device, dtype=dtype)
    config = DPOConfig(
        output_dir=str(arguments.out),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        max_length=None,  # the one default no VLM can keep: 1024 tokens would cut image tokens
        use_cpu=loaded.device.type == "cpu",
        save_strategy="no",
        report_to="none",
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    return DPOTrainer(
        loaded.model, args=config, train_dataset=train_dataset, processing_class=loaded.processor, peft_config=lora
    )


def train_variant(variant: str, base: str, device: str, data: Path, bench: BenchSettings) -> TrainResult:
    """Runs in a fresh process: build the variant's trainer on `data`, train, time each step."""
    if variant == "loupe-every-position":
        train.trl_utils._use_triton = train.TRITON_DECIDES
    with tempfile.TemporaryDirectory(prefix="loupe-bench-train-") as out:
        command = ["--method", "dpo", "--data", str(data), "--out", out, "--base", base, "--device", device]
        command += ["--per-device-train-batch-size", str(bench.batch_size), "--gradient-accumulation-steps", "1"]
        command += ["--max-steps", str(bench.steps), "--eval-fraction", "0"]
        command += ["--save-steps", str(10**9), "--logging-steps", str(10**9)]  # a checkpoint after the last step only
        command += ["--activation-checkpointing", str(variant != "loupe-no-gc")]
        command += ["--quantization", "4bit" if variant == "loupe-qlora" else "none"]
        arguments, config = parse_arguments(command)
        data = load_training_data(arguments, config.seed, base_budget(arguments))
        if variant == "trl-defaults":
            trainer = baseline_trainer(arguments, bench.steps, bench.batch_size, data.train)
        else:
            trainer = build_trainer(arguments, config, data, resuming=False)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    if torch.cuda.is_available() and device.startswith("cuda"):
        peak, kind = torch.cuda.max_memory_allocated() / GiB, "CUDA max_memory_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, "process ru_maxrss"
    parameters = list(trainer.model.parameters())
    return TrainResult(
        seconds_per_step=[end - start for start, end in zip(clock.ends, clock.ends[1:], strict=False)],
        samples_per_step=bench.batch_size,
        trainable_params=sum(p.numel() for p in parameters if p.requires_grad),
        total_params=sum(p.numel() for p in parameters),
        peak_memory_gib=peak,
        memory_kind=kind,
    )


def bench_variants(part: str, base: str, device: str, data: Path, bench: BenchSettings, report: Report) -> None:
    for variant in bench.variants:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(train_variant, variant, base, device, data, bench).result()
        steps = " ".join(f"{seconds:.2f}" for seconds in result.seconds_per_step)
        report.add(
            part,
            f"{variant}: samples/s",
            f"{result.samples_per_s:.3f}",
            f"median of steps 2-{bench.steps}, {result.samples_per_step} pairs each; seconds per step {steps}",
        )
        report.add(part, f"{variant}: peak memory", f"{result.peak_memory_gib:.2f} GiB", result.memory_kind)
        report.add(
            part,
            f"{variant}: trainable parameters",
            f"{result.trainable_params / 1e6:.2f}M",
            f"of {result.total_params / 1e6:.0f}M",
        )


def write_bench_export(folder: Path, bench: BenchSettings) -> Path:
    """Enough DPO pairs for every step, one image each (fitted to the default budget)."""
    data = write_export(
        folder, "dpo", bench.steps * bench.batch_size, 0, bench.image_size, answer_words=bench.answer_words
    )
    tokens = GPU_BUDGET.tokens(*bench.image_size)  # training's budget, the demo model's geometry
    print(f"  data: {bench.steps * bench.batch_size} pairs, {bench.image_size} images ({tokens} visual tokens)")
    return data


def bench_demo(bench: BenchSettings, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="loupe-bench-data-") as folder:
        data = write_bench_export(Path(folder) / "export", bench)
        bench_variants("demo cpu", "demo", "cpu", data, bench, report)


def bench_full(bench: BenchSettings, report: Report) -> None:
    """Qwen2-VL-2B with random weights, written as a checkpoint folder and trained from it."""
    devices = [device for device in bench.full_devices if device != "cuda" or torch.cuda.is_available()]
    if "cuda" in bench.full_devices and not torch.cuda.is_available():
        report.add("full", "CUDA run", "no GPU", "torch.cuda.is_available() is False")
    if not devices:
        return
    with tempfile.TemporaryDirectory(prefix="loupe-bench-2b-") as folder:
        checkpoint = Path(folder) / "qwen2-vl-2b-random"
        started = time.perf_counter()
        build_random_qwen2_vl_2b("cpu", torch.bfloat16).save_pretrained(checkpoint)
        load_processor(QWEN2_VL_FILES).save_pretrained(checkpoint)
        report.add("full", "random 2B checkpoint written", f"{time.perf_counter() - started:.0f} s", "bfloat16")
        data = write_bench_export(Path(folder) / "export", bench)
        for device in devices:
            bench_variants(f"full {device}", str(checkpoint), device, data, bench, report)


def main(argv: list[str] | None = None) -> None:
    bench = parse_args(argv)
    print_machine()
    report = Report()
    for part in bench.parts:
        started = time.perf_counter()
        {"demo": bench_demo, "full": bench_full}[part](bench, report)
        print(f"[{part}] done in {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print(report.table())
    print(f"\nload average at end: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
