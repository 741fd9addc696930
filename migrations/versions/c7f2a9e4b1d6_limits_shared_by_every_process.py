"""limits shared by every process: message rate, login throttling and pending uploads in the database

Revision ID: c7f2a9e4b1d6
Revises: e6b8d2f4a1c3
Create Date: 2026-12-08 10:00:00

Before this revision each Loupe process counted its limits in its own memory, so two processes on one
database let a user send twice the messages, try twice the passwords and leave twice the uploads waiting.
The counts start empty: what a process counted before is not carried over (as after any restart).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7f2a9e4b1d6"
down_revision: str | Sequence[str] | None = "e6b8d2f4a1c3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "limit_records",
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(op.f("ix_limit_records_expires"), "limit_records", ["expires"])
    op.create_table(
        "pending_uploads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("file_id", sa.String(length=36), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("file_id", "user", "session_id", "expires"):
        op.create_index(op.f(f"ix_pending_uploads_{column}"), "pending_uploads", [column])


def downgrade() -> None:
    op.drop_table("pending_uploads")
    op.drop_table("limit_records")
