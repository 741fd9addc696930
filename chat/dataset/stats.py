"""Counts of conversations, feedback and the preference data they give, overall and per adapter.

    python -m chat stats

The pairs and KTO rows are counted by the export's own reading and chat/dataset/pairing.py, so they are
what `python -m chat export` writes with no filters, less any rows the export's card reports as
left out for a missing image file or text LLaMA-Factory cannot carry. The rows the quality rules
leave out (identical answers, more rows than a prompt or a user may give) are counted on lines of their own;
each column caps near-duplicate prompts and each user's rows by itself, as `export --adapter` would.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from sqlalchemy.ext.asyncio import AsyncEngine

from chat.dataset.export import StoredThread, read_threads
from chat.dataset.pairing import IDENTICAL, NEAR_DUPLICATE, OVER_USER_CAP, Label, Pair
from chat.dataset.quality import PromptCap
from chat.fair_share import UserCap

ALL = "all"
# Printed in this order; reasons (one line per code) come after the thumbs.
BEFORE_REASONS = ("conversations", "answers finished", "answers stopped", "answers error", "thumbs up", "thumbs down")
AFTER_REASONS = (
    "comparisons a",
    "comparisons b",
    "comparisons tie",
    "comparisons both_bad",
    "corrections",
    "DPO pairs comparison",
    "DPO pairs thumbs",
    "DPO pairs correction",
    f"DPO pairs left out: {IDENTICAL}",
    f"DPO pairs left out: {NEAR_DUPLICATE}",
    f"DPO pairs left out: {OVER_USER_CAP}",
    "KTO rows desirable",
    "KTO rows undesirable",
    f"KTO rows left out: {NEAR_DUPLICATE}",
    f"KTO rows left out: {OVER_USER_CAP}",
)

Tally = dict[str, Counter[str]]  # column (ALL or an adapter group) -> metric -> count
Caps = dict[tuple[str, str], PromptCap]  # (column, "DPO pairs" or "KTO rows") -> rule 8's count
UserRows = dict[tuple[str, str], Counter[str]]  # (column, data) -> user id -> rows kept by rule 8: rule 9's input


def tally_thread(thread: StoredThread, tally: Tally, caps: Caps, users: dict[tuple[str, str], UserCap]) -> None:
    """Add one thread's counts, each under ALL and under the adapter (group) of the answers it is about."""

    def add(metric: str, answer_ids: tuple[str, ...]) -> None:
        for column in (ALL, thread.adapter_group(answer_ids)):
            tally[column][metric] += 1

    if thread.answers:
        for column in {ALL, *(thread.adapter_group((answer.id,)) for answer in thread.answers.values())}:
            tally[column]["conversations"] += 1
    for answer in thread.answers.values():
        add(f"answers {answer.ended}", (answer.id,))
        if answer.rating:
            add("thumbs up" if answer.rating.up else "thumbs down", (answer.id,))
        for reason in answer.reasons:
            add(f"reason {reason}", (answer.id,))
    for comparisons in thread.comparisons.values():
        for comparison in comparisons:
            add(f"comparisons {comparison.choice}", (comparison.answer_a, comparison.answer_b))
    for correction in thread.corrections.values():
        add("corrections", (correction.answer_id,))
    for judged in thread.judged():
        for pair in judged.judgement.identical:
            add(f"DPO pairs left out: {IDENTICAL}", pair.answers)
    for data, kind, item in rows(thread):
        prompt = thread.prompt(item).key
        for column in (ALL, thread.adapter_group(item.answers)):
            if not caps[column, data].admit(prompt):
                tally[column][f"{data} left out: {NEAR_DUPLICATE}"] += 1
            elif not users[column, data].admit(thread.user_id):
                tally[column][f"{data} left out: {OVER_USER_CAP}"] += 1
            else:
                tally[column][f"{data} {kind}"] += 1


def count_user_rows(thread: StoredThread, caps: Caps, counts: UserRows) -> None:
    """Rule 9's first pass: add the rows of the thread's user that rule 8 keeps, per column and kind of data."""
    for data, _, item in rows(thread):
        prompt = thread.prompt(item).key
        for column in (ALL, thread.adapter_group(item.answers)):
            if caps[column, data].admit(prompt) and thread.user_id is not None:
                counts[column, data][thread.user_id] += 1


def rows(thread: StoredThread) -> list[tuple[str, str, Pair | Label]]:
    """Every pair and KTO row the thread gives, as (data, kind, item), in the export's order."""
    found: list[tuple[str, str, Pair | Label]] = []
    for judged in thread.judged():
        found += [("DPO pairs", pair.rule, pair) for pair in judged.judgement.pairs]
        labels = judged.judgement.labels
        found += [("KTO rows", "desirable" if label.desirable else "undesirable", label) for label in labels]
    return found


class UserCaps(dict[tuple[str, str], UserCap]):
    """Rule 9's cap for each (column, data), from the first pass's counts; a key it never counted caps nothing."""

    def __init__(self, counts: UserRows) -> None:
        super().__init__()
        self.counts = counts

    def __missing__(self, key: tuple[str, str]) -> UserCap:
        self[key] = UserCap(self.counts.get(key, Counter()))
        return self[key]


async def collect(engine: AsyncEngine, user_id: str | None = None) -> Tally:
    """The counts of every conversation, or of one user's (`users.id`): two passes, as rule 9 needs."""
    counts: UserRows = defaultdict(Counter)
    first_caps: Caps = defaultdict(PromptCap)
    async for thread in read_threads(engine, "Counting each user's rows", user_id=user_id):
        count_user_rows(thread, first_caps, counts)
    tally: Tally = defaultdict(Counter)
    caps: Caps = defaultdict(PromptCap)
    users = UserCaps(counts)
    async for thread in read_threads(engine, "Counting", user_id=user_id):
        tally_thread(thread, tally, caps, users)
    return tally


def table(tally: Tally) -> str:
    """A plain-text table: a line per metric, a column for all answers and one per adapter group."""
    columns = [ALL, *sorted(column for column in tally if column != ALL)]
    reasons = sorted({metric for counts in tally.values() for metric in counts if metric.startswith("reason ")})
    metrics = [*BEFORE_REASONS, *reasons, *AFTER_REASONS]
    cells = [["", *columns], *([metric, *(str(tally[column][metric]) for column in columns)] for metric in metrics)]
    widths = [max(len(row[index]) for row in cells) for index in range(len(columns) + 1)]
    lines = []
    for name, *counts in cells:
        numbers = (count.rjust(width) for count, width in zip(counts, widths[1:], strict=True))
        lines.append("  ".join([name.ljust(widths[0]), *numbers]))
    return "\n".join(lines)
