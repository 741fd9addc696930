"""The leaderboard at scale: 100,000 battles between 20 contenders, both scores with 1,000 bootstrap rounds.

Ours: `standings()` as the app and `python -m chat leaderboard` call it (hygiene, the style-controlled and
the plain fit, the one-step bootstrap of both). The baseline is the textbook bootstrap: refitting the
style-controlled model on every resample; it is timed on BASELINE_ROUNDS rounds and scaled to 1,000.
Both run on the same battles in this process, so their ratio holds on a busy machine. The intervals of
the two are compared on the baseline's rounds, to show the shortcut costs no accuracy.

Run from the repository root:
    .venv/bin/python -m bench.bench_leaderboard
Goal: under 5 s for 100,000 battles and 20 contenders, 1,000 bootstrap rounds included.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.bench_chat import Report, median, print_machine
from chat.arena.leaderboard import BOOTSTRAP_ROUNDS, ELO, standings
from tests.helpers.battles import refitted_strengths, simulated

GOAL_SECONDS = 5
BASELINE_ROUNDS = 50  # refits timed for the baseline and compared with: enough for a stable time per round
REPEATS = 3  # ours is timed this many times; the median is reported


def main(args: argparse.Namespace) -> None:
    print_machine()
    report = Report()
    rng = np.random.default_rng(0)
    names = [f"adapter-{i:02d}" for i in range(args.contenders)]
    strength = dict(zip(names, rng.normal(0, 0.5, len(names)), strict=True))
    verbose = set(names[::2])
    battles = simulated(args.battles, strength, verbose, length_effect=1.5)
    report.add("data", "battles, contenders", f"{len(battles):,}, {len(names)}", "half the contenders verbose")

    # --- Ours ------------------------------------------------------------------------------------
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        board = standings(battles)
        times.append(time.perf_counter() - started)
    ours = median(times)
    verdict = "met" if ours < GOAL_SECONDS else "missed"
    report.add("ours", "leaderboard time", f"{ours:.2f} s", f"median of {REPEATS}; goal < {GOAL_SECONDS} s: {verdict}")

    # --- The baseline: a full refit per bootstrap round --------------------------------------------
    started = time.perf_counter()
    refitted, refits = refitted_strengths(battles, BASELINE_ROUNDS, seed=1)
    per_round = (time.perf_counter() - started) / BASELINE_ROUNDS
    baseline = per_round * BOOTSTRAP_ROUNDS
    report.add("baseline", "full refits, 1,000 rounds", f"{baseline:.1f} s", f"{per_round * 1000:.0f} ms per round")
    report.add("ratio", "ours / baseline", f"{ours / baseline:.3f}", "ours: both scores; baseline: one")

    # --- The shortcut's accuracy: interval widths against the refits' spread ----------------------------
    spread = np.std(refits, axis=0) * ELO
    ours_width = {row.contender: (row.score.high - row.score.low) / (2 * 1.96) for row in board.standings}
    ratios = [ours_width[name] / refit for name, refit in zip(refitted, spread, strict=True)]
    report.add(
        "accuracy",
        "ours / refits, standard error",
        f"{min(ratios):.2f} to {max(ratios):.2f}",
        f"per contender; the refits' from {BASELINE_ROUNDS} rounds, so ±{100 / np.sqrt(2 * BASELINE_ROUNDS):.0f}%",
    )
    print("\n" + report.table())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--battles", type=int, default=100_000)
    parser.add_argument("--contenders", type=int, default=20)
    main(parser.parse_args())
