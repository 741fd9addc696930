"""Arena battles whose truth is known, for the leaderboard's tests and benchmark."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from chat.arena.leaderboard import Design, Outcome, design_of, fit

START = datetime(2026, 11, 2, 9)
LENGTH = 300  # characters of a short answer; a long one is three times as long


def battles(a: str, b: str, choice: str, times: int) -> list[Outcome]:
    """`times` battles of a against b, each by its own user on its own prompt (all of them count)."""
    return [
        Outcome(a, b, choice, user=f"{a}-{b}-{choice}-{i}", prompt=str(i), voted_at=START + timedelta(seconds=i))
        for i in range(times)
    ]


def simulated(
    count: int, strength: dict[str, float], verbose: set[str], length_effect: float, seed: int = 1
) -> list[Outcome]:
    """`count` battles between random pairs, each by its own user on its own prompt, a second apart, where
    P(A wins) = logistic(strength A - strength B + length_effect x (length A - length B) / (length A + length B)).

    An answer is long 80% of the time from a contender in `verbose`, 20% from the others, so length is
    neither fixed per contender nor independent of it: what a style-controlled fit has to untangle.
    """
    rng = np.random.default_rng(seed)
    names = sorted(strength)
    pairs = rng.integers(0, len(names), size=(count, 2))
    pairs[:, 1] = (pairs[:, 0] + rng.integers(1, len(names), size=count)) % len(names)  # never itself
    battles = []
    for i, (first, second) in enumerate(pairs):
        a, b = names[first], names[second]
        length_a, length_b = (
            int(LENGTH * (3 if rng.random() < (0.8 if name in verbose else 0.2) else 1) * rng.uniform(0.8, 1.2))
            for name in (a, b)
        )
        logit = strength[a] - strength[b] + length_effect * (length_a - length_b) / (length_a + length_b)
        choice = "a" if rng.random() < 1 / (1 + np.exp(-logit)) else "b"
        battles.append(
            Outcome(
                a,
                b,
                choice,
                (length_a, 0, 0, 0),
                (length_b, 0, 0, 0),
                user=f"user{i}",
                prompt=f"prompt {i}",
                voted_at=START + timedelta(seconds=i),
            )
        )
    return battles


def refitted_strengths(battles: list[Outcome], rounds: int, seed: int) -> tuple[list[str], np.ndarray]:
    """The textbook bootstrap the leaderboard's one-step bootstrap stands in for: the style-controlled
    model refitted on `rounds` resamples of the battles. Returns the contenders, and rounds x contenders
    strengths in log-odds, each round centred."""
    names = sorted({battle.contender_a for battle in battles} | {battle.contender_b for battle in battles})
    full = design_of(battles, names)
    rng = np.random.default_rng(seed)
    refits = []
    for _ in range(rounds):
        chosen = rng.integers(0, len(full.y), len(full.y))
        theta, _ = fit(Design(full.a[chosen], full.b[chosen], full.covariates[chosen], full.y[chosen], len(names)))
        refits.append(theta[: len(names)] - theta[: len(names)].mean())
    return names, np.array(refits)
