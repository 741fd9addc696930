"""The user's explicit preferences beyond thumbs: reasons, comparisons of sibling answers, corrections.

Each answer is an assistant message under its own run step; regenerated answers to one user
message (the prompt) are siblings, found through their generation records' `prompt_id`.
Only the owner of a thread may record preferences in it; the callers (chat/app.py) pass the
logged-in user and every method checks that the steps named belong to that user's thread.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from chat.store.outages import CLICKS, patient
from chat.store.rows import NotYours, dialect_insert, owned_by, owned_thread, utcnow
from chat.store.schema import Battle, Comparison, Correction, Feedback, Generation, Step, Thread

CHOICES = ("a", "b", "tie", "both_bad")


@dataclass
class AnswerFeedback:
    """One answer to a prompt, with what the user has said about it so far."""

    id: str
    run_id: str
    prompt_id: str
    ended: str
    rating: int | None = None  # 1 up, 0 down, None unrated
    reasons: list[str] = field(default_factory=list)
    correction: str | None = None


@dataclass
class InThread:
    """What a resumed thread's buttons show: its answers (oldest first), its comparisons, (a, b) -> choice,
    and the battles the arena held in it, (a, b) -> the vote (None until cast)."""

    answers: list[AnswerFeedback]
    comparisons: dict[tuple[str, str], str]
    battles: dict[tuple[str, str], str | None]


class AlreadyVoted(Exception):
    """The battle has its vote: one per battle, cast blind."""


class Preferences:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def answers_to(self, user: str, prompt_id: str) -> list[AnswerFeedback]:
        """The answers to a prompt of `user`'s, oldest first (the order they are numbered in)."""
        async with self.sessions() as session:
            await owned_thread(session, user, prompt_id)
            return await _answers(session, Generation.prompt_id == prompt_id)

    async def answer_for_run(self, user: str, run_id: str) -> AnswerFeedback | None:
        """The answer under a run step: what Chainlit's thumbs (which name the run) are about."""
        async with self.sessions() as session:
            await owned_thread(session, user, run_id)
            answers = await _answers(session, Step.parent_id == run_id)
        return answers[0] if answers else None

    async def answer(self, user: str, answer_id: str) -> AnswerFeedback:
        async with self.sessions() as session:
            await owned_thread(session, user, answer_id)
            answers = await _answers(session, Step.id == answer_id)
        if not answers:
            raise NotYours(f"{answer_id} is not an answer")
        return answers[0]

    async def conversations_answered(self, user: str, completion: str, limit: int) -> list[str]:
        """The user's conversations holding the newest `limit` answers that read `completion`, newest first: where
        a client that sends a whole conversation again (as most chat front ends do) may have got that answer."""
        async with self.sessions() as session:
            found = await session.scalars(
                select(Generation.thread_id)
                .where(Generation.thread_id.in_(owned_by(user)), Generation.completion == completion)
                .order_by(Generation.created_at.desc())
                .limit(limit)
            )
        return list(dict.fromkeys(found))

    async def in_thread(self, user: str, thread_id: str) -> InThread:
        """Every answer in a thread of `user`'s, oldest first, its comparisons and its battles."""
        async with self.sessions() as session:
            if await session.scalar(owned_by(user).where(Thread.id == thread_id)) is None:
                raise NotYours(thread_id)
            answers = await _answers(session, Generation.thread_id == thread_id)
            comparisons = await session.execute(
                select(Comparison.answer_a, Comparison.answer_b, Comparison.choice).where(
                    Comparison.thread_id == thread_id
                )
            )
            battles = await session.execute(
                select(Battle.answer_a, Battle.answer_b, Battle.blind_choice).where(
                    Battle.thread_id == thread_id, Battle.flagged.is_(None)
                )
            )
        return InThread(answers, {(a, b): choice for a, b, choice in comparisons}, {(a, b): c for a, b, c in battles})

    @patient(CLICKS, "a rating's reasons")
    async def set_reasons(self, user: str, answer_id: str, reasons: list[str]) -> bool:
        """Replace the reasons of the answer's rating; False when the answer has no rating to explain."""
        async with self.sessions.begin() as session:
            await owned_thread(session, user, answer_id)
            run_id = await session.scalar(select(Step.parent_id).where(Step.id == answer_id))
            result = await session.execute(
                update(Feedback).where(Feedback.for_id == run_id).values(reasons=reasons, updated_at=utcnow())
            )
        return result.rowcount > 0

    @patient(CLICKS, "a comparison")
    async def compare(self, user: str, answer_a: str, answer_b: str, choice: str) -> None:
        """Record which of two sibling answers is better; a new verdict on the same two replaces the old."""
        async with self.sessions.begin() as session:
            await _compare(session, user, answer_a, answer_b, choice)

    @patient(CLICKS, "a battle")
    async def hold_battle(
        self, user: str, session_id: str, answers: tuple[str, str], contenders: tuple[str, str]
    ) -> None:
        """Record the battle the arena just held in a thread of `user`'s: its blind answers A and B to one
        prompt, who wrote each (adapter names, BASE for none) and the session; a vote settles it (`vote`)."""
        async with self.sessions.begin() as session:
            thread = await owned_thread(session, user, answers[0])
            prompt_id = await _one_prompt(session, *answers)
            now = utcnow()
            session.add(
                Battle(
                    id=str(uuid.uuid4()),
                    thread_id=thread.id,
                    user_id=thread.user_id,
                    prompt_id=prompt_id,
                    answer_a=answers[0],
                    answer_b=answers[1],
                    contender_a=contenders[0],
                    contender_b=contenders[1],
                    session_id=session_id,
                    created_at=now,
                    updated_at=now,
                )
            )

    @patient(CLICKS, "a vote")
    async def vote(self, user: str, answer_a: str, answer_b: str, choice: str) -> tuple[str, str]:
        """Settle the battle the arena held between answers A and B with the user's blind vote, once; the vote
        is also a comparison (for export). Returns the contenders of A and B, to reveal them.

        NotYours unless such a battle, in a thread of `user`'s, awaits its vote; AlreadyVoted once it has one.
        """
        async with self.sessions.begin() as session:
            # The comparison first: it checks the choice and the answers; a refused vote rolls it back.
            thread, _ = await _compare(session, user, answer_a, answer_b, choice)
            held = (Battle.thread_id == thread.id) & (Battle.answer_a == answer_a) & (Battle.answer_b == answer_b)
            now = utcnow()
            # One statement decides: of two votes at once (two sockets), one settles it, the other finds it voted.
            settled = await session.execute(
                update(Battle)
                .where(held, Battle.flagged.is_(None), Battle.blind_choice.is_(None))
                .values(choice=choice, blind_choice=choice, voted_at=now, updated_at=now)
            )
            battle = await session.scalar(select(Battle).where(held, Battle.flagged.is_(None)))
            if battle is None:
                raise NotYours(f"no battle between {answer_a} and {answer_b}")
            if settled.rowcount == 0:
                raise AlreadyVoted(battle.id)
            return battle.contender_a, battle.contender_b

    async def awaiting_vote(self, run_id: str) -> bool:
        """Whether the answer under run step `run_id` is one side of a battle not yet voted: until the vote,
        what users say about it (a thumb, a correction) would be said knowing nothing, and shown with who wrote it."""
        async with self.sessions() as session:
            answer = select(Step.id).where(Step.parent_id == run_id)
            pending = select(Battle.id).where(
                Battle.answer_a.in_(answer) | Battle.answer_b.in_(answer),
                Battle.blind_choice.is_(None),
                Battle.flagged.is_(None),
            )
            return await session.scalar(pending.limit(1)) is not None

    @patient(CLICKS, "a correction")
    async def correct(self, user: str, answer_id: str, text: str) -> None:
        """Store the answer the user wanted instead of `answer_id`; a new correction replaces the old."""
        async with self.sessions.begin() as session:
            thread = await owned_thread(session, user, answer_id)
            prompt_id = await session.scalar(select(Generation.prompt_id).where(Generation.step_id == answer_id))
            if prompt_id is None:
                raise NotYours(f"{answer_id} is not an answer")
            await _upsert(
                session, Correction, thread, ["answer_id"], prompt_id=prompt_id, answer_id=answer_id, text=text
            )


async def _answers(session: AsyncSession, where: ColumnElement[bool]) -> list[AnswerFeedback]:
    rows = await session.execute(
        select(Step, Generation.prompt_id, Generation.ended, Feedback, Correction.text)
        .join(Generation, Generation.step_id == Step.id)
        .outerjoin(Feedback, Feedback.for_id == Step.parent_id)
        .outerjoin(Correction, Correction.answer_id == Step.id)
        .where(where)
        .order_by(Generation.created_at, Step.id)
    )
    return [
        AnswerFeedback(
            id=step.id,
            run_id=step.parent_id or "",
            prompt_id=prompt_id or "",
            ended=ended,
            rating=feedback.value if feedback else None,
            reasons=list(feedback.reasons) if feedback else [],
            correction=correction,
        )
        for step, prompt_id, ended, feedback, correction in rows
    ]


async def _compare(session: AsyncSession, user: str, answer_a: str, answer_b: str, choice: str) -> tuple[Thread, str]:
    """Upsert the comparison of two answers to one prompt of `user`'s; returns the thread and the prompt."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
    thread = await owned_thread(session, user, answer_a)
    prompt_id = await _one_prompt(session, answer_a, answer_b)
    await _upsert(
        session,
        Comparison,
        thread,
        ["answer_a", "answer_b"],
        prompt_id=prompt_id,
        answer_a=answer_a,
        answer_b=answer_b,
        choice=choice,
    )
    return thread, prompt_id


async def _one_prompt(session: AsyncSession, answer_a: str, answer_b: str) -> str:
    """The prompt two different answers both answer; NotYours if they are not two answers to one prompt."""
    prompts = set(
        await session.scalars(select(Generation.prompt_id).where(Generation.step_id.in_([answer_a, answer_b])))
    )
    if len(prompts) != 1 or answer_a == answer_b or None in prompts:
        raise NotYours(f"{answer_a} and {answer_b} are not two answers to one prompt")
    return prompts.pop()


async def _upsert(
    session: AsyncSession,
    table: type,
    thread: Thread,
    unique: list[str],
    **values: Any,
) -> None:
    """A row of `thread` by its owner; where one with the same `unique` columns exists, its values are updated
    (not when it was made)."""
    now = utcnow()
    insert = dialect_insert(session, table).values(
        id=str(uuid.uuid4()), thread_id=thread.id, user_id=thread.user_id, created_at=now, updated_at=now, **values
    )
    updates = {column: value for column, value in values.items() if column not in unique}
    await session.execute(insert.on_conflict_do_update(index_elements=unique, set_={**updates, "updated_at": now}))
