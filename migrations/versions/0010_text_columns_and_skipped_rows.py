"""Text columns are unbounded ``TEXT`` on PostgreSQL; a run's unusable source rows get a table of their own.

The initial schema declared ``VARCHAR(n)`` columns (user ids 255, emails 320, destination names 100, ...).
SQLite never enforces a declared length, PostgreSQL does: a 300-character user id, a 321-character email or a
101-character destination name worked on SQLite and failed a whole PostgreSQL run with "value too long", naming
no culprit. Every bounded ``VARCHAR`` of the state tables becomes ``TEXT`` here. PostgreSQL changes the type in
the catalogue only: ``varchar`` is binary-coercible to ``text``, so no table is rewritten, and the indexes (the
partial ones included, whose predicates are re-read against the new type) keep their contents. SQLite is left as
it is: a declared ``VARCHAR(n)`` there is ``TEXT`` affinity with no limit, exactly what ``TEXT`` is, so rebuilding
every table (SQLite cannot change a column's type in place) would cost time proportional to the history and
change nothing; ``store.migrate.compare_type`` tells Alembic the two are the same on SQLite.

``staging_skips`` holds the source rows of a run that cannot be staged (a NUL byte, which PostgreSQL text cannot
hold, a user id too long for its indexes, a value with no JSON form): the diff leaves those users alone and
reports each as a ``skipped`` change with the reason. Like ``staging`` it is empty between runs (UNLOGGED on
PostgreSQL).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the state tables whose text columns were declared with a length, and those lengths (for the downgrade)
LENGTHS: dict[str, dict[str, int]] = {
    "computations": {"key": 150, "computation_class": 16, "definition_hash": 64},
    "sync_runs": {"mode": 16, "trigger": 16, "status": 16, "host": 255},
    "staging": {"computation_key": 150, "user_id": 255, "email": 320},
    "snapshot": {"destination": 100, "computation_key": 150, "user_id": 255, "email": 320},
    "diffs": {
        "destination": 100,
        "computation_key": 150,
        "computation_class": 16,
        "user_id": 255,
        "email": 320,
        "change": 16,
        "status": 16,
        "message_id": 100,
    },
    "delivery_in_flight": {"destination": 100, "first_user_id": 255, "last_user_id": 255},
    "run_locks": {"name": 150, "holder": 300, "host": 255, "boot_id": 64, "pid_ns": 64},
    "run_lock_tokens": {"name": 150},
    "alert_incidents": {"incident": 400, "kind": 32, "destination": 150},
}


def _bounded_columns() -> dict[str, list[str]]:
    """PostgreSQL: every bounded ``VARCHAR`` column of the state tables, as the catalogue has them now."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type = 'character varying' "
            "AND character_maximum_length IS NOT NULL AND table_name IN :tables ORDER BY table_name, ordinal_position"
        ).bindparams(sa.bindparam("tables", expanding=True)),
        {"tables": sorted(LENGTHS)},
    )
    found: dict[str, list[str]] = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        for table, columns in _bounded_columns().items():
            changes = ", ".join(f"ALTER COLUMN {_quote(c)} TYPE text" for c in columns)
            op.execute(f"ALTER TABLE {_quote(table)} {changes}")
    op.create_table(
        "staging_skips",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("computation_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("shown_user_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        prefixes=["UNLOGGED"] if postgresql else [],
    )
    op.create_index("ix_staging_skips_user", "staging_skips", ["run_id", "computation_key", "user_id"])


def downgrade() -> None:
    op.drop_index("ix_staging_skips_user", table_name="staging_skips")
    op.drop_table("staging_skips")
    if op.get_bind().dialect.name == "postgresql":
        for table, columns in LENGTHS.items():
            changes = ", ".join(f"ALTER COLUMN {_quote(c)} TYPE varchar({n})" for c, n in columns.items())
            op.execute(f"ALTER TABLE {_quote(table)} {changes}")
