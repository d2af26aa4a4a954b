"""The chunk in flight is one ``delivery_in_flight`` row (its key range), no longer every change marked ``sending``.

Marking each change of a chunk ``sending`` before handing it over, then ``sent`` after, wrote every change twice
(on PostgreSQL a new row version and new index entries each time). Now delivery commits one row naming the
chunk's key range before it goes out and deletes it with the recording of its outcomes, and each change is
written once. Changes an older version left ``sending`` are converted: they become ``pending`` again inside a
range row, which recovery treats as it treated them. The partial index that found ``sending`` rows goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 20:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SENDING_INDEX = {"postgresql_where": sa.text("status = 'sending'"), "sqlite_where": sa.text("status = 'sending'")}


def upgrade() -> None:
    op.create_table(
        "delivery_in_flight",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("first_user_id", sa.String(length=255), nullable=False),
        sa.Column("first_diff_id", sa.BigInteger(), nullable=False),
        sa.Column("last_user_id", sa.String(length=255), nullable=False),
        sa.Column("last_diff_id", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "destination"),
    )
    # one chunk at most was in flight per run and destination: the range of its `sending` rows is the chunk's
    op.execute(
        """
        INSERT INTO delivery_in_flight
            (run_id, destination, first_user_id, first_diff_id, last_user_id, last_diff_id, started_at)
        SELECT g.run_id, g.destination, g.first_user,
               (SELECT min(d.id) FROM diffs d WHERE d.run_id = g.run_id AND d.destination = g.destination
                AND d.status = 'sending' AND d.user_id = g.first_user),
               g.last_user,
               (SELECT max(d.id) FROM diffs d WHERE d.run_id = g.run_id AND d.destination = g.destination
                AND d.status = 'sending' AND d.user_id = g.last_user),
               CURRENT_TIMESTAMP
        FROM (SELECT run_id, destination, min(user_id) AS first_user, max(user_id) AS last_user
              FROM diffs WHERE status = 'sending' GROUP BY run_id, destination) g
        """
    )
    op.execute("UPDATE diffs SET status = 'pending' WHERE status = 'sending'")
    op.drop_index("ix_diffs_sending", table_name="diffs", **_SENDING_INDEX)


def downgrade() -> None:
    op.create_index("ix_diffs_sending", "diffs", ["destination"], unique=False, **_SENDING_INDEX)
    op.execute(
        """
        UPDATE diffs SET status = 'sending'
        WHERE status = 'pending' AND EXISTS (
            SELECT 1 FROM delivery_in_flight f
            WHERE f.run_id = diffs.run_id AND f.destination = diffs.destination
              AND (diffs.user_id > f.first_user_id OR (diffs.user_id = f.first_user_id AND diffs.id >= f.first_diff_id))
              AND (diffs.user_id < f.last_user_id OR (diffs.user_id = f.last_user_id AND diffs.id <= f.last_diff_id)))
        """
    )
    op.drop_table("delivery_in_flight")
