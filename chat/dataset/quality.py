"""The quality of an export as a whole: the caps on near-duplicate prompts and on one user's rows, and what the
dataset card measures of the rows.

chat/dataset/pairing.py judges one user message at a time; three things need the whole export. Rule 8
(near-duplicate prompts) counts rows per prompt across conversations: PromptCap keeps that count,
and the export and `python -m chat stats` each feed one in the same order, so they agree. Rule 9 (no user
outweighs the team) needs every user's count before the first row is kept: UserCap (chat/fair_share.py)
applies it from a first pass over the same conversations. Measures
is what the card reports of the rows written, so that a dataset's user can see its biases before
training on it: how long each side's answers are (DPO learns a length preference as readily as
any other), the reasons users gave, how many rows each user gave, and whether users who judged the
same answers agreed. It keeps counts, not texts: its memory grows with the rows only by one
digest and user per distinct judged thing, which agreement needs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from chat.dataset.pairing import MAX_ROWS_PER_PROMPT, normal_text


class PromptCap:
    """Rule 8: admits the first MAX_ROWS_PER_PROMPT rows of each prompt (by its models.prompt_key), in order."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()

    def admit(self, prompt: str) -> bool:
        self.rows[prompt] += 1
        return self.rows[prompt] <= MAX_ROWS_PER_PROMPT


@dataclass
class Side:
    """The answers on one side of the rows: chosen or rejected (DPO), desirable or undesirable (KTO)."""

    lengths: Counter[int] = field(default_factory=Counter)  # length in characters -> answers
    reasons: Counter[str] = field(default_factory=Counter)  # reason code of the answer's rating -> answers

    def add(self, text: str, reasons: Iterable[str]) -> None:
        self.lengths[len(text)] += 1
        self.reasons.update(reasons)


@dataclass
class Verdicts:
    """What the users said of one judged thing: the first user and verdict, and whether others differ."""

    user: str
    verdict: bool
    several_users: bool = False
    disagree: bool = False


Said = tuple[str, tuple[str, ...]]  # an answer in a row: its text, and the reasons of its rating


class Measures:
    """Statistics of the rows written, for the card: of DPO pairs (`pairs`) or of KTO rows."""

    def __init__(self, pairs: bool) -> None:
        self.pairs = pairs
        self.sides = {name: Side() for name in (("chosen", "rejected") if pairs else ("desirable", "undesirable"))}
        self.chosen_length: Counter[str] = Counter()  # pairs: "longer", "shorter", "as long" than the rejected
        self.per_user: Counter[str | None] = Counter()  # user id (None: a conversation without one) -> rows
        self.judged: dict[bytes, Verdicts] = {}  # digest of (prompt, answer texts) -> what users said

    def pair(self, user: str | None, prompt: str, chosen: Said, rejected: Said) -> None:
        """A pair written: its user, its models.prompt_key, and its two answers."""
        chosen_side, rejected_side = self.sides.values()
        chosen_side.add(*chosen)
        rejected_side.add(*rejected)
        difference = len(chosen[0]) - len(rejected[0])
        self.chosen_length["longer" if difference > 0 else "shorter" if difference < 0 else "as long"] += 1
        texts = sorted((normal_text(chosen[0]), normal_text(rejected[0])))  # never equal: rule 5
        self._judgement(user, prompt, texts, verdict=texts[0] == normal_text(chosen[0]))

    def label(self, user: str | None, prompt: str, completion: Said, desirable: bool) -> None:
        """A KTO row written: its user, its models.prompt_key, its completion and its label."""
        desirable_side, undesirable_side = self.sides.values()
        (desirable_side if desirable else undesirable_side).add(*completion)
        self._judgement(user, prompt, [normal_text(completion[0])], verdict=desirable)

    def _judgement(self, user: str | None, prompt: str, texts: list[str], verdict: bool) -> None:
        self.per_user[user] += 1
        if user is None:  # a conversation without a user cannot tell one user from several
            return
        key = hashlib.sha256(json.dumps([prompt, texts]).encode()).digest()
        if (said := self.judged.get(key)) is None:
            self.judged[key] = Verdicts(user, verdict)
            return
        said.several_users |= user != said.user
        said.disagree |= verdict != said.verdict

    @property
    def users(self) -> int:
        return sum(user is not None for user in self.per_user)

    def markdown(self) -> list[str]:
        """The card's "Quality" section."""
        rows = self.per_user.total()
        by_user = [count for user, count in self.per_user.items() if user is not None]
        several = [said for said in self.judged.values() if said.several_users]
        sides = self.sides.values()
        reasons = sorted(sum((side.reasons for side in sides), Counter()).items())
        by_count = sorted(reasons, key=lambda item: -item[1])  # most given first; ties by code (stable sort)
        agreeing = sum(not said.disagree for said in several)
        filtered = "identical pairs (rule 5) and rows" if self.pairs else "rows"
        judged = "the same two answer texts" if self.pairs else "the same completion text"
        agreed = "preferred the same answer" if self.pairs else "gave it the same label"
        lengths = [
            f"| pairs whose chosen answer is {longer} | {_share(self.chosen_length[longer], rows)} |"
            for longer in ("longer", "shorter")
        ]
        return [
            "## Quality",
            "",
            f"Measured on the rows written, after {filtered} beyond the cap on near-duplicate prompts (rule 8)",
            "were left out; the table above counts them.",
            "",
            f"| answers | {_cells(self.sides)} |",
            "|---|---|---|",
            f"| mean length (characters) | {_cells(_mean(side.lengths) for side in sides)} |",
            f"| median length (characters) | {_cells(_median(side.lengths) for side in sides)} |",
            *(f"| reason `{reason}` | {_cells(side.reasons[reason] for side in sides)} |" for reason, _ in by_count),
            "",
            "| | |",
            "|---|---|",
            *(lengths if self.pairs else []),
            f"| rows per user: median | {_median(Counter(by_user))} |",
            f"| rows per user: most | {_share(max(by_user, default=0), rows)} |",
            f"| rows of conversations without a user | {self.per_user[None]} |",
            f"| judged by several users | {len(several)} |",
            f"| judged by several users, who agreed | {_share(agreeing, len(several))} |",
            "",
            "Reasons are those of the ratings of the answers in the rows, counted once per row they are in.",
            "Several users judged the same thing when rows of two or more users have the same prompt (as rule 8",
            f"compares prompts) and {judged} (as rule 5 compares answers); they agreed when all {agreed}.",
            "",
        ]


def _cells(values: Iterable[object]) -> str:
    return " | ".join(str(value) for value in values)


def _mean(counts: Counter[int]) -> str:
    total = counts.total()
    return f"{sum(value * count for value, count in counts.items()) / total:.1f}" if total else "-"


def _median(counts: Counter[int]) -> str:
    """The median of values given as value -> how many; the mean of the two middle ones for an even number."""
    total = counts.total()
    if not total:
        return "-"

    def nth(position: int) -> int:
        for value in sorted(counts):
            position -= counts[value]
            if position < 0:
                return value
        raise IndexError(position)

    return f"{(nth((total - 1) // 2) + nth(total // 2)) / 2:.1f}"


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.0%})" if whole else "0 of 0"
