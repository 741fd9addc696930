"""Measure adapters against the base model on the pairs an export holds out, offline, and keep the result.

    python -m models evaluate --data exports/2026-11 --adapter engineering-v2
    python -m models evaluate --data exports/2026-11 --adapter engineering-v2 engineering-v3 --json

DATA is a folder written by `python -m chat export --format trl-dpo`. Its held-out pairs are the ones
`python -m models train` holds out (models/train.py: the same reading, split and image fitting), so an
adapter trained on DATA is measured on pairs it never saw. Each contender, the base model ("base") and
each named adapter (a folder in LOUPE_ADAPTERS_DIR), gets its preference accuracy (the share of pairs
whose log-probability margin, log p(chosen) - log p(rejected), is positive) and its mean margin, each with
a 95% bootstrap interval. The result, with the base model's beside it, goes into each adapter's loupe.json
under "evaluations", replacing an earlier one on the same data, split and base model.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import torch
from transformers import ProcessorMixin, TrainingArguments
from trl import TrlParser
from trl.trainer import add_fused_lm_head
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from models.adapters import EVALUATIONS, METADATA_FILE, Adapter, AdapterDirectory, AdapterError, AdapterSwitch
from models.arguments import DEFAULT_EVAL_FRACTION, ConfigError, EvaluateArguments, read_config
from models.settings import ModelSettings
from models.train import (
    ROW_KINDS,
    RowKindError,
    TrainingError,
    data_fingerprint,
    find_data_file,
    image_budget,
    image_dataset,
    load_base,
    read_rows,
    served_base,
    split_held_out,
)

log = logging.getLogger(__name__)

BASE = "base"  # the base model's name among the contenders, as the arena names it
CONFIDENCE = 0.95
# Resamples of the pairs per interval: the ends of a 95% percentile interval move by about a tenth of a
# percentage point from one seed to the next at 10,000, and resampling costs well under a second.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same margins always give the same intervals


class EvaluationError(Exception):
    """Evaluation cannot start; the message says what is wrong and what to do."""


# Scores ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceScores:
    pairs: int
    accuracy: float  # share of pairs with a positive margin
    accuracy_interval: list[float]  # low, high: a list, as JSON keeps it
    mean_margin: float  # nats
    mean_margin_interval: list[float]


def preference_scores(
    margins: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> PreferenceScores:
    """Accuracy and mean margin of `margins`, with percentile bootstrap intervals at CONFIDENCE: the pairs
    are resampled with replacement `resamples` times, one resample at a time so memory stays at one."""
    values = torch.tensor(margins, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    accuracies, means = torch.empty(resamples, dtype=torch.float64), torch.empty(resamples, dtype=torch.float64)
    for index in range(resamples):
        sample = values[torch.randint(len(values), (len(values),), generator=generator)]
        accuracies[index], means[index] = (sample > 0).double().mean(), sample.mean()
    ends = torch.tensor([(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], dtype=torch.float64)
    return PreferenceScores(
        pairs=len(values),
        accuracy=(values > 0).double().mean().item(),
        accuracy_interval=torch.quantile(accuracies, ends).tolist(),
        mean_margin=values.mean().item(),
        mean_margin_interval=torch.quantile(means, ends).tolist(),
    )


# Margins ---------------------------------------------------------------------------------------------


def scoring_model(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with TRL's fused LM head: `model(..., labels=..., fused_lm_head=True).log_probs` are the
    per-token log-probabilities, without the (sequence x 151,936 vocabulary) logits, gigabytes for a
    batch of photos on the 2B model. peft passes the flag through to it, so add it before any adapter."""
    add_fused_lm_head(model)
    return model


def logp_margins(model: torch.nn.Module, processor: ProcessorMixin, pairs: list[dict[str, Any]]) -> list[float]:
    """log p(chosen) - log p(rejected) of each pair, each summed over the answer's tokens: the quantity
    DPOTrainer logs as logps/chosen and logps/rejected, computed as it computes it (its collator, the fused
    head of `scoring_model`), pair by pair instead of as the batch means that are all its evaluate() returns.
    `pairs` hold opened images (models.train.image_dataset)."""
    # The collator rewrites its rows' messages in place: give it copies.
    batch = DataCollatorForVisionPreference(processor)([dict(pair) for pair in pairs])
    batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
    completion_mask = batch.pop("completion_mask")
    labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
    with torch.no_grad():
        token_logps = model(**batch, labels=labels, use_cache=False, fused_lm_head=True).log_probs
    # log_probs cover the positions that predict a next token; positions outside the answers are 0.
    chosen, rejected = token_logps[:, -(completion_mask.size(1) - 1) :].float().sum(-1).chunk(2)
    return (chosen - rejected).tolist()


# Evaluation ------------------------------------------------------------------------------------------


def find_adapters(names: list[str], base: str) -> list[Adapter]:
    """The named adapters of LOUPE_ADAPTERS_DIR, each checked to be trained on `base` when loupe.json says."""
    directory = AdapterDirectory(ModelSettings().adapters_dir)
    adapters = []
    for name in names:
        if (adapter := directory.get(name)) is None:
            present = ", ".join(adapter.name for adapter in directory.list()) or "none"
            raise EvaluationError(
                f"--adapter {name}: no adapter of that name in LOUPE_ADAPTERS_DIR ({directory.folder}; adapters "
                f"there: {present}). Name a folder there that holds adapter_config.json, or set LOUPE_ADAPTERS_DIR."
            )
        trained_on = adapter.metadata().get("base", base)
        if trained_on != base:
            raise EvaluationError(f"--adapter {name} was trained on {trained_on}, not on --base {base}: add --base.")
        adapters.append(adapter)
    return adapters


def held_out_split(arguments: EvaluateArguments, adapters: list[Adapter], sha256: str) -> tuple[float, int]:
    """The share of prompts held out and the seed. An adapter trained on this very file must be measured
    on the split it was trained with, or the held-out pairs would include pairs it learned: that split is
    the default, and another is refused."""
    trained_here = {
        adapter.name: trained_split(metadata)
        for adapter in adapters
        if (metadata := adapter.metadata()).get("data", {}).get("sha256") == sha256
    }
    training_default = (DEFAULT_EVAL_FRACTION, TrainingArguments.seed)
    default_fraction, default_seed = min(trained_here.values(), default=training_default)
    fraction = default_fraction if arguments.eval_fraction is None else arguments.eval_fraction
    seed = default_seed if arguments.seed is None else arguments.seed
    for name, (trained_fraction, trained_seed) in trained_here.items():
        if (trained_fraction, trained_seed) != (fraction, seed):
            raise EvaluationError(
                f"--adapter {name} was trained on this export with --eval-fraction {trained_fraction} --seed "
                f"{trained_seed}; held out with {fraction} and seed {seed}, its pairs would include pairs it was "
                "trained on. Evaluate it with its own split (the default), apart from adapters split otherwise."
            )
    return fraction, seed


def trained_split(metadata: dict[str, Any]) -> tuple[float, int]:
    """The held-out share and seed an adapter's training split its data with: in loupe.json's "data" (in its
    "settings" for adapters trained before TRL's config held the seed)."""
    split = metadata["data"] if "seed" in metadata["data"] else metadata["settings"]
    return split["eval_fraction"], split["seed"]


def read_held_out_pairs(arguments: EvaluateArguments, adapters: list[Adapter]) -> tuple[list[dict], dict[str, Any]]:
    """The held-out pairs, read and split as training reads and splits them, and the data's fingerprint."""
    path = find_data_file(arguments.data, "dpo", arguments.data_file)
    try:
        rows = read_rows(path, "dpo", arguments.data)
    except RowKindError as error:
        raise EvaluationError(
            f"{error.where} is {ROW_KINDS[error.kind]}: evaluation measures DPO pairs (chosen, rejected). "
            "Export them with `python -m chat export --format trl-dpo --out DIR`."
        ) from None
    fingerprint = data_fingerprint(path, rows, [], [])
    fraction, seed = held_out_split(arguments, adapters, fingerprint["sha256"])
    train_rows, held_out = split_held_out(rows, fraction, seed)
    if not held_out:
        raise EvaluationError(
            f"{path} has no held-out pairs: {fraction} of its prompts rounds down to none. Export more pairs, "
            "or raise --eval-fraction (for an adapter trained on this export, that measures pairs it learned)."
        )
    return held_out, data_fingerprint(path, rows, train_rows, held_out) | {"eval_fraction": fraction, "seed": seed}


def score_contenders(
    arguments: EvaluateArguments, adapters: list[Adapter], pairs: list[dict]
) -> dict[str, list[float]]:
    """Each contender's margins: the base model first, then each adapter, switched in per batch (so the
    images of a batch are opened once) with the app's AdapterSwitch."""
    log.info("Loading %s...", arguments.base)
    loaded = load_base(arguments.base, arguments.device, arguments.dtype)
    switch = AdapterSwitch(scoring_model(loaded.model))
    contenders: dict[str, Adapter | None] = {BASE: None} | {adapter.name: adapter for adapter in adapters}
    margins: dict[str, list[float]] = {name: [] for name in contenders}
    budget = image_budget(loaded.processor, arguments.min_pixels, arguments.max_pixels)
    dataset = image_dataset(pairs, arguments.data, budget)
    for start in range(0, len(pairs), arguments.batch_size):
        batch = [dataset[index] for index in range(start, min(start + arguments.batch_size, len(pairs)))]
        for name, adapter in contenders.items():
            try:
                with switch.use(adapter) as model:
                    margins[name] += logp_margins(model, loaded.processor, batch)
            except AdapterError as error:
                raise EvaluationError(f"--adapter {name}: {error}") from None
        log.info("Pairs scored: %d of %d", start + len(batch), len(pairs))
    return margins


def evaluate(arguments: EvaluateArguments) -> dict[str, Any]:
    """Score the contenders on the held-out pairs and store each adapter's result in its loupe.json.
    Returns the result: when, on what (data, base model), and each contender's PreferenceScores."""
    arguments = replace(arguments, base=served_base(arguments.base))
    adapters = find_adapters(arguments.adapter, arguments.base)
    pairs, data = read_held_out_pairs(arguments, adapters)
    log.info("%d held-out pairs of %s", len(pairs), arguments.data / data["file"])
    margins = score_contenders(arguments, adapters, pairs)
    result = {
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": arguments.base,
        "data": data,
        "bootstrap": {"confidence": CONFIDENCE, "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "scores": {name: asdict(preference_scores(values)) for name, values in margins.items()},
    }
    for adapter in adapters:
        store_evaluation(adapter, result)
    return result


def store_evaluation(adapter: Adapter, result: dict[str, Any]) -> None:
    """Add the adapter's scores, beside the base model's on the same pairs, to its loupe.json's evaluations,
    in place of an earlier evaluation on the same data file, split and base model."""
    scores = result["scores"]
    entry = result | {"scores": {"adapter": scores[adapter.name], BASE: scores[BASE]}, "version": adapter.version}
    metadata = adapter.metadata()
    kept = [earlier for earlier in metadata.get(EVALUATIONS, []) if measured_on(earlier) != measured_on(entry)]
    metadata[EVALUATIONS] = [*kept, entry]
    (adapter.path / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")


def measured_on(entry: dict[str, Any]) -> tuple:
    """What makes two evaluations the same measurement: the data file's content, its split and the base."""
    data = entry["data"]
    return data["sha256"], data["eval_fraction"], data["seed"], entry["base"]


def table(result: dict[str, Any]) -> str:
    """The result as a plain-text table, one row per contender."""
    data = result["data"]
    percent = int(CONFIDENCE * 100)
    lines = [
        f"{data['held_out_rows']} held-out pairs of {data['file']} ({data['rows']} pairs; --eval-fraction "
        f"{data['eval_fraction']}, --seed {data['seed']}), base model {result['base']}:",
        "",
        f"{'contender':<24} {'pairs':>5}  {f'accuracy [{percent}% interval]':<26} "
        f"mean margin, nats [{percent}% interval]",
    ]
    for name, scores in result["scores"].items():
        accuracy_low, accuracy_high = scores["accuracy_interval"]
        margin_low, margin_high = scores["mean_margin_interval"]
        accuracy = f"{scores['accuracy']:.1%} [{accuracy_low:.1%}, {accuracy_high:.1%}]"
        margin = f"{scores['mean_margin']:+.3f} [{margin_low:+.3f}, {margin_high:+.3f}]"
        lines.append(f"{name:<24} {scores['pairs']:>5}  {accuracy:<26} {margin}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser(EvaluateArguments, prog="python -m models evaluate", description=__doc__.split("\n\n")[0])
    try:
        unknown = parser.set_defaults_with_config(**read_config(argv))[::2]  # its strings: --name, value, ...
    except ConfigError as error:
        sys.exit(f"Error: {error}")
    if unknown:
        sys.exit(f"Error: --config: unknown keys {', '.join(name.removeprefix('--') for name in unknown)}.")
    (arguments,) = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = evaluate(arguments)
    except (EvaluationError, TrainingError) as error:
        sys.exit(f"Error: {error}")
    if arguments.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    print(table(result))
    if arguments.adapter:
        print(f"\nStored in {METADATA_FILE} ({EVALUATIONS}) of: {', '.join(arguments.adapter)}.")
