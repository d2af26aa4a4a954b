"""The delivery index no longer holds ``status``: (run_id, destination, user_id, id).

With ``status`` in the index, marking a chunk ``sending`` and then ``sent`` moved every row's index entry twice.
Delivery reads a run's pending rows in (user_id, id) order from a key onwards, so the index without ``status``
serves it as well (rows already delivered lie before the key), and the two status updates touch only the
rows and the partial ``ix_diffs_pending`` index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 18:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.drop_index("ix_diffs_delivery")
        batch_op.create_index("ix_diffs_delivery", ["run_id", "destination", "user_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.drop_index("ix_diffs_delivery")
        batch_op.create_index("ix_diffs_delivery", ["run_id", "destination", "status", "user_id", "id"], unique=False)
