"""generation backend: which backend wrote each answer (the in-process model, or a vLLM server)

Revision ID: c4d9e2b7a1f3
Revises: 8e3a61c0d2f4
Create Date: 2026-12-01 16:00:00

Every answer stored before this revision was written by the in-process model: they are marked `local`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4d9e2b7a1f3"
down_revision: str | Sequence[str] | None = "8e3a61c0d2f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.add_column(sa.Column("backend", sa.String(length=16), nullable=True))
    op.execute("UPDATE generations SET backend = 'local'")


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_column("backend")
