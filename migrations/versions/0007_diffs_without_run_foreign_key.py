"""``diffs.run_id`` is no longer a declared foreign key to ``sync_runs``.

PostgreSQL checks a foreign key with a trigger per inserted row that locks the referenced run: a third of the
time of writing a run's changes into the outbox (1M changes: 11.4 s with the key, 7.6 s without, measured on
the same table). Every change is written by its own run, inside the run's lifetime, and retention deletes a
run only once it has no changes left (``store/retention.py``), so the key guarded nothing the code does not.

On SQLite the table is rebuilt without the key (Alembic's batch mode copies the rows and recreates the
indexes, partial ones included), which takes time proportional to the change history, once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the name PostgreSQL gave the unnamed key of migration 0001; on SQLite, the one this convention gives it
_FK = "diffs_run_id_fkey"
_CONVENTION = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    with op.batch_alter_table("diffs", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(_FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("diffs", naming_convention=_CONVENTION) as batch_op:
        batch_op.create_foreign_key(_FK, "sync_runs", ["run_id"], ["id"])
