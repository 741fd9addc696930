"""What users said about answers, turned into preference data: DPO pairs and KTO labels.

Pure functions over plain records, with no database: chat/dataset/export.py and chat/dataset/stats.py read the
records, and tests/test_pairing.py states each rule directly. RULES is the rule book in words;
docs/preference-data.md and every exported dataset card print it verbatim. The two quality rules that are not about
one user message, identical answers and near-duplicate prompts, are defined here too (what counts as
the same text, and how many rows one prompt may give; the same prompt is models/prompt_key.py, which the
training split and the leaderboard share), so that the export and `python -m chat stats` apply one definition.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations

from chat.fair_share import OVER_MEDIAN
from models.backend import Ended

# One prompt asked again and again (a demo question everyone tries, a user regenerating and judging many
# times) must not outweigh the rest: DPO and KTO weight every row alike. Four is what one question's
# answers judged every way the chat offers give (a comparison, thumbs on a third answer, a correction).
MAX_ROWS_PER_PROMPT = 4
# Why a pair or row is left out by the quality rules, as the card and `python -m chat stats` name it.
IDENTICAL = "identical answers (rule 5)"
NEAR_DUPLICATE = f"more than {MAX_ROWS_PER_PROMPT} rows for one prompt (rule 8)"
OVER_USER_CAP = f"more than {OVER_MEDIAN} times the median user's rows (rule 9)"

RULES = f"""\
Answers are judged per user message, among its answers (regenerated answers are siblings).

- **Only finished answers count.** Stopped and failed answers never become a chosen, rejected or KTO
  row, and a comparison that involves one is ignored. Notices and refusals are not answers at all.
- **Only clean conversations count.** Every earlier answer the model was shown with a question must
  have finished; if one was stopped, failed or deleted, the answers to that question are left out.
- **A pair needs one prompt.** Two answers are paired only when the model was shown the same
  system prompt, the same earlier turns and the same document pages for both, as regenerating
  does. A row's prompt is that whole conversation: the system prompt, each earlier question (with
  its images) and answer, and the question itself (with its images, and the document pages shown
  with it: their images as the model saw them and their text under their citations).

DPO pairs (chosen, rejected):

1. **Comparison** of A with B: "A is better" gives (A, B), "B is better" gives (B, A); "tie" and
   "both bad" give no pair.
2. **Thumbs**: an answer rated up and a sibling rated down give (up, down).
3. **Conflicts**: when a comparison and thumbs speak about the same two answers, the later one wins:
   the comparison's time against the later of the two ratings' times (at equal times, the
   comparison). Thumbs speak about two answers only when one is up and the other down. At most one
   pair comes from any two answers.
4. **Correction** of answer X gives (the user's text, X), whatever X's rating. Its prompt is X's
   conversation. A blank correction counts as none.
5. **Identical answers**: a pair whose chosen and rejected texts are the same once each run of
   whitespace is one space and the ends are stripped is dropped, as it teaches nothing; the card
   counts it among the rows left out.

KTO rows (completion, label):

6. Each answer with a signal gets one row, labelled by its latest signal: thumbs up desirable,
   thumbs down undesirable; winning a comparison desirable, losing one undesirable, "both bad"
   undesirable for both; a tie is no signal. At equal times the comparison counts.
7. Each correction gets a desirable row, also when the answer it corrects was stopped or failed
   (that answer is not in the row); its conversation must still be clean.

Every export:

8. **Near-duplicate prompts**: one prompt gives at most {MAX_ROWS_PER_PROMPT} rows of an export (after its
   selection), so that no question asked again and again outweighs the rest; the first ones in the
   export's order are kept (conversations in the order of their ids, their questions oldest first)
   and the card counts the others among the rows left out. Two prompts are the same when their
   texts (system prompt, earlier turns, question, document text) match once NFKC-normalised,
   casefolded, stripped of punctuation and with each run of whitespace one space, and they show
   the same images and document pages in the same order.
9. **No user outweighs the team**: one user gives at most {OVER_MEDIAN} times as many rows as the
   median user of the export (counted after its selection and rules 5 and 8, among the users with a
   row); their first ones in the export's order are kept and the card counts the others among the
   rows left out. Conversations without a user are not capped.
"""


@dataclass(frozen=True)
class Rating:
    """A thumbs up or down, as last set."""

    up: bool
    at: datetime


@dataclass(frozen=True)
class Answer:
    """A model's answer to a user message, and what the model was shown besides that message."""

    id: str
    text: str  # as the model wrote it (the generation record's completion), not as the page showed it
    ended: str  # an Ended value as stored: finished, stopped or error
    context: tuple[str, ...]  # the earlier answers shown, with their questions, oldest first
    system_prompt: str  # its text
    rating: Rating | None
    pages: tuple[tuple[str, int], ...]  # the document pages shown with the question: (sha256, page number)

    def shown_same_prompt(self, other: Answer) -> bool:
        return (self.context, self.system_prompt, self.pages) == (other.context, other.system_prompt, other.pages)


@dataclass(frozen=True)
class Comparison:
    answer_a: str
    answer_b: str
    choice: str  # a, b, tie, both_bad
    at: datetime


@dataclass(frozen=True)
class Correction:
    answer_id: str
    text: str


@dataclass(frozen=True)
class Response:
    """What a pair or a KTO row is about: answer `answer_id`, or the user's correction of it."""

    answer_id: str
    corrected: bool = False


@dataclass(frozen=True)
class Pair:
    chosen: Response
    rejected: str  # always a model's answer
    rule: str  # comparison, thumbs, correction

    @property
    def answers(self) -> tuple[str, ...]:
        """The model answers this pair judges (a correction pair judges only the corrected one)."""
        return tuple(dict.fromkeys((self.chosen.answer_id, self.rejected)))


@dataclass(frozen=True)
class Label:
    response: Response
    desirable: bool
    rule: str  # the signal it came from: thumbs, comparison, correction

    @property
    def answers(self) -> tuple[str, ...]:
        """The model answer this row judges (for a correction, the answer it replaces)."""
        return (self.response.answer_id,)


@dataclass(frozen=True)
class Judgement:
    pairs: list[Pair]
    labels: list[Label]
    identical: list[Pair]  # pairs dropped because their two texts are the same (rule 5)


def normal_text(text: str) -> str:
    """The text as rule 5 compares answers: each run of whitespace one space, the ends stripped."""
    return " ".join(text.split())


def judge(
    answers: Sequence[Answer],
    comparisons: Sequence[Comparison],
    corrections: Sequence[Correction],
    finished: Container[str],
) -> Judgement:
    """Pairs and labels from the answers to one user message (oldest first) and the user's signals on them.

    `finished` holds the ids of the thread's finished answers whose questions are stored: an answer's
    conversation is clean when every answer in its context is one of them. Ties in time go to the
    later signal in `comparisons`' order, so callers pass them in a fixed order. Pairs whose two texts
    are the same (rule 5) are set apart in `identical`, for the card to count.
    """
    clean = {answer.id: answer for answer in answers if all(earlier in finished for earlier in answer.context)}
    counting = [answer for answer in clean.values() if answer.ended == Ended.FINISHED]
    counted = {answer.id for answer in counting}
    usable_comparisons = [c for c in comparisons if c.answer_a in counted and c.answer_b in counted]
    usable_corrections = [c for c in corrections if c.text.strip() and c.answer_id in clean]
    pairs = [
        *_answer_pairs(counting, usable_comparisons),
        *(
            Pair(Response(c.answer_id, corrected=True), c.answer_id, "correction")
            for c in usable_corrections
            if c.answer_id in counted
        ),
    ]
    texts = {answer.id: answer.text for answer in counting}
    corrected = {c.answer_id: c.text for c in usable_corrections}

    def identical(pair: Pair) -> bool:
        chosen = corrected if pair.chosen.corrected else texts
        return normal_text(chosen[pair.chosen.answer_id]) == normal_text(texts[pair.rejected])

    return Judgement(
        pairs=[pair for pair in pairs if not identical(pair)],
        identical=[pair for pair in pairs if identical(pair)],
        labels=[
            *_answer_labels(counting, usable_comparisons),
            *(Label(Response(c.answer_id, corrected=True), True, "correction") for c in usable_corrections),
        ],
    )


@dataclass(frozen=True, order=True)
class _Signal:
    """One thing the user said, ordered by when; at equal times a comparison (explicit: 1) beats thumbs (0)."""

    at: datetime
    explicit: int
    # What it implies: a pair, a label, or None (a comparison that prefers neither answer).
    implies: Pair | Label | None = field(compare=False)


def _latest(signals: list[_Signal]) -> _Signal:
    """The latest signal; of several at the same time and kind, the last one given."""
    return max(reversed(signals))


def _answer_pairs(answers: list[Answer], comparisons: list[Comparison]) -> list[Pair]:
    pairs = []
    for first, second in combinations(answers, 2):
        if not first.shown_same_prompt(second):
            continue
        signals = [
            _Signal(c.at, 1, _preferred(c)) for c in comparisons if {c.answer_a, c.answer_b} == {first.id, second.id}
        ]
        if first.rating and second.rating and first.rating.up != second.rating.up:
            up, down = (first, second) if first.rating.up else (second, first)
            at = max(first.rating.at, second.rating.at)
            signals.append(_Signal(at, 0, Pair(Response(up.id), down.id, "thumbs")))
        if signals and (pair := _latest(signals).implies):
            pairs.append(pair)
    return pairs


def _winner(comparison: Comparison) -> str | None:
    """The answer a comparison prefers; None for a tie or "both bad"."""
    return {"a": comparison.answer_a, "b": comparison.answer_b}.get(comparison.choice)


def _preferred(comparison: Comparison) -> Pair | None:
    """The pair a comparison gives, (winner, the other answer); None when it prefers neither."""
    if (winner := _winner(comparison)) is None:
        return None
    other = comparison.answer_b if winner == comparison.answer_a else comparison.answer_a
    return Pair(Response(winner), other, "comparison")


def _answer_labels(answers: list[Answer], comparisons: list[Comparison]) -> list[Label]:
    labels = []
    for answer in answers:
        signals = []
        if answer.rating:
            signals.append(_Signal(answer.rating.at, 0, Label(Response(answer.id), answer.rating.up, "thumbs")))
        for comparison in comparisons:
            if answer.id in (comparison.answer_a, comparison.answer_b) and comparison.choice != "tie":
                won = answer.id == _winner(comparison)
                signals.append(_Signal(comparison.at, 1, Label(Response(answer.id), won, "comparison")))
        if signals:
            labels.append(_latest(signals).implies)
    return labels
