"""battles held by the arena: recorded when the arena asks, settled by one vote; others flagged

Revision ID: e6b8d2f4a1c3
Revises: b3d5f7a9c2e4
Create Date: 2026-12-07 00:10:00

Before this revision a battle was made by the vote: any two answers to one prompt that a resumed
Arena chat offered vote buttons for became a ranked battle, including an answer asked under "Base
model" and one regenerated under an adapter's profile, which the voter knew. Now the arena records
the battle (its two blind answers, the contenders, the session) when both answers are in, with no
choice, and a vote settles only such a record, once: `choice` and `blind_choice` are null until then,
`voted_at` says when. Stored battles cannot tell who made them, but the arena writes every answer
`blind` in its step's metadata and nothing else does: a battle whose two answers are not both blind
was not held by the arena, and is flagged (`flagged`), which the leaderboard reports and does not count.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e6b8d2f4a1c3"
down_revision: str | Sequence[str] | None = "b3d5f7a9c2e4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_HELD = "no arena held it"  # chat/arena/leaderboard.py reports a flagged battle under its flag

battles = sa.table(
    "battles",
    sa.column("id", sa.String),
    sa.column("answer_a", sa.String),
    sa.column("answer_b", sa.String),
    sa.column("flagged", sa.String),
)
steps = sa.table("steps", sa.column("id", sa.String), sa.column("metadata", sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("battles") as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("voted_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("flagged", sa.String(length=64), nullable=True))
        batch_op.alter_column("choice", existing_type=sa.String(16), nullable=True)
        batch_op.alter_column("blind_choice", existing_type=sa.String(16), nullable=True)
    op.execute("UPDATE battles SET voted_at = created_at")  # every stored battle was made by its vote
    connection = op.get_bind()
    a, b = steps.alias("a"), steps.alias("b")
    stored = connection.execute(
        sa.select(battles.c.id, a.c.metadata, b.c.metadata)
        .join(a, a.c.id == battles.c.answer_a)
        .join(b, b.c.id == battles.c.answer_b)
    )
    not_held = [battle for battle, *answers in stored if not all((meta or {}).get("blind") is True for meta in answers)]
    if not_held:
        op.execute(battles.update().where(battles.c.id.in_(not_held)).values(flagged=NOT_HELD))


def downgrade() -> None:
    op.execute("DELETE FROM battles WHERE blind_choice IS NULL")  # held, never voted: the old schema has no such row
    with op.batch_alter_table("battles") as batch_op:
        batch_op.alter_column("blind_choice", existing_type=sa.String(16), nullable=False)
        batch_op.alter_column("choice", existing_type=sa.String(16), nullable=False)
        batch_op.drop_column("flagged")
        batch_op.drop_column("voted_at")
        batch_op.drop_column("session_id")
