"""Initial schema: computations, sync_runs, staging, snapshot, diffs, run_locks.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 15:03:59.333179
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "computations",
        sa.Column("key", sa.String(length=150), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("computation_class", sa.String(length=16), nullable=False),
        sa.Column("definition_hash", sa.String(length=64), nullable=False),
        sa.Column("first_synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "snapshot",
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
    )
    op.create_table(
        "staging",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("computation_key", sa.String(length=150), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("conflict_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "computation_key", "user_id"),
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destinations", sa.JSON(), nullable=False),
        sa.Column("computations", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index("ix_sync_runs_status", ["status"], unique=False)

    op.create_table(
        "diffs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("computation_key", sa.String(length=150), nullable=False),
        sa.Column("computation_class", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("base_run_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("message_id", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["sync_runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.create_index("ix_diffs_delivery", ["run_id", "destination", "status", "user_id", "id"], unique=False)
        batch_op.create_index(
            "ix_diffs_pending",
            ["destination", "computation_key"],
            unique=False,
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        )
        batch_op.create_index("ix_diffs_user", ["destination", "computation_key", "user_id"], unique=False)

    op.create_table(
        "run_locks",
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("holder", sa.String(length=300), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("run_locks")
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.drop_index("ix_diffs_user")
        batch_op.drop_index("ix_diffs_pending")
        batch_op.drop_index("ix_diffs_delivery")

    op.drop_table("diffs")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_sync_runs_status")

    op.drop_table("sync_runs")
    op.drop_table("staging")
    op.drop_table("snapshot")
    op.drop_table("computations")
