"""side-by-side element: stored battles name the element by its new name

Revision ID: b3d5f7a9c2e4
Revises: a7e4b2c9d1f0
Create Date: 2026-12-02 05:00:00

The arena's ArenaBattle custom element became SideBySide when Compare began to use it too
(chat/ui/side_by_side.py). A stored battle names the element it is drawn with, so a resumed chat
would find no ArenaBattle.jsx; its props are unchanged.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b3d5f7a9c2e4"
down_revision: str | Sequence[str] | None = "a7e4b2c9d1f0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE elements SET name = 'SideBySide' WHERE type = 'custom' AND name = 'ArenaBattle'")


def downgrade() -> None:
    op.execute("UPDATE elements SET name = 'ArenaBattle' WHERE type = 'custom' AND name = 'SideBySide'")
