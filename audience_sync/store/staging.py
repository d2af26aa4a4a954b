"""The ``staging`` table: one run's current memberships and trait values, as loaded from the sources."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, case, delete, func, select

from .dialect import upsert
from .schema import StagingRow, table_of

staging = table_of(StagingRow)

#: (user_id, email, value as canonical JSON text)
StagedRow = tuple[str, str | None, str]


def insert_rows(conn: Connection, run_id: int, key: str, rows: Sequence[StagedRow]) -> None:
    """Add rows for computation ``key``; a user seen twice counts once.

    A repeated user keeps its first non-null email. When the repeat carries a different value, it is
    remembered in ``conflict_value`` for :func:`first_conflict` to report.
    """
    if not rows:
        return
    stmt = upsert(conn, staging)
    stmt = stmt.on_conflict_do_update(
        index_elements=[staging.c.run_id, staging.c.computation_key, staging.c.user_id],
        set_={
            "email": func.coalesce(staging.c.email, stmt.excluded.email),
            "conflict_value": case(
                (staging.c.value.is_distinct_from(stmt.excluded.value), stmt.excluded.value),
                else_=staging.c.conflict_value,
            ),
        },
    )
    conn.execute(
        stmt,
        [{"run_id": run_id, "computation_key": key, "user_id": u, "email": e, "value": v} for u, e, v in rows],
    )


def first_conflict(conn: Connection, run_id: int, key: str) -> tuple[str, str | None, str] | None:
    """A user given two different values for ``key`` in this run, with both values; None if there is none."""
    row = conn.execute(
        select(staging.c.user_id, staging.c.value, staging.c.conflict_value)
        .where(
            staging.c.run_id == run_id,
            staging.c.computation_key == key,
            staging.c.conflict_value.is_not(None),
        )
        .order_by(staging.c.user_id)
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def count_members(conn: Connection, run_id: int, key: str) -> int:
    """How many distinct users computation ``key`` has in this run."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(staging)
            .where(staging.c.run_id == run_id, staging.c.computation_key == key)
        ).scalar_one()
    )


def clear(conn: Connection, run_id: int | None = None, key: str | None = None) -> None:
    """Delete the staged rows of one run (and computation), or of every run when ``run_id`` is None."""
    stmt = delete(staging)
    if run_id is not None:
        stmt = stmt.where(staging.c.run_id == run_id)
    if key is not None:
        stmt = stmt.where(staging.c.computation_key == key)
    conn.execute(stmt)
