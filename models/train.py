"""Train a LoRA adapter for a Qwen-VL model on Loupe's preference exports, with TRL (DPO, KTO or SFT).

    python -m models train --method dpo --data exports/2026-11 --out models/adapters/engineering-v2
    python -m models train --method kto --data exports/kto --out models/adapters/kto-v1 --max-steps 200
    python -m models train --method dpo --data exports/2026-12 --out models/adapters/engineering-v3 \
        --from-adapter engineering-v2
    python -m models train ... --resume      # continue an interrupted run from its last checkpoint

DATA is a folder written by `python -m chat export --format trl-dpo` (or `trl-kto`, `trl-sft`): one JSONL
file of rows in TRL's conversational vision format, and the images the rows name, relative to the folder.
SFT trains on the answers users preferred: a `trl-sft` export's, the `chosen` answer of DPO pairs, or the
completions of KTO rows labelled desirable.

LoRA goes on the language model's attention and MLP projections only, at a rank vLLM can serve, so the
adapter trained here is the adapter vLLM serves; the vision tower stays frozen. OUT receives the adapter
(adapter_config.json, adapter_model.safetensors), `loupe.json` (what it was trained from, how, and how
it did), `report.md` with plots, and `checkpoints/` to resume from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import random
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import BitsAndBytesConfig, HfArgumentParser, ProcessorMixin, TrainingArguments
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.trainer import utils as trl_utils

from models.adapters import METADATA_FILE, adapter_version
from models.checkpoint import (
    DEMO,
    LoadedModel,
    ModelLoadError,
    load_model,
    load_processor,
    pick_device,
    processor_source,
    why_demo,
)
from models.control_tokens import control_tokens
from models.doubts import Plan, end_warnings, plan_warnings
from models.images import ImageBudget, ImageRejected, fit_to_budget, open_image
from models.prompt_key import prompt_key
from models.report import write_report
from models.settings import ModelSettings

log = logging.getLogger(__name__)

Method = Literal["dpo", "kto", "sft"]
# vLLM serves LoRA ranks up to --max-lora-rank, which takes only these values (vllm/config/lora.py).
VllmRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]
# The language model's projections; `visual` excludes the vision tower and merger, which vLLM cannot adapt.
LANGUAGE_MODEL_PROJECTIONS = r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
# QLoRA's base model (Dettmers et al. 2023): 4-bit NormalFloat weights, their quantization constants quantized
# again (about 0.4 bits a weight fewer), computed in bf16. The vision tower and the LM head stay as they are: the
# tower is small and sees every pixel, and the head scores every token of the vocabulary.
QLORA = {
    "none": None,
    "4bit": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["model.visual", "lm_head"],  # module paths, from the start (Qwen-VL's)
    ),
}
# LoRA learning rates: TRL's recommendations for LoRA preference tuning (DPO, KTO) and LoRA SFT.
DEFAULT_LEARNING_RATES = {"dpo": 5e-6, "kto": 5e-6, "sft": 2e-4}
# Columns of a row in TRL's format, by the kind of row; everything else (rule, thread, user...) is dropped.
# A KTO row is told from an SFT row by its label: the kinds are tried in this order.
COLUMNS = {
    "dpo": ("images", "prompt", "chosen", "rejected"),
    "kto": ("images", "prompt", "completion", "label"),
    "sft": ("images", "prompt", "completion"),
}
ROW_KINDS = {
    "dpo": "a DPO pair (chosen, rejected)",
    "kto": "a KTO row (completion, label)",
    "sft": "an SFT row (completion)",
}
# What each method reads, in order of preference, when DATA holds several JSONL files.
DATA_FILES = {
    "dpo": ("trl-dpo.jsonl",),
    "kto": ("trl-kto.jsonl",),
    "sft": ("trl-sft.jsonl", "trl-dpo.jsonl", "trl-kto.jsonl"),
}
CHECKPOINTS = "checkpoints"
RUN_FILE = "run.json"  # in CHECKPOINTS: what the interrupted run trained on, checked on --resume
BASE_HELP = (
    "Base model: hub id, local folder or 'demo'. Default: the model the app serves, LOUPE_MODEL, or the demo "
    "model where the app falls back to it."
)
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint, so only complete checkpoints have it


class TrainingError(Exception):
    """Training cannot start or finish; the message says what is wrong and what to do."""


class RowKindError(TrainingError):
    """A row of the other kind (a KTO row where DPO pairs are read, or the reverse): the export is of the
    wrong format. `where` (file and line) and `kind` let a command that reads rows say what it needs instead."""

    def __init__(self, message: str, where: str, kind: Method) -> None:
        super().__init__(message)
        self.where, self.kind = where, kind


@dataclass
class TrainSettings:
    method: Method = field(metadata={"help": "dpo: chosen/rejected pairs; kto: labelled answers; sft: good answers."})
    data: Path = field(metadata={"help": "Export folder (python -m chat export): a JSONL file and its images."})
    out: Path = field(metadata={"help": "Adapter folder to write, e.g. models/adapters/engineering-v2."})
    base: str | None = field(
        default=None,
        metadata={"help": BASE_HELP},
    )
    data_file: str | None = field(default=None, metadata={"help": "JSONL file in DATA, when it holds several."})
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of prompts held out to measure the adapter before and after."}
    )
    from_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this adapter (a folder, or a name in LOUPE_ADAPTERS_DIR)."}
    )
    resume: bool = field(default=False, metadata={"help": "Continue from OUT's last checkpoint, if it has one."})
    learning_rate: float | None = field(default=None, metadata={"help": "Default: 5e-6 for DPO and KTO, 2e-4 for SFT."})
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO: how far the adapter may move from the reference."})
    batch_size: int = field(default=2, metadata={"help": "Rows per device and step (KTO needs at least 2)."})
    gradient_accumulation: int = field(default=4, metadata={"help": "Batches per optimizer step."})
    epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides --epochs when positive."})
    warmup: float = field(default=0.1, metadata={"help": "Warm-up: a share of the steps (below 1) or steps."})
    lora_rank: VllmRank = 16
    lora_alpha: int = 32
    lora_dropout: float = field(default=0.05, metadata={"help": "SFT only: TRL turns dropout off for DPO and KTO."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Per-image pixel budget. Default: the app's on CUDA, 1280 visual tokens of the base model."},
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Smaller images are scaled up. Default: the model's."}
    )
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Less memory, slower steps."})
    quantization: Literal["none", "4bit"] = field(
        default="none",
        metadata={
            "help": "4bit: QLoRA, the base model's language model in 4-bit NF4 (bitsandbytes, double quantization, "
            "bf16 compute), about a third of bf16's memory for its weights. The adapter serves on the unquantized base."
        },
    )
    data_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes decoding images and building batches ahead of the model. Default: 4 on CUDA, "
            "where the GPU would otherwise wait for them, else 0."
        },
    )
    seed: int = 42
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    device: str = field(default="auto", metadata={"help": "auto (cuda, mps, cpu), or a device such as cuda:1."})
    dtype: str = field(default="auto", metadata={"help": "auto: bfloat16 on CUDA, float32 elsewhere."})


# Data ----------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    train: Dataset
    held_out: Dataset | None
    budget: ImageBudget  # the rows' images are fitted to it as they are read
    # sha256 of the data file, and counts: which data an adapter was trained on, in loupe.json.
    fingerprint: dict[str, Any]


def load_training_data(settings: TrainSettings, budget: ImageBudget) -> TrainingData:
    path = find_data_file(settings.data, settings.method, settings.data_file)
    rows = read_rows(path, settings.method, settings.data)
    train_rows, held_out_rows = split_held_out(rows, settings.eval_fraction, settings.seed)
    if not train_rows:
        raise TrainingError(f"{path}: every row was held out; lower --eval-fraction (now {settings.eval_fraction}).")
    fingerprint = data_fingerprint(path, rows, train_rows, held_out_rows)
    if settings.method == "kto":
        fingerprint["desirable_rows"] = sum(row["label"] for row in rows)
    open_images = partial(image_dataset, folder=settings.data, budget=budget)
    held_out = open_images(held_out_rows) if held_out_rows else None
    return TrainingData(open_images(train_rows), held_out, budget, fingerprint)


def data_fingerprint(path: Path, rows: list[dict], train_rows: list[dict], held_out_rows: list[dict]) -> dict[str, Any]:
    """Which data a run used, for loupe.json: the file, its sha256, and how its rows were split."""
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "train_rows": len(train_rows),
        "held_out_rows": len(held_out_rows),
        "images": len({image for row in rows for image in row["images"]}),
    }


def find_data_file(folder: Path, method: Method, data_file: str | None) -> Path:
    """The JSONL file in `folder` that `method` reads: `data_file` (--data-file), else by name, else the only one."""
    export_hint = f"Export one with `python -m chat export --format trl-{method} --out DIR`."
    if not folder.is_dir():
        raise TrainingError(f"--data {folder} is not a folder. {export_hint}")
    if data_file:
        if not (folder / data_file).is_file():
            raise TrainingError(f"--data-file {data_file} is not a file in {folder}.")
        return folder / data_file
    if named := [folder / name for name in DATA_FILES[method] if (folder / name).is_file()]:
        return named[0]
    candidates = sorted(folder.glob("*.jsonl"))
    if not candidates:
        raise TrainingError(f"{folder} holds no .jsonl file of training rows. {export_hint}")
    if len(candidates) > 1:
        names = ", ".join(path.name for path in candidates)
        raise TrainingError(f"{folder} holds several JSONL files ({names}); choose one with --data-file.")
    return candidates[0]


def read_rows(path: Path, method: Method, folder: Path) -> list[dict[str, Any]]:
    """The file's rows as `method` trains on them, checked: the right kind, and every image present in `folder`."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainingError(f"{where} is not JSON ({error}). Was it cut short? Export it again.") from None
            if (training_row := as_training_row(row, method, where)) is not None:
                check_images(training_row, folder, where)
                check_plain_text(training_row, where)
                rows.append(training_row)
    if not rows:
        what = "rows labelled desirable" if method == "sft" else "rows"
        raise TrainingError(f"{path} holds no {what}. Rate more answers in the app, then export again.")
    return rows


def as_training_row(row: Any, method: Method, where: str) -> dict[str, Any] | None:
    """The columns `method` needs; None for a KTO row that SFT leaves out (an undesirable answer)."""
    kind = row_kind(row, where)
    # SFT: the answers users preferred; an SFT row's, a pair's chosen one, or a KTO answer labelled desirable.
    if method == "sft":
        if kind == "kto" and not row["label"]:
            return None
        completion = row["chosen"] if kind == "dpo" else row["completion"]
        return {"images": row["images"], "prompt": row["prompt"], "completion": completion}
    if kind != method:
        raise RowKindError(
            f"{where} is {ROW_KINDS[kind]}, not {ROW_KINDS[method]} as --method {method} needs. "
            f"Train it with --method {kind}, or export with `python -m chat export --format trl-{method}`.",
            where,
            kind,
        )
    return {column: row[column] for column in COLUMNS[kind]}


def row_kind(row: Any, where: str) -> Method:
    if isinstance(row, dict):
        if kind := next((kind for kind, columns in COLUMNS.items() if set(columns) <= row.keys()), None):
            return kind
        if "conversations" in row:
            raise TrainingError(f"{where} is in LLaMA-Factory's format. Export with --format trl-dpo or trl-kto.")
    needs = " or ".join(map(str, COLUMNS.values()))
    raise TrainingError(f"{where} is not a TRL row: it needs the columns {needs}.")


def check_images(row: dict[str, Any], folder: Path, where: str) -> None:
    placeholders = sum(part.get("type") == "image" for message in row["prompt"] for part in message["content"])
    if placeholders != len(row["images"]):
        raise TrainingError(f"{where}: the prompt shows {placeholders} images but the row lists {len(row['images'])}.")
    if missing := [image for image in row["images"] if not (folder / image).is_file()]:
        raise TrainingError(f"{where}: image {missing[0]} is not in {folder}. Copy the whole export folder.")


def check_plain_text(row: dict[str, Any], where: str) -> None:
    """Refuse text that Qwen's tokenizer reads as chat-template control tokens (models/control_tokens.py): an
    image placeholder that no image fills stops the run midway, and a forged <|im_end|><|im_start|>assistant
    trains on turns nobody had. The export writes such text as plain text; a file written otherwise is refused."""
    for column in ("prompt", "chosen", "rejected", "completion"):  # the columns of messages
        texts = [part.get("text") or "" for message in row.get(column, []) for part in message["content"]]
        if tokens := [token for text in texts for token in control_tokens(text)]:
            raise TrainingError(
                f"{where}: the {column} carries {tokens[0]}, which the chat template would read as a control token, "
                "not as text. Export the data again with `python -m chat export`, which writes such text as plain text."
            )


def split_held_out(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts: one question can give several rows, and none of its rows may be trained on."""
    prompts = sorted({row_prompt(row) for row in rows})
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: math.floor(len(prompts) * fraction)])
    train = [row for row in rows if row_prompt(row) not in held_out]
    return train, [row for row in rows if row_prompt(row) in held_out]


def row_prompt(row: dict[str, Any]) -> str:
    """The row's prompt as the export's rule 8 tells prompts apart: its texts, and its images by content (an
    export names each image file by its sha256)."""
    texts = [part["text"] for message in row["prompt"] for part in message["content"] if part.get("type") == "text"]
    return prompt_key(texts, [Path(image).stem for image in row["images"]])


def image_budget(processor: ProcessorMixin, min_pixels: int | None, max_pixels: int | None) -> ImageBudget:
    """Training's (and evaluation's) image budget: the app's on CUDA, whatever device trains, so that an adapter
    learns on images as a GPU server shows them (1280 visual tokens by default)."""
    return ImageBudget.of(processor, "cuda", min_pixels, max_pixels)


def base_budget(settings: TrainSettings) -> ImageBudget:
    """The image budget of --base, from its processor files alone: the data is read, and checked, before the
    model loads."""
    check_loadable(settings.base)
    try:
        processor = load_processor(processor_source(settings.base))
    except (OSError, ValueError, KeyError) as error:
        raise TrainingError(f"--base {settings.base}: Could not load the model's processor files: {error}") from None
    return image_budget(processor, settings.min_pixels, settings.max_pixels)


def image_dataset(rows: list[dict[str, Any]], folder: Path, budget: ImageBudget) -> Dataset:
    """The rows as a dataset whose images open, fitted to the budget, only when a batch is read (fit_images)."""
    open_images = partial(fit_images, folder=folder, budget=budget)
    return Dataset.from_list(rows).with_transform(open_images)


def fit_images(batch: dict[str, list], folder: Path, budget: ImageBudget) -> dict[str, list]:
    """Open a batch's images when they are used, as the app opens uploads: the export holds them as uploaded,
    and a dataset's worth of decoded images would not fit in memory."""
    batch["images"] = [[fit_image(folder / image, budget) for image in row] for row in batch["images"]]
    return batch


def fit_image(path: Path, budget: ImageBudget) -> Image.Image:
    """Upright, RGB and fitted to the pixel budget, like the images the model saw in the chat."""
    try:
        return fit_to_budget(open_image(path, max_megapixels=math.inf, budget=budget), budget)
    except ImageRejected as error:
        raise TrainingError(f"{path} cannot be used as an image ({error}). Remove its rows, or export again.") from None


# Model ---------------------------------------------------------------------------------------------


def load_policy(settings: TrainSettings) -> tuple[torch.nn.Module, ProcessorMixin, LoraConfig | None]:
    """The base model, with the adapter to continue or the config of a new one (TRL creates it)."""
    loaded = load_base(settings.base, settings.device, settings.dtype, settings.quantization)
    if settings.from_adapter is None:
        lora = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=LANGUAGE_MODEL_PROJECTIONS,
            task_type="CAUSAL_LM",
        )
        return loaded.model, loaded.processor, lora
    adapter = adapter_folder(settings.from_adapter)
    trained_on = read_metadata(adapter).get("base", settings.base)
    if trained_on != settings.base:
        raise TrainingError(f"--from-adapter {adapter} was trained on {trained_on}, not on --base {settings.base}.")
    # TRL copies the loaded adapter to a frozen "ref" adapter: DPO and KTO measure against where it started.
    return PeftModel.from_pretrained(loaded.model, adapter, is_trainable=True), loaded.processor, None


def served_base(base: str | None) -> str:
    """--base, or where it is not given the model the app serves: LOUPE_MODEL, or the demo model where the app
    falls back to it (models/checkpoint.py), so that the adapter fits the app it was trained from. Said in the
    log: such an adapter serves only the demo model. A --base that is given never falls back (load_base)."""
    if base is not None:
        return base
    model = ModelSettings().model
    try:
        reason = why_demo(model)
    except ModelLoadError as error:
        raise TrainingError(f"LOUPE_MODEL {model}: {error}") from None
    if reason is None or model == DEMO:
        return model
    log.warning("The app serves the demo model because %s: it is the base model here (--base names another).", reason)
    return DEMO


def load_base(base: str, device: str, dtype: str, quantization: str = "none") -> LoadedModel:
    """The base model (--base) in the precision training uses, quantized for QLoRA (--quantization 4bit); never
    the demo model in place of another."""
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            f"--quantization {quantization} needs bitsandbytes, which the app's environment leaves out (importing it "
            "costs every process seconds): run `make qlora`, then this command with PYTHONPATH=.venv-qlora."
        )
    check_loadable(base)
    try:
        loaded = load_model(base, device=device, dtype=training_dtype(device, dtype), quantization=QLORA[quantization])
    except ModelLoadError as error:
        raise TrainingError(f"--base {base}: {error}") from None
    if loaded.is_demo:
        log.warning("The base model is the DEMO model (random weights): adapters trained on it fit only it.")
    return loaded


def check_loadable(base: str) -> None:
    """A --base other than the demo model is on this machine or on a reachable hub: never the demo model in its
    place."""
    try:
        reason = None if base == DEMO else why_demo(base)
    except ModelLoadError as error:
        raise TrainingError(f"--base {base}: {error}") from None
    if reason is not None:
        raise TrainingError(
            f"--base {base} cannot be loaded: {reason}. Download it first "
            "(`huggingface-cli download <id>` or a local folder), or use the demo model with --base demo."
        )


def quantized_layers(model: torch.nn.Module) -> int:
    """The layers held in 4 bits (bitsandbytes keeps a quantization state with each one's weight; a LoRA layer
    shows its base layer's weight as its own, so weights are counted): 0 but under QLoRA."""
    weights = (getattr(module, "weight", None) for module in model.modules())
    return len({id(weight) for weight in weights if hasattr(weight, "quant_state")})


def training_dtype(device: str, dtype: str) -> str:
    """bf16 on CUDA, under mixed precision; float32 elsewhere, even on a CPU that serves in bf16: the
    optimizer's small LoRA updates need fp32 weights, and CPU autocast to bf16 is slow."""
    if dtype != "auto" or pick_device(device).type == "cuda":
        return dtype
    return "float32"


def adapter_folder(name: str) -> Path:
    folder = Path(name) if Path(name).is_dir() else ModelSettings().adapters_dir / name
    if not (folder / "adapter_config.json").is_file():
        raise TrainingError(f"--from-adapter {name}: no adapter there (no adapter_config.json in {folder}).")
    return folder


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# Training ------------------------------------------------------------------------------------------


def scores_only_completions(device: torch.device) -> bool:
    """Whether TRL's fused LM head scores only the positions with a label (the answer's), or every position.

    TRL scores every position where Triton is missing, so that the tiles keep one shape for compilers that
    recompile on each new one (Neuron). A CPU compiles nothing, and there the prompt's positions (four fifths of a
    short answer's row) cost four fifths of a step: all 151,657 logits each, forward and backward. Scored only
    where labelled, a DPO step on the demo model takes a fifth of the time; the log-probabilities are the same.
    """
    return device.type == "cpu" or TRITON_DECIDES(device)


TRITON_DECIDES = trl_utils._use_triton  # TRL's own answer: the positions are compacted wherever Triton runs
trl_utils._use_triton = scores_only_completions  # read by add_fused_lm_head alone; the kernels keep their own

TRAINERS = {"dpo": (DPOTrainer, DPOConfig), "kto": (KTOTrainer, KTOConfig), "sft": (SFTTrainer, SFTConfig)}


def trainer_arguments(settings: TrainSettings, model: torch.nn.Module, measure_before: bool) -> TrainingArguments:
    """TRL's config for the run. `measure_before`: evaluate the held-out rows as training begins, on the model
    as the run prepared it (wrapped for data-parallel training where it runs on several processes)."""
    config_class = TRAINERS[settings.method][1]
    method_arguments = {"beta": settings.beta} if settings.method in ("dpo", "kto") else {}
    return config_class(
        output_dir=str(settings.out / CHECKPOINTS),
        learning_rate=settings.learning_rate or DEFAULT_LEARNING_RATES[settings.method],
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        warmup_steps=settings.warmup,
        activation_checkpointing=settings.gradient_checkpointing,  # transformers' new name for it
        dataloader_num_workers=data_workers(settings, model),
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_on_start=measure_before,
        # Every LoRA weight has a gradient at every step: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
        # Image tokens must never be cut: TRL's default max_length (1024) would, and then fails.
        max_length=None,
        # Mixed precision only where the model runs in bf16 (CUDA); on CPU, autocast to bf16 is slow and lossy.
        bf16=model.dtype == torch.bfloat16,
        use_cpu=model.device.type == "cpu",
        remove_unused_columns=False,  # the rows hold exactly the trainer's columns; images load lazily
        report_to="none",
        **method_arguments,
    )


def data_workers(settings: TrainSettings, model: torch.nn.Module) -> int:
    """By default 4 on CUDA, where the GPU steps faster than one core decodes and fits a batch of photos;
    none on a CPU, whose cores are all training."""
    if settings.data_workers is not None:
        return settings.data_workers
    return 4 if model.device.type == "cuda" else 0


def build_trainer(settings: TrainSettings, data: TrainingData, resuming: bool) -> DPOTrainer | KTOTrainer | SFTTrainer:
    """TRL's trainer for the method, on the base model with a new LoRA adapter or the one to continue. A resumed
    run measured its held-out rows when it first began: its checkpoint's log keeps them."""
    log.info("Loading %s...", settings.base)
    model, processor, lora = load_policy(settings)
    trainer_class, _ = TRAINERS[settings.method]
    return trainer_class(
        model=model,
        args=trainer_arguments(settings, model, measure_before=data.held_out is not None and not resuming),
        train_dataset=data.train,
        eval_dataset=data.held_out,
        processing_class=processor,
        peft_config=lora,
    )


def train(settings: TrainSettings) -> dict[str, Any]:
    """Train, then write the adapter, loupe.json and the report into OUT. Returns loupe.json's content.

    Launched on several processes (`torchrun`, `accelerate launch`), each process trains on its share of every
    step's rows and the gradients are averaged, so every process holds the same adapter; the first process
    alone writes OUT, and the others wait for it."""
    settings = replace(settings, base=served_base(settings.base))
    processes = launched_processes(settings.device)
    checkpoint = prepare_output_folder(settings)
    data = load_training_data(settings, base_budget(settings))
    run = {
        "base": settings.base,
        "method": settings.method,
        "data_sha256": data.fingerprint["sha256"],
        "quantization": settings.quantization,
        "images": asdict(data.budget),
    }
    with removed_on_failure(settings.out):
        check_same_run(settings.out / CHECKPOINTS, run, checkpoint, write=processes.is_main_process)
        trainer = build_trainer(settings, data, resuming=checkpoint is not None)
        log.info(
            "%s on %d rows (%d held out), on %s (%d process%s)",
            settings.method.upper(),
            data.fingerprint["train_rows"],
            data.fingerprint["held_out_rows"],
            trainer.args.device,
            processes.num_processes,
            "" if processes.num_processes == 1 else "es",
        )
        doubts = plan_warnings(run_plan(trainer, data))
        for _, message in doubts:
            log.warning("This run cannot learn much: %s.", message)
        if checkpoint:
            log.info("Resuming from %s", checkpoint)
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    after = held_out_metrics(trainer.evaluate()) if data.held_out else None
    before = held_out_before(trainer.state.log_history) if data.held_out else None
    last_logged = next((entry for entry in reversed(trainer.state.log_history) if "loss" in entry), {})
    doubts += end_warnings(settings.method, last_logged.get("loss"))

    lora_config = trainer.model.peft_config["default"]
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every process: FSDP gathers its shards
    if processes.is_main_process:  # the adapter alone, not TRL's frozen "ref" copy
        trainer.model.save_pretrained(settings.out, selected_adapters=["default"], state_dict=weights)
    processes.wait_for_everyone()  # the adapter's version is its weights' digest
    metadata = {
        "base": settings.base,
        "method": settings.method,
        "version": adapter_version(settings.out),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_adapter": lineage(settings.from_adapter),
        "data": data.fingerprint,
        "images": asdict(data.budget),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()},
        "lora": {key: getattr(lora_config, key) for key in ("r", "lora_alpha", "lora_dropout", "target_modules")},
        "training": {
            "steps": trainer.state.global_step,
            "processes": processes.num_processes,
            "quantized_layers": quantized_layers(trainer.model),
            "resumed_from_step": int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None,
            **result.metrics,
            "last_logged": last_logged,
        },
        "held_out": {"rows": data.fingerprint["held_out_rows"], "before": before, "after": after} if before else None,
        "warnings": [{"code": code, "message": message} for code, message in doubts],
        "versions": {library: version(library) for library in ("torch", "transformers", "trl", "peft", "datasets")},
    }
    if processes.is_main_process:
        # default=sorted: peft keeps lists of target modules as sets.
        text = json.dumps(metadata, indent=2, ensure_ascii=False, default=sorted) + "\n"
        (settings.out / METADATA_FILE).write_text(text)
        write_report(settings.out, metadata, trainer.state.log_history)
    processes.wait_for_everyone()
    return metadata


def launched_processes(device: str) -> PartialState:
    """This process among those a launcher started (torchrun, accelerate launch), or alone, as the trainer counts
    them: on a CPU they meet over gloo."""
    return PartialState(cpu=pick_device(device).type == "cpu")


def run_plan(trainer: DPOTrainer | KTOTrainer | SFTTrainer, data: TrainingData) -> Plan:
    """The run's steps and warm-up as the trainer will count them (its own arithmetic, not a copy of it)."""
    args = trainer.args
    steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    return Plan(
        train_rows=data.fingerprint["train_rows"],
        held_out_rows=data.fingerprint["held_out_rows"],
        rows_per_step=args.per_device_train_batch_size * args.gradient_accumulation_steps,
        steps=steps,
        warmup_steps=args.get_warmup_steps(steps),
    )


@contextmanager
def removed_on_failure(out: Path) -> Iterator[None]:
    """Remove the folders the run made if it fails before a checkpoint is complete: a run that stops loading
    the base model, or in its first steps, leaves its error and no empty OUT or OUT/checkpoints behind."""
    made = [folder for folder in (out, out / CHECKPOINTS) if not folder.exists()]
    try:
        yield
    except BaseException:
        if made and last_complete_checkpoint(out / CHECKPOINTS) is None:
            shutil.rmtree(made[0], ignore_errors=True)
        raise


def prepare_output_folder(settings: TrainSettings) -> Path | None:
    """The checkpoint to resume from, if any; refuses to overwrite an adapter or an unfinished run by accident."""
    out, checkpoints = settings.out, settings.out / CHECKPOINTS
    checkpoint = last_complete_checkpoint(checkpoints)
    has_adapter = (out / "adapter_config.json").is_file()
    if settings.resume:
        if checkpoint is None and has_adapter:
            raise TrainingError(f"{out} has no checkpoint to resume. Continue it with --from-adapter {out} --out NEW.")
        if checkpoint is None:
            log.info("No checkpoint in %s yet: starting from the beginning.", checkpoints)
        return checkpoint
    if has_adapter:
        raise TrainingError(f"{out} already holds an adapter. Choose a new --out, or add --resume to train it further.")
    if any(checkpoints.glob("checkpoint-*")):
        raise TrainingError(f"{out} holds an unfinished run. Add --resume to continue it, or delete {checkpoints}.")
    return None


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest `checkpoint-N` with its trainer state: a run killed while saving leaves one without."""
    complete = [path for path in checkpoints.glob("checkpoint-*") if (path / TRAINER_STATE).is_file()]
    return max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]), default=None)


def check_same_run(checkpoints: Path, run: dict[str, Any], checkpoint: Path | None, write: bool) -> None:
    """Resuming on other data, another method, base, quantization or image budget would silently mix two runs:
    refuse it. `write`: record this run for a later --resume (the first process does)."""
    run_file = checkpoints / RUN_FILE
    if checkpoint and run_file.is_file() and (earlier := json.loads(run_file.read_text())) != run:
        changed = ", ".join(f"{key} {earlier.get(key)} -> {now}" for key, now in run.items() if earlier.get(key) != now)
        raise TrainingError(f"--resume: the checkpoints in {checkpoints} are of another run ({changed}).")
    if write:
        checkpoints.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(run, indent=2) + "\n")


def held_out_metrics(evaluated: dict[str, float]) -> dict[str, float]:
    """TRL's metrics on the held-out rows (an evaluation's, "eval_..."); for DPO also the policy's log-probability
    margin, mean over batches: log p(chosen) - log p(rejected), each summed over the answer's tokens."""
    metrics = {name.removeprefix("eval_"): value for name, value in evaluated.items() if name.startswith("eval_")}
    if "logps/chosen" in metrics:
        metrics["logp_margin"] = metrics["logps/chosen"] - metrics["logps/rejected"]
    return metrics


def held_out_before(log_history: list[dict[str, Any]]) -> dict[str, float] | None:
    """The held-out metrics measured as training began (the log's first evaluation; a resumed run's log is its
    first start's)."""
    return next((held_out_metrics(entry) for entry in log_history if "eval_loss" in entry), None)


def lineage(from_adapter: str | None) -> dict[str, str] | None:
    if from_adapter is None:
        return None
    folder = adapter_folder(from_adapter)
    return {"name": folder.name, "version": adapter_version(folder), "method": read_metadata(folder).get("method")}


def main(argv: list[str] | None = None) -> None:
    # TRL 1.16 calls transformers' gradient-checkpointing methods by their old names on every step.
    warnings.filterwarnings("ignore", r".*gradient_checkpointing.* is deprecated", FutureWarning)
    parser = HfArgumentParser(TrainSettings, prog="python -m models train", description=__doc__.split("\n\n")[0])
    (settings,) = parser.parse_args_into_dataclasses(argv)
    # On several processes the first speaks for all: the others' lines would repeat its own.
    level = logging.INFO if launched_processes(settings.device).is_main_process else logging.ERROR
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metadata = train(settings)
    except TrainingError as error:
        sys.exit(f"Error: {error}")
    except KeyboardInterrupt:
        if last_complete_checkpoint(settings.out / CHECKPOINTS) is None:
            sys.exit("Interrupted before the first checkpoint: nothing was kept.")
        sys.exit(
            f"Interrupted. To continue from the last checkpoint in {settings.out}, run the same command with --resume."
        )
    if not launched_processes(settings.device).is_main_process:  # the first process wrote OUT, and says so
        return
    print(f"Wrote the adapter, {METADATA_FILE} and report.md to {settings.out} (version {metadata['version']}).")
    for doubt in metadata["warnings"]:  # again at the end: a long run's first lines have scrolled away
        print(f"Warning: {doubt['message']}.")
