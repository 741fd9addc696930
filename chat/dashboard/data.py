"""What the dashboard shows, read from the database for one scope: a user's own data, or everyone's.

Four views, each a plain table so that the page can plot it and offer it as CSV: the leaderboard of
the battles in scope (chat/arena/leaderboard.py), thumbs per adapter version per day with their reasons,
battles per day (stored and counted), and the preference data the scope gives, by pairing rule
(chat/dataset/stats.py: what `python -m chat export` would write). A scope may narrow everything to one
contender (an adapter version, or the base model).

Nothing here knows who may see what: chat/ui/dashboard.py decides the scope (LOUPE_ADMINS see everyone's).
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chat.arena.leaderboard import Leaderboard, Outcome, adapter_named, board_of, contender_key, counted, outcomes
from chat.dataset.stats import ALL, Tally, collect
from chat.settings import Settings
from chat.store.schema import Feedback, Generation, Step, User
from models.adapters import AdapterDirectory

UP, DOWN = 1, 0  # Feedback.value
NOBODY = ""  # the users.id of no user


@dataclass(frozen=True)
class Scope:
    user_id: str | None  # whose data (users.id); None: everyone's
    contender: str | None = None  # only this contender's answers and battles; None: all


async def scope_for(
    sessions: async_sessionmaker[AsyncSession], user: str, everyone: bool, contender: str | None = None
) -> Scope:
    """The scope of `user` (a login name): everyone's data if `everyone`, else only theirs."""
    if everyone:
        return Scope(None, contender)
    async with sessions() as session:
        user_id = await session.scalar(select(User.id).where(User.identifier == user))
    # A user with no row yet has no data: an id no row has keeps the scope theirs, never everyone's.
    return Scope(user_id or NOBODY, contender)


@dataclass(frozen=True)
class FeedbackDay:
    day: date
    contender: str
    up: int
    down: int

    @property
    def up_share(self) -> float:
        return self.up / (self.up + self.down)


@dataclass
class Dashboard:
    board: Leaderboard
    feedback: list[FeedbackDay]  # by day, then contender
    reasons: dict[str, Counter[str]]  # contender -> reason code -> answers rated with it
    battles_per_day: list[tuple[date, int, int]]  # day, stored, counted
    contenders: list[str] = field(default_factory=list)  # every contender in scope before narrowing: the filter


async def dashboard(
    sessions: async_sessionmaker[AsyncSession], adapters: AdapterDirectory, settings: Settings, scope: Scope
) -> Dashboard:
    """Everything but the dataset sizes (which read every conversation in scope: `dataset_sizes`)."""
    battles = await outcomes(sessions, scope.user_id)
    feedback, reasons = await _feedback(sessions, scope.user_id)
    seen = {b.contender_a for b in battles} | {b.contender_b for b in battles} | {f.contender for f in feedback}
    if scope.contender is not None:
        battles = [b for b in battles if scope.contender in (b.contender_a, b.contender_b)]
        feedback = [f for f in feedback if f.contender == scope.contender]
        reasons = {name: count for name, count in reasons.items() if name == scope.contender}
    board = board_of(battles, adapters, settings)
    return Dashboard(board, feedback, reasons, _per_day(battles, settings.arena_daily_votes), sorted(seen))


async def _feedback(
    sessions: async_sessionmaker[AsyncSession], user_id: str | None
) -> tuple[list[FeedbackDay], dict[str, Counter[str]]]:
    """Thumbs per day and contender (counted in SQL), and reasons per contender (lists: counted here)."""
    contender = (Generation.adapter, Generation.adapter_version)
    day = func.date(Feedback.created_at)
    base = (
        select(Feedback).join(Step, Step.parent_id == Feedback.for_id).join(Generation, Generation.step_id == Step.id)
    )
    if user_id is not None:
        base = base.where(Feedback.user_id == user_id)
    per_day = base.with_only_columns(day, *contender, Feedback.value, func.count()).group_by(
        day, *contender, Feedback.value
    )
    # Only ratings with reasons: most have none, and each row costs a JSON decode.
    with_reasons = base.with_only_columns(*contender, Feedback.reasons).where(
        func.json_array_length(Feedback.reasons) > 0
    )
    async with sessions() as session:
        counts = (await session.execute(per_day)).all()
        reason_rows = (await session.execute(with_reasons)).all()
    days: dict[tuple[date, str], Counter[int]] = defaultdict(Counter)
    for on, adapter, version, value, count in counts:
        days[(_as_date(on), contender_key(adapter, version))][value] += count
    feedback = [FeedbackDay(on, name, votes[UP], votes[DOWN]) for (on, name), votes in sorted(days.items())]
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for adapter, version, codes in reason_rows:
        reasons[contender_key(adapter, version)].update(codes or [])
    return feedback, {name: count for name, count in sorted(reasons.items()) if count}


def _as_date(value: date | datetime | str) -> date:
    """SQL's date(): a date on PostgreSQL, an ISO string on SQLite."""
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else date.fromisoformat(value)


def _per_day(battles: list[Outcome], daily_cap: int) -> list[tuple[date, int, int]]:
    """Battles stored and counted (after hygiene), per UTC day voted."""
    stored = Counter(battle.voted_at.date() for battle in battles if battle.voted_at)
    kept = Counter(battle.voted_at.date() for battle in counted(battles, daily_cap)[0] if battle.voted_at)
    return [(day, stored[day], kept[day]) for day in sorted(stored)]


async def dataset_sizes(engine: AsyncEngine, scope: Scope) -> Tally:
    """The pairs and KTO rows the scope's conversations give, by rule, under ALL and per adapter that gives any
    (name: the export groups by the adapter that wrote an answer, not its version); narrowed to
    `scope.contender`'s adapter when there is one. An adapter that only answered is not named: its answers
    may be the arena's, awaiting a vote, which nothing may tell the writer of."""
    tally = await collect(engine, scope.user_id)
    rules = {
        column: Counter({m: c for m, c in counts.items() if m.startswith(("DPO pairs", "KTO rows"))})
        for column, counts in tally.items()
    }
    if scope.contender is not None:
        name = adapter_named(scope.contender)
        return {name: rules.get(name, Counter())}
    return {ALL: rules.get(ALL, Counter()), **{c: n for c, n in sorted(rules.items()) if c != ALL and n}}


def as_csv(header: list[str], rows: list[list[object]]) -> str:
    """A table as CSV text (what each view's download holds)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
