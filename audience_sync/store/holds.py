"""The mass-exit guard's statements: a run's exits per computation, a destination's members, holding changes.

The decision (which computations trip the guard, and what the run says) is the run's (``run/guard.py``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, func, literal_column, select, update

from ..model import DiffStatus
from ..values import TRUE
from .schema import diffs, snapshot


def exits_per_key(conn: Connection, run_id: int, dest: str) -> dict[str, int]:
    """Computation key -> how many ``exited`` changes run ``run_id`` wrote for ``dest``."""
    # grouped by an expression no index orders: SQLite's planner would otherwise walk ix_diffs_user, the whole
    # history of the destination, in computation order to save a sort of this run's few keys
    key = diffs.c.computation_key.concat(literal_column("''"))
    rows = conn.execute(
        select(key, func.count())
        .where(diffs.c.run_id == run_id, diffs.c.destination == dest, diffs.c.change == "exited")
        .group_by(key)
    ).all()
    return {str(row[0]): int(row[1]) for row in rows}


def members_at(conn: Connection, dest: str, key: str, *, audience: bool, limit: int | None) -> int:
    """How many users ``dest`` holds computation ``key`` for (an audience: ``true``; a trait: a value),
    counting at most ``limit`` of them when given."""
    holds = snapshot.c.value == TRUE if audience else snapshot.c.value.is_not(None)
    users: Select[Any] = select(literal_column("1")).where(
        snapshot.c.destination == dest, snapshot.c.computation_key == key, holds
    )
    if limit is not None:
        users = users.limit(limit)
    return int(conn.execute(select(func.count()).select_from(users.subquery())).scalar_one())


def hold_changes(conn: Connection, run_id: int, key: str, reason: str) -> int:
    """Set run ``run_id``'s unsent changes of ``key`` (every destination) to ``held`` with ``reason``; return
    how many. None of them will be sent."""
    result = conn.execute(
        update(diffs)
        .where(diffs.c.run_id == run_id, diffs.c.computation_key == key, diffs.c.status.in_(("pending", "skipped")))
        .values(status=DiffStatus.HELD, error=reason)
    )
    return result.rowcount
