"""The training report of an adapter: report.md and PNG plots of the metrics TRL logged, step by step.

It reads only loupe.json's content and the trainer's log history, so it says what the run measured
and nothing else. Each method logs its own metrics; a plot is drawn for each one the run has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs on servers without a display

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

# File, title, and the logged metric it plots: loss for every method, rewards for DPO and KTO,
# the KL estimate for KTO, and token accuracy for SFT.
PLOTS = (
    ("loss.png", "Training loss", "loss"),
    ("reward_margin.png", "Reward margin (chosen - rejected)", "rewards/margins"),
    ("reward_accuracy.png", "Reward accuracy (chosen above rejected)", "rewards/accuracies"),
    ("kl.png", "KL estimate to the reference", "kl"),
    ("token_accuracy.png", "Mean token accuracy", "mean_token_accuracy"),
)
# Held-out metrics worth a row in the report, when the method logs them.
HELD_OUT = ("loss", "logp_margin", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


def write_report(folder: Path, metadata: dict[str, Any], log_history: list[dict[str, Any]]) -> list[Path]:
    """Write the plots and report.md into `folder`; returns the plots written."""
    plots = [plot(folder / name, title, metric, log_history) for name, title, metric in PLOTS]
    plots = [path for path in plots if path is not None]
    (folder / "report.md").write_text(markdown(folder.name, metadata, plots), encoding="utf-8")
    return plots


def plot(path: Path, title: str, metric: str, log_history: list[dict[str, Any]]) -> Path | None:
    """The metric per logged training step, and on the held-out rows where they were measured (before and after)."""
    training = [(entry["step"], entry[metric]) for entry in log_history if metric in entry]
    if not training:
        return None
    held_out = [(entry["step"], entry[f"eval_{metric}"]) for entry in log_history if f"eval_{metric}" in entry]
    figure, axes = plt.subplots(figsize=(6, 3.5), layout="constrained")
    axes.plot(*zip(*training, strict=True), marker="." if len(training) < 50 else None, label="training batches")
    if held_out:
        axes.plot(*zip(*held_out, strict=True), "o", label="held-out rows")
        axes.legend()
    axes.set(title=title, xlabel="optimizer step", ylabel=metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def markdown(name: str, metadata: dict[str, Any], plots: list[Path]) -> str:
    data, training, held_out = metadata["data"], metadata["training"], metadata["held_out"]
    origin = f"adapter {metadata['from_adapter']['name']}" if metadata["from_adapter"] else "a new LoRA adapter"
    lines = [
        f"# {name}",
        "",
        f"{metadata['method'].upper()} on `{metadata['base']}`, starting from {origin}; "
        f"version {metadata['version']}, written {metadata['created_at']}.",
        "",
        *warnings(metadata["warnings"]),
        "## Data",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in data.items()),
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key.replace('_', ' ')} | {number(value)} |" for key, value in training.items() if key != "last_logged"),
        *(f"| last logged {key} | {number(value)} |" for key, value in training["last_logged"].items()),
        "",
    ]
    if held_out:
        before, after = held_out["before"], held_out["after"]
        lines += [
            f"## Held-out rows ({held_out['rows']}): before and after training",
            "",
            "Rows of prompts never trained on. `logp_margin` is the policy's log p(chosen) - log p(rejected),",
            "summed over each answer's tokens (mean over batches): it rises as the adapter prefers chosen answers.",
            "",
            "| metric | before | after |",
            "|---|---|---|",
            *(f"| {key} | {number(before[key])} | {number(after[key])} |" for key in HELD_OUT if key in before),
            "",
        ]
    lines += ["## Plots", "", *(f"![{path.stem}]({path.name})" for path in plots), ""]
    lines += ["## Settings", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in metadata["settings"].items())]
    return "\n".join(lines) + "\n"


def warnings(doubts: list[dict[str, str]]) -> list[str]:
    """First in the report, where a run that cannot have learned (models/doubts.py) says so before its numbers."""
    if not doubts:
        return []
    return ["## Warnings", "", *(f"- **{doubt['code']}**: {doubt['message']}." for doubt in doubts), ""]


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
