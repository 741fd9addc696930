"""Rank adapters from blind A/B battles: win rates and Bradley-Terry scores with bootstrap intervals.

Only battles count (not thumbs or comparisons of an adapter with itself): both answers were
written for the same prompt by two contenders the user could not tell apart. A tie and "both
bad" count as half a win for each side. Scores are on the Elo scale (400 points = 10:1 odds,
mean 1000) as in Chatbot Arena; each pair of contenders gets one virtual tie so that a
contender that has never lost still gets a finite score. The 95% interval comes from
recomputing the scores on battles resampled with replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.schema import Battle

BOOTSTRAP_ROUNDS = 1000
SEED = 0  # the same battles always give the same intervals
MAX_ITERATIONS = 1000  # minorization-maximization steps; a handful of contenders converge in tens
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Outcome:
    contender_a: str
    contender_b: str
    choice: str  # a, b, tie, both_bad


@dataclass(frozen=True)
class Standing:
    contender: str
    score: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def battles(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float:
        """Share of battles won, a tie counting half."""
        return (self.wins + self.ties / 2) / self.battles


async def outcomes(sessions: async_sessionmaker[AsyncSession]) -> list[Outcome]:
    async with sessions() as session:
        rows = await session.execute(
            select(Battle.contender_a, Battle.contender_b, Battle.choice).order_by(Battle.created_at, Battle.id)
        )
        return [Outcome(*row) for row in rows]


def standings(battles: list[Outcome]) -> list[Standing]:
    """Every contender that fought, best score first."""
    names = sorted({battle.contender_a for battle in battles} | {battle.contender_b for battle in battles})
    if not names:
        return []
    index = {name: position for position, name in enumerate(names)}
    pairs = np.array([(index[b.contender_a], index[b.contender_b]) for b in battles])
    a_score = np.array([{"a": 1.0, "b": 0.0}.get(b.choice, 0.5) for b in battles])
    scores = bradley_terry(len(names), pairs, a_score)
    rng = np.random.default_rng(SEED)
    samples = np.array(
        [
            bradley_terry(len(names), pairs[chosen], a_score[chosen])
            for chosen in rng.integers(0, len(battles), size=(BOOTSTRAP_ROUNDS, len(battles)))
        ]
    )
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    table = []
    for name, position in index.items():
        results = [
            score if a == position else 1 - score
            for (a, b), score in zip(pairs, a_score, strict=True)
            if position in (a, b)
        ]
        table.append(
            Standing(
                contender=name,
                score=float(scores[position]),
                low=float(low[position]),
                high=float(high[position]),
                wins=sum(result == 1 for result in results),
                ties=sum(result == 0.5 for result in results),
                losses=sum(result == 0 for result in results),
            )
        )
    return sorted(table, key=lambda standing: (-standing.score, standing.contender))


def bradley_terry(count: int, pairs: np.ndarray, a_score: np.ndarray) -> np.ndarray:
    """Elo-scale strengths of `count` contenders from battles (a, b) where a scored `a_score` (1, 0.5, 0).

    Hunter's (2004) minorization-maximization for the Bradley-Terry model, with one virtual tie
    per pair of contenders.
    """
    wins = np.zeros((count, count))  # wins[i, j]: what i scored against j
    np.add.at(wins, (pairs[:, 0], pairs[:, 1]), a_score)
    np.add.at(wins, (pairs[:, 1], pairs[:, 0]), 1 - a_score)
    wins += 0.5 * (1 - np.eye(count))
    games = wins + wins.T
    strength = np.ones(count)
    for _ in range(MAX_ITERATIONS):
        previous = strength
        strength = wins.sum(axis=1) / (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        strength /= np.exp(np.log(strength).mean())
        if np.abs(strength - previous).max() < TOLERANCE:
            break
    return 1000 + 400 * np.log10(strength)


def as_markdown(table: list[Standing]) -> str:
    if not table:
        return "No battles yet."
    lines = [
        "| # | contender | score | 95% interval | win rate | battles | wins / ties / losses |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, standing in enumerate(table, start=1):
        lines.append(
            f"| {rank} | {standing.contender} | {standing.score:.0f} | {standing.low:.0f} to {standing.high:.0f} "
            f"| {standing.win_rate:.0%} | {standing.battles} | {standing.wins} / {standing.ties} / {standing.losses} |"
        )
    return "\n".join(lines)
