"""``size_history.identifiers``: the run's changes of kind ``identifiers`` (an email that changed or appeared).

Existing rows get the count of their run's ``identifiers`` changes that were not skipped, as the runs count them
(none were written before this revision, so they are 0 unless a database was downgraded and upgraded again).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("size_history") as batch:
        batch.add_column(sa.Column("identifiers", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.execute(
        "UPDATE size_history SET identifiers = (SELECT count(*) FROM diffs WHERE diffs.run_id = size_history.run_id "
        "AND diffs.destination = size_history.destination AND diffs.computation_key = size_history.computation_key "
        "AND diffs.change = 'identifiers' AND diffs.status <> 'skipped') "
        "WHERE EXISTS (SELECT 1 FROM diffs WHERE diffs.run_id = size_history.run_id AND diffs.change = 'identifiers')"
    )


def downgrade() -> None:
    with op.batch_alter_table("size_history") as batch:
        batch.drop_column("identifiers")
