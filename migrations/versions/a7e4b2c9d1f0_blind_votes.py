"""blind votes: a battle keeps the vote cast before the contenders were revealed

Revision ID: a7e4b2c9d1f0
Revises: f1a7c3d9b2e5
Create Date: 2026-12-01 21:40:00

A vote reveals who wrote answers A and B; voting again afterwards changes `battles.choice` (the
user's latest opinion, which the export pairs) but not `blind_choice`, the vote the leaderboard
counts (chat/arena/leaderboard.py). Existing battles cannot tell, so their choice is taken as blind.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a7e4b2c9d1f0"
down_revision: str | Sequence[str] | None = "f1a7c3d9b2e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("battles") as batch_op:
        batch_op.add_column(sa.Column("blind_choice", sa.String(16), nullable=True))
    op.execute("UPDATE battles SET blind_choice = choice")
    with op.batch_alter_table("battles") as batch_op:
        batch_op.alter_column("blind_choice", existing_type=sa.String(16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("battles") as batch_op:
        batch_op.drop_column("blind_choice")
