"""token versions (revocable logins) and flagged generation records

Revision ID: 5b1f0c2a9d47
Revises: 243b13670f21
Create Date: 2026-12-01 11:30:00

Before this revision a client could store a message of its own as a model answer with a
generation record (a `client_message` of type assistant_message carrying metadata.generation),
and the export counted it. Such a record cannot be told from a real one by its columns, but the
server writes every answer in one shape: an assistant_message under a run step, the run under the
user message the record names as its prompt, all in one thread, one answer per run. Records that
break that shape are flagged with the broken rule, and the export skips flagged records. A real
answer that shares its run with a forged one is flagged too: the two cannot be told apart.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b1f0c2a9d47"
down_revision: str | Sequence[str] | None = "243b13670f21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each rule, as SQL over generations g, its step s, the run r above it and the prompt p: a record
# matching the condition is flagged with the rule's name (the first that matches wins).
SHAPE_RULES = {
    "not an answer step": "s.type <> 'assistant_message'",
    "not under a run": "r.id IS NULL OR r.type <> 'run' OR r.thread_id <> g.thread_id",
    "run not under its prompt": (
        "p.id IS NULL OR r.parent_id <> g.prompt_id OR p.type <> 'user_message' OR p.thread_id <> g.thread_id"
    ),
    "two answers in one run": (
        "(SELECT count(*) FROM steps o JOIN generations og ON og.step_id = o.id WHERE o.parent_id = r.id) > 1"
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("token_version", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("generations") as batch_op:
        batch_op.add_column(sa.Column("flagged", sa.String(length=64), nullable=True))
    shape = (
        "FROM generations g JOIN steps s ON s.id = g.step_id "
        "LEFT JOIN steps r ON r.id = s.parent_id LEFT JOIN steps p ON p.id = g.prompt_id"
    )
    for rule, condition in SHAPE_RULES.items():
        op.execute(
            sa.text(
                f"UPDATE generations SET flagged = :rule WHERE flagged IS NULL "
                f"AND id IN (SELECT g.id {shape} WHERE {condition})"
            ).bindparams(rule=rule)
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_column("flagged")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("token_version")
