"""The rules that say when a training run cannot have learned, as warnings (code, message).

A run that trains two steps at the warm-up's learning rate, with no rows held out, ends with a loss of 0.6931
and an adapter that looks finished: nothing in its files says that it is the base model again. `python -m models
train` checks its plan against these rules before it trains (printed at once) and its end after (with the plan's,
in loupe.json's `warnings` and the report). Pure rules, as chat/dataset/pairing.py's, so each is tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Doubt = tuple[str, str]  # (code, message): the code for scripts and tests, the message for people

# Under 10 optimizer steps an adapter cannot have moved far: its LoRA B matrices start at 0, the linear warm-up
# starts the first update at learning rate 0, and the report's curves (logged every 5 steps by default) hold
# one or two points, too few to tell a trend from noise.
MIN_STEPS = 10
# DPO's loss is -log sigmoid(0) = ln 2 while the policy equals its reference, i.e. before it has learned anything;
# 0.0005 is the half-unit of the 4 decimals it is logged with: a loss within it reads as 0.6931, unchanged.
DPO_START_LOSS = math.log(2)
UNCHANGED_LOSS = 0.0005


@dataclass(frozen=True)
class Plan:
    """What a run is set to do, known before its first step."""

    train_rows: int
    held_out_rows: int
    rows_per_step: int  # batch size x gradient accumulation
    steps: int  # optimizer steps in all (--max-steps, or the epochs' steps)
    warmup_steps: int


def plan_warnings(plan: Plan) -> list[Doubt]:
    """What makes the planned run unable to learn, or its result unmeasured."""
    warnings: list[Doubt] = []
    if plan.warmup_steps >= plan.steps:
        warnings.append(
            (
                "warmup",
                f"the warm-up takes {steps(plan.warmup_steps)} of {plan.steps}: the learning rate starts at 0 and "
                "never reaches --learning-rate. Lower --warmup-steps, or train more steps",
            )
        )
    if plan.steps < MIN_STEPS:
        warnings.append(
            (
                "few_steps",
                f"{steps(plan.steps)} are too few to learn from (fewer than {MIN_STEPS}): the adapter stays close "
                "to the base model. Raise --max-steps or --num-train-epochs, or export more data",
            )
        )
    if plan.steps >= MIN_STEPS and plan.train_rows < MIN_STEPS * plan.rows_per_step:
        warnings.append(
            (
                "few_rows",
                f"{plan.train_rows} training rows fill {steps(math.ceil(plan.train_rows / plan.rows_per_step))} of "
                f"{plan.steps} ({plan.rows_per_step} rows a step): the run repeats the same few rows, which it "
                "learns by heart rather than a preference. Collect more feedback, then export again",
            )
        )
    if plan.held_out_rows == 0:
        warnings.append(
            (
                "no_held_out",
                "no rows are held out: nothing measures the adapter on data it was not trained on, and "
                "`python -m models evaluate` has no pairs. Raise --eval-fraction, or export more prompts",
            )
        )
    return warnings


def end_warnings(method: str, last_loss: float | None) -> list[Doubt]:
    """What the end of a run shows it did not learn: a DPO loss still at ln 2, where every run starts."""
    if method == "dpo" and last_loss is not None and abs(last_loss - DPO_START_LOSS) < UNCHANGED_LOSS:
        return [
            (
                "loss_unchanged",
                f"the DPO loss ended at {last_loss:.4f}, ln 2, where it starts: the adapter prefers the chosen "
                "answers no more than the base model does",
            )
        ]
    return []


def steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"
