"""Train a LoRA adapter for a Qwen-VL model on Loupe's preference exports, with TRL (DPO, KTO or SFT).

    python -m models train --method dpo --data exports/2026-11 --out models/adapters/engineering-v2
    python -m models train --method kto --data exports/kto --out models/adapters/kto-v1 --max-steps 200
    python -m models train --method dpo --data exports/2026-12 --out models/adapters/engineering-v3 \
        --from-adapter engineering-v2
    python -m models train ... --resume      # continue an interrupted run from its last checkpoint
    python -m models train --config dpo.yaml --data exports/2026-12 --out models/adapters/v4 --max-steps 300

Options are Loupe's own (models/arguments.py) and TRL's, by TRL's names, for the method's config (DPOConfig,
KTOConfig, SFTConfig): `--help` lists both. A `--config` YAML file sets any of them, and the command line wins.

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
import itertools
import json
import logging
import math
import random
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import BitsAndBytesConfig, ProcessorMixin, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer, TrlParser
from trl.trainer import utils as trl_utils

from models.adapters import METADATA_FILE, adapter_version
from models.arguments import ConfigError, Method, TrainArguments, read_config
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
PROG = "python -m models train"
# LoRA learning rates: TRL's recommendations for LoRA preference tuning (DPO, KTO) and LoRA SFT.
DEFAULT_LEARNING_RATES = {"dpo": 5e-6, "kto": 5e-6, "sft": 2e-4}
# Loupe's defaults for TRL's options (trainer_defaults), where TRL's suit full fine-tuning on a big dataset. A team
# rates hundreds of answers, not hundreds of thousands: one epoch, small batches of large image prompts (2 rows a
# device, 4 accumulated: 8 a step), a tenth of the steps warming up, and a log and a checkpoint often enough to
# be seen in a run of a few hundred steps, the last two kept.
LOUPE_DEFAULTS = {
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "num_train_epochs": 1.0,
    "warmup_steps": 0.1,
    "logging_steps": 5,
    "logging_first_step": True,
    "save_steps": 50,
    "save_total_limit": 2,
    # Every LoRA weight has a gradient at every step: DDP need not search the graph for unused ones.
    "ddp_find_unused_parameters": False,
}
# Options of Loupe's before TRL's names replaced them, named in the error a command line or config using them gets.
RENAMED_HINT = (
    "Training options are TRL's own (--help lists them); these were renamed: --batch-size is "
    "--per-device-train-batch-size, --gradient-accumulation --gradient-accumulation-steps, --epochs "
    "--num-train-epochs, --warmup --warmup-steps, --data-workers --dataloader-num-workers."
)
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
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint, so only complete checkpoints have it


class TrainingError(Exception):
    """Training cannot start or finish; the message says what is wrong and what to do."""


class RowKindError(TrainingError):
    """A row of the other kind (a KTO row where DPO pairs are read, or the reverse): the export is of the
    wrong format. `where` (file and line) and `kind` let a command that reads rows say what it needs instead."""

    def __init__(self, message: str, where: str, kind: Method) -> None:
        super().__init__(message)
        self.where, self.kind = where, kind


# Data ----------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    train: Dataset
    held_out: Dataset | None
    budget: ImageBudget  # the rows' images are fitted to it as they are read
    # sha256 of the data file, and counts: which data an adapter was trained on, in loupe.json.
    fingerprint: dict[str, Any]


def load_training_data(arguments: TrainArguments, seed: int, budget: ImageBudget) -> TrainingData:
    """The export's rows, checked, and split into training and held-out prompts by `seed` (--seed)."""
    path = find_data_file(arguments.data, arguments.method, arguments.data_file)
    rows = read_rows(path, arguments.method, arguments.data)
    train_rows, held_out_rows = split_held_out(rows, arguments.eval_fraction, seed)
    if not train_rows:
        raise TrainingError(f"{path}: every row was held out; lower --eval-fraction (now {arguments.eval_fraction}).")
    fingerprint = data_fingerprint(path, rows, train_rows, held_out_rows)
    fingerprint |= {"eval_fraction": arguments.eval_fraction, "seed": seed}
    if arguments.method == "kto":
        fingerprint["desirable_rows"] = sum(row["label"] for row in rows)
    open_images = partial(image_dataset, folder=arguments.data, budget=budget)
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


def base_budget(arguments: TrainArguments) -> ImageBudget:
    """The image budget of --base, from its processor files alone: the data is read, and checked, before the
    model loads."""
    check_loadable(arguments.base)
    try:
        processor = load_processor(processor_source(arguments.base))
    except (OSError, ValueError, KeyError) as error:
        raise TrainingError(f"--base {arguments.base}: Could not load the model's processor files: {error}") from None
    return image_budget(processor, arguments.min_pixels, arguments.max_pixels)


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


def load_policy(arguments: TrainArguments) -> tuple[torch.nn.Module, ProcessorMixin, LoraConfig | None]:
    """The base model, with the adapter to continue or the config of a new one (TRL creates it)."""
    loaded = load_base(arguments.base, arguments.device, arguments.dtype, arguments.quantization)
    if arguments.from_adapter is None:
        lora = LoraConfig(
            r=arguments.lora_rank,
            lora_alpha=arguments.lora_alpha,
            lora_dropout=arguments.lora_dropout,
            target_modules=LANGUAGE_MODEL_PROJECTIONS,
            task_type="CAUSAL_LM",
        )
        return loaded.model, loaded.processor, lora
    adapter = adapter_folder(arguments.from_adapter)
    trained_on = read_metadata(adapter).get("base", arguments.base)
    if trained_on != arguments.base:
        raise TrainingError(f"--from-adapter {adapter} was trained on {trained_on}, not on --base {arguments.base}.")
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
    if base == DEMO and is_deepspeed_zero3_enabled():
        raise TrainingError(
            "DeepSpeed ZeRO-3 loads the base model sharded as it reads a checkpoint, and the demo model is built in "
            "each process, not read: train it with models/accelerate/ddp.yaml or zero2.yaml instead."
        )
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


def trainer_config(
    config: TrainingArguments, arguments: TrainArguments, model: torch.nn.Module, measure_before: bool
) -> TrainingArguments:
    """TRL's config as parsed, with what Loupe decides whatever it says. `measure_before`: evaluate the held-out
    rows as training begins, on the model as the run prepared it (wrapped for data-parallel training where it runs
    on several processes)."""
    return replace(
        config,
        output_dir=str(arguments.out / CHECKPOINTS),  # OUT holds the adapter; its checkpoints go beside it
        eval_on_start=measure_before,
        # Image tokens must never be cut: TRL's default max_length (1024) would, and then fails.
        max_length=None,
        # Mixed precision where the model runs in bf16 (CUDA); on CPU, autocast to bf16 is slow and lossy.
        bf16=model.dtype == torch.bfloat16,
        use_cpu=model.device.type == "cpu",
        remove_unused_columns=False,  # the rows hold exactly the trainer's columns; images load lazily
    )


def build_trainer(
    arguments: TrainArguments, config: TrainingArguments, data: TrainingData, resuming: bool
) -> DPOTrainer | KTOTrainer | SFTTrainer:
    """TRL's trainer for the method, on the base model with a new LoRA adapter or the one to continue. A resumed
    run measured its held-out rows when it first began: its checkpoint's log keeps them."""
    log.info("Loading %s...", arguments.base)
    model, processor, lora = load_policy(arguments)
    trainer_class, _ = TRAINERS[arguments.method]
    return trainer_class(
        model=model,
        args=trainer_config(config, arguments, model, measure_before=data.held_out is not None and not resuming),
        train_dataset=data.train,
        eval_dataset=data.held_out,
        processing_class=processor,
        peft_config=lora,
    )


def train(arguments: TrainArguments, config: TrainingArguments) -> dict[str, Any]:
    """Train, then write the adapter, loupe.json and the report into OUT. Returns loupe.json's content.

    Launched on several processes (`torchrun`, `accelerate launch`), each process trains on its share of every
    step's rows and the gradients are averaged, so every process holds the same adapter; the first process
    alone writes OUT, and the others wait for it."""
    arguments = replace(arguments, base=served_base(arguments.base))
    processes = launched_processes(arguments.device)
    checkpoint = prepare_output_folder(arguments)
    data = load_training_data(arguments, config.seed, base_budget(arguments))
    run = {
        "base": arguments.base,
        "method": arguments.method,
        "data_sha256": data.fingerprint["sha256"],
        "quantization": arguments.quantization,
        "images": asdict(data.budget),
    }
    with removed_on_failure(arguments.out):
        check_same_run(arguments.out / CHECKPOINTS, run, checkpoint, write=processes.is_main_process)
        trainer = build_trainer(arguments, config, data, resuming=checkpoint is not None)
        log.info(
            "%s on %d rows (%d held out), on %s (%d process%s)",
            arguments.method.upper(),
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
    doubts += end_warnings(arguments.method, last_logged.get("loss"))

    lora_config = trainer.model.peft_config["default"]
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every process: FSDP gathers its shards
    if processes.is_main_process:  # the adapter alone, not TRL's frozen "ref" copy
        trainer.model.save_pretrained(arguments.out, selected_adapters=["default"], state_dict=weights)
    processes.wait_for_everyone()  # the adapter's version is its weights' digest
    metadata = {
        "base": arguments.base,
        "method": arguments.method,
        "version": adapter_version(arguments.out),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_adapter": lineage(arguments.from_adapter),
        "data": data.fingerprint,
        "images": asdict(data.budget),
        "settings": {
            **{key: str(value) if isinstance(value, Path) else value for key, value in asdict(arguments).items()},
            **chosen_options(trainer.args),
        },
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
        (arguments.out / METADATA_FILE).write_text(text)
        write_report(arguments.out, metadata, trainer.state.log_history)
    processes.wait_for_everyone()
    return metadata


def chosen_options(config: TrainingArguments) -> dict[str, Any]:
    """The trainer's options that differ from TRL's defaults for the method: Loupe's choices and the user's, as
    loupe.json and the report keep them (all 200 would bury them)."""
    defaults = type(config)(output_dir=config.output_dir, bf16=config.bf16, use_cpu=config.use_cpu).to_dict()
    return {key: value for key, value in config.to_dict().items() if value != defaults[key]}


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


def prepare_output_folder(arguments: TrainArguments) -> Path | None:
    """The checkpoint to resume from, if any; refuses to overwrite an adapter or an unfinished run by accident."""
    out, checkpoints = arguments.out, arguments.out / CHECKPOINTS
    checkpoint = last_complete_checkpoint(checkpoints)
    has_adapter = (out / "adapter_config.json").is_file()
    if arguments.resume:
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


def parse_arguments(argv: list[str]) -> tuple[TrainArguments, TrainingArguments]:
    """Loupe's arguments (models/arguments.py), then TRL's config for their --method: Loupe's defaults, under a
    --config YAML file's values, under the command line's."""
    argv = list(argv)
    try:
        file_values = read_config(argv)
    except ConfigError as error:
        raise TrainingError(str(error)) from None
    loupe_parser = TrlParser(TrainArguments, prog=PROG, allow_abbrev=False, add_help=False)
    loupe_unknown = loupe_parser.set_defaults_with_config(**file_values)[::2]
    if {"-h", "--help"} & set(argv):  # both parsers' options, TRL's for --method (default dpo) with Loupe's defaults
        method = next((value for flag, value in itertools.pairwise(argv) if flag == "--method"), "dpo")
        method = method if method in TRAINERS else "dpo"
        help_parser = TrlParser((TrainArguments, TRAINERS[method][1]), prog=PROG, description=__doc__.split("\n\n")[0])
        help_parser.set_defaults(**trainer_defaults(method, "auto"))
        help_parser.print_help()
        sys.exit(0)
    arguments, rest = loupe_parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    trainer_parser = TrlParser(TRAINERS[arguments.method][1], prog=PROG, allow_abbrev=False)
    trainer_parser.set_defaults(**trainer_defaults(arguments.method, arguments.device))
    # Each parser returns the file's values it has no argument for, as `--name value` strings.
    unknown_to_trainer = trainer_parser.set_defaults_with_config(**file_values)[::2]
    if unknown := [name.removeprefix("--") for name in loupe_unknown if name in unknown_to_trainer]:
        raise TrainingError(f"--config: unknown keys {', '.join(unknown)}. {RENAMED_HINT}")
    try:
        config, unknown = trainer_parser.parse_args_into_dataclasses(rest, return_remaining_strings=True)
    except ValueError as error:  # TRL's or transformers' own check of its options
        raise TrainingError(str(error)) from None
    if unknown:
        raise TrainingError(f"Unknown arguments: {' '.join(unknown)}. {RENAMED_HINT}")
    return arguments, config


def trainer_defaults(method: Method, device_name: str) -> dict[str, Any]:
    """Loupe's defaults for TRL's options (LOUPE_DEFAULTS), and those that depend on the method and the device."""
    device = pick_device(device_name).type
    return LOUPE_DEFAULTS | {
        "learning_rate": DEFAULT_LEARNING_RATES[method],
        # bf16 follows the model's dtype, decided once it loads (trainer_config); TRL's default, bf16 everywhere,
        # is refused at parsing on a machine without a GPU.
        "bf16": False,
        "use_cpu": device == "cpu",
        # 4 on CUDA, where the GPU steps faster than one core decodes and fits a batch of photos; none on a CPU,
        # whose cores are all training.
        "dataloader_num_workers": 4 if device == "cuda" else 0,
    }


def main(argv: list[str] | None = None) -> None:
    # TRL 1.16 calls transformers' gradient-checkpointing methods by their old names on every step.
    warnings.filterwarnings("ignore", r".*gradient_checkpointing.* is deprecated", FutureWarning)
    try:
        arguments, config = parse_arguments(sys.argv[1:] if argv is None else argv)
    except TrainingError as error:
        sys.exit(f"Error: {error}")
    # On several processes the first speaks for all: the others' lines would repeat its own.
    level = logging.INFO if launched_processes(arguments.device).is_main_process else logging.ERROR
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metadata = train(arguments, config)
    except TrainingError as error:
        sys.exit(f"Error: {error}")
    except KeyboardInterrupt:
        if last_complete_checkpoint(arguments.out / CHECKPOINTS) is None:
            sys.exit("Interrupted before the first checkpoint: nothing was kept.")
        sys.exit(
            f"Interrupted. To continue from the last checkpoint in {arguments.out}, run the same command with --resume."
        )
    if not launched_processes(arguments.device).is_main_process:  # the first process wrote OUT, and says so
        return
    print(f"Wrote the adapter, {METADATA_FILE} and report.md to {arguments.out} (version {metadata['version']}).")
    for doubt in metadata["warnings"]:  # again at the end: a long run's first lines have scrolled away
        print(f"Warning: {doubt['message']}.")
