"""documents: PDFs and text files, their pages searchable by each database's full-text engine, users' libraries,
and the pages each answer was shown (`generations.sources`)

Revision ID: f1a7c3d9b2e5
Revises: c4d9e2b7a1f3
Create Date: 2026-12-01 18:40:00

The page index is the database's own (chat/store/schema.py, "Documents"): on SQLite an FTS5 table over
`document_pages.terms` (external content: it stores only the index), on PostgreSQL a GIN index of the
`terms` tsvector. Both are written in the same transaction as the page rows (on SQLite by triggers).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "f1a7c3d9b2e5"
down_revision: str | Sequence[str] | None = "c4d9e2b7a1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("page_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "document_pages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("width", sa.Float(), nullable=False),
        sa.Column("height", sa.Float(), nullable=False),
        sa.Column("terms", sa.Text().with_variant(postgresql.TSVECTOR(), "postgresql"), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["documents.sha256"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "number"),
    )
    op.create_table(
        "library",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["documents.sha256"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "sha256"),
    )
    with op.batch_alter_table("generations") as batch_op:
        batch_op.add_column(sa.Column("sources", sa.JSON(), nullable=True))
    op.execute("UPDATE generations SET sources = '[]'")  # no answer before this revision was shown a page
    with op.batch_alter_table("generations") as batch_op:
        batch_op.alter_column("sources", existing_type=sa.JSON(), nullable=False)
    with op.batch_alter_table("library") as batch_op:
        batch_op.create_index(batch_op.f("ix_library_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_library_user_id"), ["user_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("page_search_terms", "document_pages", ["terms"], postgresql_using="gin")
    else:
        op.execute(
            "CREATE VIRTUAL TABLE page_search USING fts5(terms, content='document_pages', content_rowid='id', "
            "tokenize='unicode61 remove_diacritics 0')"
        )
        # Each term's page count, read to leave the commonest terms out of a search in a large library.
        op.execute("CREATE VIRTUAL TABLE page_search_vocab USING fts5vocab(page_search, 'row')")
        # FTS5's pattern for an external-content index: triggers keep it in step with the rows.
        op.execute(
            "CREATE TRIGGER page_search_insert AFTER INSERT ON document_pages BEGIN "
            "INSERT INTO page_search (rowid, terms) VALUES (new.id, new.terms); END"
        )
        op.execute(
            "CREATE TRIGGER page_search_delete AFTER DELETE ON document_pages BEGIN "
            "INSERT INTO page_search (page_search, rowid, terms) VALUES ('delete', old.id, old.terms); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("page_search_terms", table_name="document_pages")
    else:
        op.execute("DROP TRIGGER page_search_delete")
        op.execute("DROP TRIGGER page_search_insert")
        op.execute("DROP TABLE page_search_vocab")
        op.execute("DROP TABLE page_search")
    with op.batch_alter_table("library") as batch_op:
        batch_op.drop_index(batch_op.f("ix_library_user_id"))
        batch_op.drop_index(batch_op.f("ix_library_sha256"))
    op.drop_table("library")
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_column("sources")
    op.drop_table("document_pages")
    op.drop_table("documents")
