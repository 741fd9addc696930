"""Rank adapters from blind A/B battles: Bradley-Terry scores with and without style control, bootstrap
intervals, ranks that only claim what the intervals support.

Only battles count (not thumbs or comparisons of an adapter with itself): both answers were written
for the same prompt by two contenders the user could not tell apart. Each adapter *version* is its
own contender (`name@version`), so retraining an adapter starts a new record; a version that is no
longer in the adapters folder is shown as retired. Only voted battles are read, and only those the arena
held count (a battle stored before the arena recorded its own is flagged if no arena held it). Before
anything is fitted, vote hygiene decides which of them count (`counted`): one per user per prompt, a daily
cap per user, no user beyond twice the median user's count, none of a user voting against the rest of the team,
and the vote the user cast blind (a battle voted again after the reveal, before votes were final, keeps its
first choice).

Two scores, both on the Elo scale (400 points = 10:1 odds, mean 1000) as in Chatbot Arena:
- **plain**: the Bradley-Terry model, a logistic regression of the outcome on +1 for A's contender
  and -1 for B's;
- **style-controlled** (the headline, and what ranks): the same regression with covariates for how A's
  answer differs from B's in length and markdown structure (headers, list items, bold), following
  LMSYS's "style control". A contender whose answers win only because they are longer or more
  formatted loses that lead; the fitted style coefficients say how much voters reward each.

A tie and "both bad" count as half a win for each side. A Gaussian prior on the strengths and the style
coefficients (`PRIOR`) keeps an unbeaten contender's score finite. Rank = 1 + the number of contenders whose
interval lies entirely above this one's, so contenders whose intervals overlap share a rank. A contender with
fewer than `min_battles` counted battles is provisional.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from chat.fair_share import OVER_MEDIAN, UserCap
from chat.settings import Settings
from chat.store.generations import BASE
from chat.store.schema import Battle, Generation, Step
from models.adapters import Adapter, AdapterDirectory
from models.prompt_key import prompt_key

BOOTSTRAP_ROUNDS = 1000
SEED = 0  # the same battles always give the same intervals
ELO = 400 / math.log(10)  # log-odds to Elo points: 400 points are 10:1 odds
MEAN_SCORE = 1000
# The prior's precision on each strength, in log-odds: the curvature of one even battle (p(1-p) = 1/4), so a
# contender is pulled toward the mean by about one battle's worth of evidence; an unbeaten one stays finite.
PRIOR = 0.25
NEWTON_STEPS = 50  # the fit converges quadratically: under ten steps even for 100,000 battles
TOLERANCE = 1e-10
BOOTSTRAP_CHUNK = 100  # rounds resampled at once: 100 x 100,000 counts are 40 MB
VERSION_DIGITS = 8  # of the adapter version's 16 hex digits: enough to tell versions apart on a page

# What a vote may be, and what each gives contender A (B gets 1 minus it).
A_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}

# Markdown structure, counted per answer (the style covariates besides length).
STYLE = ("length", "headers", "lists", "bold")
HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")

# Why a stored battle is not counted (vote hygiene), as the leaderboard reports them.
REPEATED_PROMPT = "the user already voted on this prompt"
OVER_DAILY_CAP = "over the user's daily cap"
OVER_USER_CAP = f"over {OVER_MEDIAN} times the median user's counted battles"
# A user whose decisive votes go against the rest of the team's far more often than chance allows is voting
# against the team, not judging answers (bench/bench_flywheel.py's hostile members). So small a chance that an
# honest member who merely disagrees keeps their votes unless they disagree with nearly everyone, many times:
# 6 of 6 votes against a rest that votes 80:20 is p = 6e-5, and counts; 10 of 10 is 1e-7, and does not.
AGAINST_THE_TEAM_P = 1e-6
AGAINST_THE_TEAM = "the user's votes go against the rest of the team's (p < 1e-6)"


def style_of(answer: str) -> tuple[int, int, int, int]:
    """An answer's length in characters and its counts of markdown headers, list items and bold spans."""
    return len(answer), len(HEADER.findall(answer)), len(LIST_ITEM.findall(answer)), len(BOLD.findall(answer))


def contender_key(adapter: str | None, version: str | None) -> str:
    """How a contender is named: `base`, or the adapter's folder name and version (`v2@1a2b3c4d`)."""
    if adapter is None or adapter == BASE:
        return BASE
    return f"{adapter}@{(version or 'unknown')[:VERSION_DIGITS]}"


def adapter_named(contender: str) -> str:
    """The adapter (folder name) a contender is a version of, or `base`: `contender_key` undone, less the version."""
    return contender.partition("@")[0]


def contender_of(adapter: Adapter | None) -> str:
    """The contender an adapter's present version (or, for None, the base model) fights as."""
    return contender_key(adapter.name, adapter.version) if adapter else BASE


@dataclass(frozen=True)
class Outcome:
    """One stored battle: who wrote A and B, the blind vote, and what hygiene needs to know."""

    contender_a: str
    contender_b: str
    choice: str  # the vote cast blind: a, b, tie, both_bad
    style_a: tuple[int, ...] = (0, 0, 0, 0)  # style_of(answer A)
    style_b: tuple[int, ...] = (0, 0, 0, 0)
    user: str = ""
    prompt: str = ""  # the prompt's text, as asked
    voted_at: datetime | None = None
    changed_after_reveal: bool = False  # the user voted again once they knew who was who (before votes were final)
    flagged: str | None = None  # why it cannot count, whatever its vote: no arena held it


@dataclass(frozen=True)
class Interval:
    score: float
    low: float
    high: float


@dataclass(frozen=True)
class Standing:
    contender: str
    rank: int
    score: Interval  # style-controlled: what ranks
    plain: Interval  # Bradley-Terry without style control
    wins: int
    ties: int
    losses: int
    provisional: bool  # fewer counted battles than the leaderboard's minimum
    retired: bool  # an adapter version no longer in the adapters folder

    @property
    def battles(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def flags(self) -> str:
        """ "provisional", "retired", both or neither, as the tables show it."""
        return ", ".join(word for word, on in (("provisional", self.provisional), ("retired", self.retired)) if on)

    @property
    def win_rate(self) -> float:
        """Share of battles won, a tie counting half."""
        return (self.wins + self.ties / 2) / self.battles


@dataclass(frozen=True)
class HeldOut:
    """An adapter version's latest offline evaluation (`python -m models evaluate`): its preference accuracy on
    an export's held-out pairs, with its interval, and the base model's on the same pairs."""

    accuracy: float
    low: float
    high: float
    base_accuracy: float
    pairs: int

    @classmethod
    def of(cls, adapter: Adapter) -> HeldOut | None:
        if (evaluation := adapter.latest_evaluation()) is None:
            return None
        ours, base = evaluation["scores"]["adapter"], evaluation["scores"][BASE]
        return cls(ours["accuracy"], *ours["accuracy_interval"], base["accuracy"], ours["pairs"])


@dataclass(frozen=True)
class Leaderboard:
    standings: list[Standing]
    stored: int  # battles in the database
    counted: int  # battles the scores are fitted on
    not_counted: dict[str, int] = field(default_factory=dict)  # reason -> battles
    changed_after_reveal: int = 0  # counted with the vote cast blind, not the later one
    style_coefficients: dict[str, float] = field(default_factory=dict)  # Elo points per standard deviation
    min_battles: int = 0
    held_out: dict[str, HeldOut] = field(default_factory=dict)  # contender -> its offline evaluation, if any


# Reading battles ----------------------------------------------------------------------------------


async def outcomes(sessions: async_sessionmaker[AsyncSession], user_id: str | None = None) -> list[Outcome]:
    """Every voted battle (or one user's: `users.id`), oldest vote first, with its contenders' versions and
    answers' style. A battle awaiting its vote is not an outcome yet: nothing may show who is in it."""
    answer_a, answer_b, prompt = aliased(Generation), aliased(Generation), aliased(Step)
    # Columns, not ORM objects: a board reads every battle, and entities cost ~5x as much to load.
    query = (
        select(
            answer_a.adapter,
            answer_a.adapter_version,
            answer_a.completion,
            answer_b.adapter,
            answer_b.adapter_version,
            answer_b.completion,
            Battle.blind_choice,
            Battle.choice,
            Battle.user_id,
            Battle.voted_at,
            Battle.flagged,
            prompt.output,
        )
        .join(answer_a, answer_a.step_id == Battle.answer_a)
        .join(answer_b, answer_b.step_id == Battle.answer_b)
        .join(prompt, prompt.id == Battle.prompt_id)
        .where(Battle.blind_choice.is_not(None))
        .order_by(Battle.voted_at, Battle.id)
    )
    if user_id is not None:
        query = query.where(Battle.user_id == user_id)
    async with sessions() as session:
        rows = await session.execute(query)
        return [
            Outcome(
                contender_a=contender_key(adapter_a, version_a),
                contender_b=contender_key(adapter_b, version_b),
                choice=blind_choice,
                style_a=style_of(completion_a),
                style_b=style_of(completion_b),
                user=user,
                prompt=prompt_text or "",
                voted_at=voted_at,
                changed_after_reveal=choice != blind_choice,
                flagged=flagged,
            )
            for (
                adapter_a,
                version_a,
                completion_a,
                adapter_b,
                version_b,
                completion_b,
                blind_choice,
                choice,
                user,
                voted_at,
                flagged,
                prompt_text,
            ) in rows
        ]


async def current_board(
    sessions: async_sessionmaker[AsyncSession], adapters: AdapterDirectory, settings: Settings
) -> Leaderboard:
    """The leaderboard of every stored battle, as the app and the command line show it."""
    return board_of(await outcomes(sessions), adapters, settings)


def board_of(battles: list[Outcome], adapters: AdapterDirectory, settings: Settings) -> Leaderboard:
    """The leaderboard of `battles`: the adapters' present versions are current (and carry their offline
    evaluations), hygiene and the provisional mark as configured."""
    board = standings(battles, current_contenders(adapters), settings.arena_min_battles, settings.arena_daily_votes)
    return with_held_out(board, adapters)


def with_held_out(board: Leaderboard, adapters: AdapterDirectory) -> Leaderboard:
    """The board with each present adapter version's offline evaluation, to show beside its arena score."""
    held_out = {contender_of(adapter): score for adapter in adapters.list() if (score := HeldOut.of(adapter))}
    return replace(board, held_out=held_out)


def current_contenders(adapters: AdapterDirectory) -> set[str]:
    """The contenders that can still be drawn: the base model and each adapter's present version."""
    return {contender_of(adapter) for adapter in [None, *adapters.list()]}


# Vote hygiene -------------------------------------------------------------------------------------


def counted(battles: list[Outcome], daily_cap: int) -> tuple[list[Outcome], Counter[str]]:
    """The battles that count, and why the others do not.

    In the order voted: a flagged battle (no arena held it) never counts; a user's first battle on a prompt
    counts, later ones on the same prompt (asked again to vote again) do not; of the rest, at most `daily_cap`
    per user per UTC day count, so that one eager user cannot decide the board alone; and of those, no user's
    beyond twice the median user's count, as the export's rule 9 (chat/fair_share.py), so that a few users
    far more active than the team cannot either, over days; and none of a user who votes against the rest of
    the team (`against_the_team`).
    """
    ordered = sorted(battles, key=lambda battle: battle.voted_at or datetime.min)
    seen: set[tuple[str, str]] = set()
    per_day: Counter[tuple[str, Any]] = Counter()
    kept, dropped = [], Counter()
    for battle in ordered:
        if battle.flagged:
            dropped[battle.flagged] += 1
            continue
        prompt = (battle.user, prompt_key([battle.prompt], []))
        day = (battle.user, battle.voted_at.date() if battle.voted_at else None)
        if prompt in seen:
            dropped[REPEATED_PROMPT] += 1
            continue
        seen.add(prompt)
        if per_day[day] >= daily_cap:
            dropped[OVER_DAILY_CAP] += 1
            continue
        per_day[day] += 1
        kept.append(battle)
    cap, capped = UserCap(Counter(battle.user for battle in kept)), []
    for battle in kept:
        if cap.admit(battle.user):
            capped.append(battle)
        else:
            dropped[OVER_USER_CAP] += 1
    contrary = against_the_team(capped)
    dropped[AGAINST_THE_TEAM] += sum(battle.user in contrary for battle in capped)
    return [battle for battle in capped if battle.user not in contrary], +dropped


def against_the_team(battles: list[Outcome]) -> set[str]:
    """The users whose decisive votes pick the side the rest of the voters disfavour more often than chance
    allows.

    For each of a user's decisive votes, q is the rest's share of decisive wins for the side the user picked,
    between the same two contenders (a win added to each side, so that one vote decides nothing); the vote goes
    against the rest where q < 1/2. Were the user voting as the rest do, each vote would go against them with
    probability min(q, 1 - q), at most m over the user's votes, so the count against is at most binomial(n, m).
    A count in that binomial's tail beyond AGAINST_THE_TEAM_P is not chance.
    """
    decisive = Counter(
        (battle.user, *((battle.contender_a, battle.contender_b)[:: 1 if battle.choice == "a" else -1]))
        for battle in battles
        if battle.choice in ("a", "b")
    )
    wins: Counter[tuple[str, str]] = Counter()
    by_user: defaultdict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for (user, winner, loser), votes in decisive.items():
        wins[winner, loser] += votes
        by_user[user].append((winner, loser, votes))
    contrary = set()
    for user, votes in by_user.items():
        shares = []
        for winner, loser, count in votes:
            rest_won, rest_lost = wins[winner, loser] - count, wins[loser, winner] - decisive[user, loser, winner]
            shares += [(rest_won + 1) / (rest_won + rest_lost + 2)] * count
        leaning = [share for share in shares if share != 0.5]
        against = sum(share < 0.5 for share in leaning)
        chance = max((min(share, 1 - share) for share in leaning), default=0.5)
        if against and binomial_tail(len(leaning), against, chance) < AGAINST_THE_TEAM_P:
            contrary.add(user)
    return contrary


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ binomial(n, p), summed in log space so that thousands of votes do not overflow."""
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)
        for j in range(k, n + 1)
    ]
    top = max(log_terms)
    return math.exp(top) * sum(math.exp(term - top) for term in log_terms)


# The models ---------------------------------------------------------------------------------------


def style_differences(battles: list[Outcome]) -> np.ndarray:
    """Per battle and style feature: (A - B) / (A + B), 0 where both are 0, divided by its spread.

    Normalised by the sum, as LMSYS does, so 900 against 1,000 characters is a small difference and 100
    against 1,000 a large one. Not centred: a difference of 0 must keep meaning "the same style".
    """
    a = np.array([battle.style_a for battle in battles], dtype=float)
    b = np.array([battle.style_b for battle in battles], dtype=float)
    total = a + b
    difference = np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)
    spread = difference.std(axis=0)
    return difference / np.where(spread > 0, spread, 1)


@dataclass
class Design:
    """The battles as a regression: contender indices of A and B, covariates, and A's score."""

    a: np.ndarray
    b: np.ndarray
    covariates: np.ndarray  # battles x features (no columns: plain Bradley-Terry)
    y: np.ndarray
    contenders: int

    @property
    def parameters(self) -> int:
        return self.contenders + self.covariates.shape[1]

    def linear(self, theta: np.ndarray) -> np.ndarray:
        return theta[self.a] - theta[self.b] + self.covariates @ theta[self.contenders :]

    def per_battle_gradient(self, residual: np.ndarray) -> np.ndarray:
        """battles x parameters: each battle's part of the log-likelihood's gradient."""
        gradient = np.zeros((len(residual), self.parameters))
        rows = np.arange(len(residual))
        gradient[rows, self.a] = residual
        gradient[rows, self.b] = -residual
        gradient[:, self.contenders :] = residual[:, None] * self.covariates
        return gradient

    def prior(self) -> np.ndarray:
        """The prior's precision per parameter, the style coefficients' too (per spread of their feature). Without
        one, a contender that wins every battle with answers of another style (shorter, say) gives a coefficient
        that grows without bound and takes the whole effect: both contenders at 1000, intervals of no width."""
        return np.full(self.parameters, PRIOR)


def design_of(battles: list[Outcome], names: list[str]) -> Design:
    """The battles between contenders `names` as the style-controlled regression."""
    index = {name: position for position, name in enumerate(names)}
    a = np.array([index[battle.contender_a] for battle in battles], dtype=int)
    b = np.array([index[battle.contender_b] for battle in battles], dtype=int)
    y = np.array([A_SCORE[battle.choice] for battle in battles])
    return Design(a, b, style_differences(battles), y, len(names))


def fit(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """The maximum a posteriori parameters (strengths in log-odds, then style coefficients) by Newton's
    method, and the Hessian of the negative log-posterior there (what the bootstrap steps with)."""
    theta, prior = np.zeros(design.parameters), design.prior()
    count = design.contenders
    for _ in range(NEWTON_STEPS):
        p = 1 / (1 + np.exp(-design.linear(theta)))
        residual, weight = design.y - p, p * (1 - p)
        gradient = (
            np.r_[
                np.bincount(design.a, residual, count) - np.bincount(design.b, residual, count),
                design.covariates.T @ residual,
            ]
            - prior * theta
        )
        hessian = _hessian(design, weight) + np.diag(prior)
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]  # lstsq: a style column may be all zero
        theta += step
        if np.abs(step).max() < TOLERANCE:
            break
    return theta, hessian


def _hessian(design: Design, weight: np.ndarray) -> np.ndarray:
    """Fisher information of the logistic likelihood, built from the design's structure: each battle touches
    only its two contenders and the covariates, so no battles x parameters matrix is formed."""
    count = design.contenders
    hessian = np.zeros((design.parameters, design.parameters))
    pair = np.bincount(design.a * count + design.b, weight, count * count).reshape(count, count)
    hessian[:count, :count] = np.diag(pair.sum(axis=0) + pair.sum(axis=1)) - pair - pair.T
    weighted = weight[:, None] * design.covariates
    for feature in range(design.covariates.shape[1]):
        column = weighted[:, feature]
        hessian[:count, count + feature] = np.bincount(design.a, column, count) - np.bincount(design.b, column, count)
    hessian[count:, :count] = hessian[:count, count:].T
    hessian[count:, count:] = design.covariates.T @ weighted
    return hessian


def bootstrap(designs: list[Design], fits: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """rounds x parameters per design: the parameters refitted on battles resampled with replacement.

    Each round takes one Newton step from the full data's fit, with its Hessian, on the resampled
    battles (the one-step bootstrap): a full refit per round would cost 1,000 fits, this costs one
    matrix product, and tests/test_leaderboard.py checks it agrees with full refits. All designs share
    the same resamples (they describe the same battles).
    """
    battles = len(designs[0].y)
    gradients, steps = [], []
    for design, (theta, hessian) in zip(designs, fits, strict=True):
        p = 1 / (1 + np.exp(-design.linear(theta)))
        gradients.append(design.per_battle_gradient(design.y - p))
        steps.append(np.linalg.pinv(hessian))
    # float32 for the one big product: counts are small integers, and the sums' rounding (~1e-7 of the
    # largest) is far below the resampling spread the intervals are made of.
    per_battle = np.hstack(gradients).astype(np.float32)
    rng = np.random.default_rng(SEED)
    counts = np.empty((BOOTSTRAP_CHUNK, battles), dtype=np.float32)
    sums = np.empty((BOOTSTRAP_ROUNDS, per_battle.shape[1]))
    for start in range(0, BOOTSTRAP_ROUNDS, BOOTSTRAP_CHUNK):
        rounds = min(BOOTSTRAP_CHUNK, BOOTSTRAP_ROUNDS - start)
        for row in range(rounds):  # how often each battle is drawn in n draws with replacement
            counts[row] = np.bincount(rng.integers(0, battles, battles, dtype=np.int32), minlength=battles)
        sums[start : start + rounds] = counts[:rounds] @ per_battle
    samples, column = [], 0
    for design, (theta, _), step in zip(designs, fits, steps, strict=True):
        gradient = sums[:, column : column + design.parameters] - design.prior() * theta
        samples.append(theta + gradient @ step)
        column += design.parameters
    return samples


# The table ----------------------------------------------------------------------------------------


def rank_by_intervals(intervals: list[Interval], ranked: list[bool] | None = None) -> list[int]:
    """1 + how many contenders' lower bounds lie above this one's upper bound, among the `ranked` ones (default
    all): a provisional contender's interval, on too few battles to rank, puts nobody below it."""
    counting = [other for other, on in zip(intervals, ranked or [True] * len(intervals), strict=True) if on]
    return [1 + sum(other.low > this.high for other in counting) for this in intervals]


def standings(
    battles: list[Outcome], current: set[str] | None = None, min_battles: int = 0, daily_cap: int | None = None
) -> Leaderboard:
    """The leaderboard of `battles`, best first. `current`: the contenders that can still be drawn (BASE and
    the adapters' present versions); any other is retired. None: nothing is retired."""
    kept, dropped = counted(battles, daily_cap if daily_cap is not None else len(battles) + 1)
    names = sorted({b.contender_a for b in kept} | {b.contender_b for b in kept})
    board = Leaderboard(
        standings=[],
        stored=len(battles),
        counted=len(kept),
        not_counted=dict(sorted(dropped.items())),
        changed_after_reveal=sum(battle.changed_after_reveal for battle in kept),
        min_battles=min_battles,
    )
    if not names:
        return board
    style = design_of(kept, names)
    plain = replace(style, covariates=np.zeros((len(kept), 0)))
    fits = [fit(style), fit(plain)]
    style_samples, plain_samples = bootstrap([style, plain], fits)

    count = len(names)
    scores = elo_intervals(fits[0][0][:count], style_samples[:, :count])
    plains = elo_intervals(fits[1][0][:count], plain_samples[:, :count])
    results: dict[str, Counter[str]] = defaultdict(Counter)
    for battle in kept:
        score = A_SCORE[battle.choice]
        for contender, result in ((battle.contender_a, score), (battle.contender_b, 1 - score)):
            results[contender][{1.0: "wins", 0.5: "ties", 0.0: "losses"}[result]] += 1
    ranks = rank_by_intervals(scores, [results[name].total() >= min_battles for name in names])
    table = [
        Standing(
            contender=name,
            rank=rank,
            score=score,
            plain=plain,
            wins=results[name]["wins"],
            ties=results[name]["ties"],
            losses=results[name]["losses"],
            provisional=results[name].total() < min_battles,
            retired=current is not None and name not in current,
        )
        for name, score, plain, rank in zip(names, scores, plains, ranks, strict=True)
    ]
    table.sort(key=lambda standing: (-standing.score.score, standing.contender))
    coefficients = {name: float(ELO * value) for name, value in zip(STYLE, fits[0][0][count:], strict=True)}
    return replace(board, standings=table, style_coefficients=coefficients)


def elo_intervals(strengths: np.ndarray, sampled: np.ndarray) -> list[Interval]:
    """Strengths (log-odds) and their bootstrap samples (rounds x contenders) as Elo scores with 95%
    intervals. Each round is centred like the fit, so an interval is about standing, not about the scale."""
    centre = strengths.mean()
    centred = sampled - sampled.mean(axis=1, keepdims=True) + centre
    low, high = np.percentile(centred, [2.5, 97.5], axis=0)
    # Where every round gives the same number (identical battles), its percentiles may differ in the last bit.
    low, high = np.minimum(low, strengths), np.maximum(high, strengths)
    elo = MEAN_SCORE + ELO * (np.stack([strengths, low, high]) - centre)
    return [Interval(float(score), float(lo), float(hi)) for score, lo, hi in elo.T]


def objections_to_promoting(board: Leaderboard, candidate: str, default: str) -> list[str]:
    """Why the evidence does not (yet) support `candidate` replacing `default`; none when it does: the
    candidate is not provisional and its interval lies entirely above the default's."""
    standing = {row.contender: row for row in board.standings}
    ours, theirs = standing.get(candidate), standing.get(default)
    if ours is None:
        return [f"{candidate} has no counted battles"]
    objections = []
    if ours.provisional:
        objections.append(
            f"{candidate} is provisional ({ours.battles} counted battles of the {board.min_battles} needed)"
        )
    if theirs is None:
        objections.append(f"the default, {default}, has no counted battles to compare with")
    elif ours.score.low <= theirs.score.high:
        objections.append(
            f"{candidate}'s interval ({ours.score.low:.0f} to {ours.score.high:.0f}) does not clear "
            f"{default}'s ({theirs.score.low:.0f} to {theirs.score.high:.0f})"
        )
    return objections


# The table's words: English on the command line; the app gives its user's language's (chat/ui/texts.py).
TABLE_WORDS = {
    "rank": "rank",
    "contender": "contender",
    "score": "score (95%)",
    "battles": "battles (W/T/L)",
    "held_out": "held-out accuracy",
    "provisional_one": "provisional: 1 battle, too few to rank",
    "provisional": "provisional: {battles} battles, too few to rank",
    "retired": "retired",
    "no_battles": "No battles yet.",
    "no_counted": "No counted battles yet ({counts}).",
    "counted": "{counted} of {stored} battles counted",
}


def provisional_words(standing: Standing, words: dict[str, str] = TABLE_WORDS) -> str:
    """What stands in for a provisional contender's rank and score: its battles, too few to rank on."""
    return words["provisional_one"] if standing.battles == 1 else words["provisional"].format(battles=standing.battles)


def standing_line(standing: Standing) -> str:
    """One contender's standing in a sentence, for the command line."""
    retired = ", retired" if standing.retired else ""
    if standing.provisional:
        return f"{standing.contender}: {provisional_words(standing)}{retired}"
    return (
        f"{standing.contender}: rank {standing.rank}, score {standing.score.score:.0f} "
        f"({standing.score.low:.0f} to {standing.score.high:.0f}), {standing.battles} battles{retired}"
    )


def as_markdown(board: Leaderboard, words: dict[str, str] = TABLE_WORDS) -> str:
    """The ranked contenders as a table narrow enough for the chat's column (~800 px): the style-controlled score
    with its interval, battles and held-out accuracy (`--json` and the dashboard have the plain score too); then
    the provisional ones, each on a line saying so, without the rank and score that so few battles do not support:
    one battle gives an interval of no width, a rank of 1 to both sides and a win rate of 100% or 0%."""
    if not board.standings:
        return words["no_battles"] if not board.stored else words["no_counted"].format(counts=counts_line(board, words))
    lines = []
    if ranked := [standing for standing in board.standings if not standing.provisional]:
        lines += [
            f"| {words['rank']} | {words['contender']} | {words['score']} | {words['battles']} | {words['held_out']} |",
            "|---|---|---|---|---|",
        ]
    for standing in ranked:
        score, held_out = standing.score, held_out_cell(board.held_out.get(standing.contender))
        lines.append(
            f"| {standing.rank} | {shown_name(standing, words)} | {score.score:.0f} ({score.low:.0f}-{score.high:.0f}) "
            f"| {standing.battles} ({standing.wins}/{standing.ties}/{standing.losses}) | {held_out} |"
        )
    lines += [""] if ranked else []
    for standing in board.standings:
        if standing.provisional:
            held_out = held_out_cell(board.held_out.get(standing.contender))
            also = f"; {words['held_out']} {held_out}" if held_out else ""
            lines.append(f"- {shown_name(standing, words)}: {provisional_words(standing, words)}{also}")
    lines += ["", counts_line(board, words) + "."]
    return "\n".join(lines).lstrip("\n")


def shown_name(standing: Standing, words: dict[str, str]) -> str:
    return f"{standing.contender} ({words['retired']})" if standing.retired else standing.contender


def held_out_cell(score: HeldOut | None) -> str:
    """An offline evaluation beside the arena score: "83% (71-93%), base 52%"."""
    if score is None:
        return ""
    return f"{score.accuracy:.0%} ({score.low * 100:.0f}-{score.high:.0%}), base {score.base_accuracy:.0%}"


def counts_line(board: Leaderboard, words: dict[str, str] = TABLE_WORDS) -> str:
    """Battles stored and counted, and why the rest are not."""
    line = words["counted"].format(counted=board.counted, stored=board.stored)
    reasons = [f"{count} {reason}" for reason, count in board.not_counted.items()]
    if board.changed_after_reveal:
        reasons.append(f"{board.changed_after_reveal} changed after the reveal count as first cast")
    return line + (f" ({'; '.join(reasons)})" if reasons else "")


def as_json(board: Leaderboard) -> str:
    """The leaderboard for scripts: every standing with both scores and its flags, and the counts."""
    data = asdict(board)
    for standing, row in zip(board.standings, data["standings"], strict=True):
        row.update(battles=standing.battles, win_rate=standing.win_rate)
    return json.dumps(data, indent=2, ensure_ascii=False)
