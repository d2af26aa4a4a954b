"""``membership_ledger`` and ``ledger_horizon``: every acknowledged value, so that membership at any past instant
can be answered after the snapshot has moved on.

For a database that already holds runs, the ledger is filled here from what is stored: every ``sent`` change
(``diffs``), in the order it was acknowledged. Where that history is incomplete (changes pruned), the snapshot
fills in: a snapshot row holding a value that its user's last ledger row does not say gets a ``baseline`` row at
its ``updated_at``. The horizon is then the latest instant before which some user's history is unknown: the
baseline rows' times, and the first ledger time of every user whose first stored change starts from a value
(its ``old_value``), because the change that set that value was pruned. Before the horizon ``members --at``
refuses to answer rather than answer wrong. A database whose history is whole gets no horizon.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "destination, computation_key, user_id, old_value, new_value, run_id, diff_id, acknowledged_at, source"


def upgrade() -> None:
    op.create_table(
        "membership_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("computation_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("diff_id", sa.BigInteger(), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False, server_default=sa.text("'sent'")),
    )
    op.create_index(
        "ix_ledger_at", "membership_ledger", ["destination", "computation_key", "user_id", "acknowledged_at"]
    )
    op.create_index("ix_ledger_user", "membership_ledger", ["user_id"])
    op.create_table(
        "ledger_horizon",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("complete_since", sa.DateTime(timezone=True), nullable=False),
    )
    _backfill(op.get_bind())


def downgrade() -> None:
    op.drop_table("ledger_horizon")
    op.drop_index("ix_ledger_user", table_name="membership_ledger")
    op.drop_index("ix_ledger_at", table_name="membership_ledger")
    op.drop_table("membership_ledger")


_SAME_USER = (
    "l2.destination = {t}.destination AND l2.computation_key = {t}.computation_key AND l2.user_id = {t}.user_id"
)


def _backfill(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            f"INSERT INTO membership_ledger ({_COLUMNS}) SELECT destination, computation_key, user_id, old_value, "
            "new_value, run_id, id, sent_at, 'sent' FROM diffs WHERE status = 'sent' AND sent_at IS NOT NULL "
            "ORDER BY sent_at, id"
        )
    )
    # a user whose first stored change starts from a value: what set that value (and when) was pruned
    first_from_value = conn.execute(
        sa.text(
            "SELECT max(l.acknowledged_at) FROM membership_ledger l WHERE l.old_value IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM membership_ledger l2 WHERE " + _SAME_USER.format(t="l") + " AND l2.id < l.id)"
        )
    ).scalar_one()
    # snapshot values the ledger does not end with (their changes were pruned): a baseline at updated_at
    last_value = (
        "(SELECT l.new_value FROM membership_ledger l WHERE l.destination = s.destination AND "
        "l.computation_key = s.computation_key AND l.user_id = s.user_id ORDER BY l.id DESC LIMIT 1)"
    )
    no_row = (
        "NOT EXISTS (SELECT 1 FROM membership_ledger l WHERE l.destination = s.destination AND "
        "l.computation_key = s.computation_key AND l.user_id = s.user_id)"
    )
    holds_nothing = (
        "(s.value IS NULL OR (s.value = 'false' AND EXISTS (SELECT 1 FROM computations c WHERE "
        "c.key = s.computation_key AND c.computation_class = 'audience')))"
    )
    differs = (
        f"(({last_value} IS NULL AND s.value IS NOT NULL) OR {last_value} <> s.value OR "
        f"({last_value} IS NOT NULL AND s.value IS NULL)) AND NOT ({no_row} AND {holds_nothing})"
    )
    baseline_at = conn.execute(sa.text(f"SELECT max(s.updated_at) FROM snapshot s WHERE {differs}")).scalar_one()
    conn.execute(
        sa.text(
            f"INSERT INTO membership_ledger ({_COLUMNS}) SELECT s.destination, s.computation_key, s.user_id, NULL, "
            f"s.value, s.run_id, NULL, s.updated_at, 'baseline' FROM snapshot s WHERE {differs}"
        )
    )
    times = [t for t in (first_from_value, baseline_at) if t is not None]
    if times:
        horizon = sa.table("ledger_horizon", sa.column("name"), sa.column("complete_since"))
        # read back raw from SQLite as text: compare and store as given (ISO text sorts by time)
        conn.execute(sa.insert(horizon).values(name="ledger", complete_since=max(times)))
