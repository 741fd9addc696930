"""raw completions: store what the model wrote apart from how the page shows it

Revision ID: 8e3a61c0d2f4
Revises: 5b1f0c2a9d47
Create Date: 2026-12-01 15:30:00

Until this revision an answer was stored only as the page showed it: a regenerated or arena
answer began with its label ("*Answer 2 of 3*", "*Answer B*", in English or Korean) and a
stopped one ended with the stop marker, and readers stripped both again with the UI's strings.
Now the generation record keeps the model's own text (`completion`): in the `generations` table,
and in the answer step's `metadata.generation`, where the history is rebuilt from. This back-fills
both for existing answers, stripping the decorations as they were written up to this revision
(frozen here, so that later changes to the UI's texts cannot change what this migration does).
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8e3a61c0d2f4"
down_revision: str | Sequence[str] | None = "5b1f0c2a9d47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The labels and stop markers chat/texts.py wrote before this revision, in every language.
LABEL = re.compile(r"\*(?:Answer \d+ of \d+|Answer [AB]|답변 \d+ / \d+|답변 [AB])\*\n\n")
STOP_MARKERS = ("\n\n⏹ *Stopped.*", "\n\n⏹ *중지됨.*")
BATCH = 500  # answers read and written per round, so memory stays flat on a large database

steps = sa.table("steps", sa.column("id", sa.String), sa.column("output", sa.Text), sa.column("metadata", sa.JSON))
generations = sa.table("generations", sa.column("step_id", sa.String), sa.column("completion", sa.Text))


def model_text(shown: str) -> str:
    """What the model wrote, from an answer as it was shown and stored: without its label and stop marker."""
    if match := LABEL.match(shown):
        shown = shown[match.end() :]
    for marker in STOP_MARKERS:
        shown = shown.removesuffix(marker)
    return shown


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.add_column(sa.Column("completion", sa.Text(), nullable=True))
    connection = op.get_bind()
    after = ""
    while True:
        rows = connection.execute(
            sa.select(steps.c.id, steps.c.output, steps.c.metadata)
            .join(generations, generations.c.step_id == steps.c.id)
            .where(steps.c.id > after)
            .order_by(steps.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        for step_id, output, metadata in rows:
            completion = model_text(output or "")
            connection.execute(
                generations.update().where(generations.c.step_id == step_id).values(completion=completion)
            )
            record = (metadata or {}).get("generation")
            if isinstance(record, dict):
                updated = {**metadata, "generation": {**record, "completion": completion}}
                connection.execute(steps.update().where(steps.c.id == step_id).values(metadata=updated))
        after = rows[-1].id
    with op.batch_alter_table("generations") as batch_op:
        batch_op.alter_column("completion", existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_column("completion")
