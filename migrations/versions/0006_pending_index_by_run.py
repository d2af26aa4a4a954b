"""The index of pending changes also holds ``run_id``: (destination, computation_key, run_id) where pending.

Every run supersedes the earlier runs' pending changes of its computations (``run_id < ?``). With the index on
(destination, computation_key) only, SQLite's planner, which has no statistics, took the full index
``ix_diffs_user`` (same two leading columns) and read a destination's whole history of changes at every run;
with ``run_id`` as a third column the partial index matches the statement better and is the one chosen.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = {"postgresql_where": sa.text("status = 'pending'"), "sqlite_where": sa.text("status = 'pending'")}


def upgrade() -> None:
    op.drop_index("ix_diffs_pending", table_name="diffs", **_PENDING)
    op.create_index("ix_diffs_pending", "diffs", ["destination", "computation_key", "run_id"], **_PENDING)


def downgrade() -> None:
    op.drop_index("ix_diffs_pending", table_name="diffs", **_PENDING)
    op.create_index("ix_diffs_pending", "diffs", ["destination", "computation_key"], **_PENDING)
