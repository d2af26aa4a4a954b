"""Fencing: every acquisition of a run lock gets a token (a generation that only grows per lock name).

``run_lock_tokens`` keeps the newest token of each lock name; it outlives the ``run_locks`` row, which is still
deleted on release. ``run_locks`` gains the holder's ``token`` and, to decide a takeover on pid liveness only
when the pid means something here, its machine (``boot_id``) and pid namespace (``pid_ns``). The in-flight note of
a chunk (``delivery_in_flight``) gains the ``token`` it was noted under, so that a run recovers only chunks of
earlier acquisitions, and ``late`` for a chunk its run noted again after it found it had lost the lock.

Existing lock rows (held while upgrading) get token 0, and their names a token row at 0, so that the next
acquisition's token (1) is newer; their machine is unknown, so they are only taken over when their lease expired.
Existing in-flight notes get no token: any run holding the lock recovers them, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_lock_tokens",
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.add_column("run_locks", sa.Column("token", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    op.add_column("run_locks", sa.Column("boot_id", sa.String(length=64), nullable=True))
    op.add_column("run_locks", sa.Column("pid_ns", sa.String(length=64), nullable=True))
    op.execute("INSERT INTO run_lock_tokens (name, token) SELECT name, 0 FROM run_locks")
    op.add_column("delivery_in_flight", sa.Column("token", sa.BigInteger(), nullable=True))
    op.add_column("delivery_in_flight", sa.Column("late", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("delivery_in_flight") as batch_op:
        batch_op.drop_column("late")
        batch_op.drop_column("token")
    with op.batch_alter_table("run_locks") as batch_op:
        batch_op.drop_column("pid_ns")
        batch_op.drop_column("boot_id")
        batch_op.drop_column("token")
    op.drop_table("run_lock_tokens")
