"""Tables for bulk loads: SQLite keeps staging and snapshot in their primary-key order (WITHOUT ROWID);
PostgreSQL writes no WAL for staging (UNLOGGED). A partial index finds changes left in flight.

Both tables are read and written by primary key in bulk (staging loaded by INSERT ... SELECT and joined to
the snapshot by key). On SQLite a WITHOUT ROWID table is that key's b-tree itself, so a lookup or an upsert
touches one b-tree instead of an index plus the table. On PostgreSQL staging holds nothing that must survive
a crash: a run that dies while staging is marked abandoned and its rows are discarded, which is what the
server does to an unlogged table after a crash. Every run looks for changes a dead run left ``sending``;
without an index on them that was a scan of the destination's whole history of changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _snapshot_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("computation_key", sa.String(length=150), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("in_doubt", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("missing_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("destination", "computation_key", "user_id"),
    ]


def _staging_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("computation_key", sa.String(length=150), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("conflict_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "computation_key", "user_id"),
    ]


def _rebuild_sqlite(with_rowid: bool) -> None:
    """Recreate staging and snapshot with or without rowid, keeping their rows."""
    for name, columns in (("snapshot", _snapshot_columns()), ("staging", _staging_columns())):
        op.create_table(f"{name}_new", *columns, sqlite_with_rowid=with_rowid)
        names = ", ".join(c.name for c in columns if isinstance(c, sa.Column))
        op.execute(f"INSERT INTO {name}_new ({names}) SELECT {names} FROM {name}")
        op.drop_table(name)
        op.rename_table(f"{name}_new", name)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=False)
    else:
        op.execute("ALTER TABLE staging SET UNLOGGED")
    op.create_index(
        "ix_diffs_sending",
        "diffs",
        ["destination"],
        unique=False,
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_diffs_sending",
        table_name="diffs",
        postgresql_where=sa.text("status = 'sending'"),
        sqlite_where=sa.text("status = 'sending'"),
    )
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=True)
    else:
        op.execute("ALTER TABLE staging SET LOGGED")
