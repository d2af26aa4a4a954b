"""Read-only queries behind ``diff``, ``audiences`` and ``members``: what people inspect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from ..values import TRUE, decode
from .schema import computations, diffs, snapshot


def _holds_value() -> ColumnElement[bool]:
    """The snapshot row says the user is in the audience, or has a value of the trait."""
    return or_(
        and_(computations.c.computation_class == "audience", snapshot.c.value == TRUE),
        and_(computations.c.computation_class == "trait", snapshot.c.value.is_not(None)),
    )


_joined = snapshot.join(computations, computations.c.key == snapshot.c.computation_key)

DIFF_FIELDS = (
    "run_id",
    "destination",
    "computation_key",
    "computation_class",
    "user_id",
    "email",
    "change",
    "old_value",
    "new_value",
    "status",
    "attempts",
    "error",
    "message_id",
    "created_at",
    "sent_at",
)


def list_diffs(
    conn: Connection,
    run_id: int,
    *,
    computation: str | None = None,
    status: str | None = None,
    destination: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The diff rows of a run in delivery order, values decoded from JSON (``null`` stays None)."""
    stmt = select(*(diffs.c[f] for f in DIFF_FIELDS)).where(diffs.c.run_id == run_id)
    if computation is not None:
        stmt = stmt.where(diffs.c.computation_key == computation)
    if status is not None:
        stmt = stmt.where(diffs.c.status == status)
    if destination is not None:
        stmt = stmt.where(diffs.c.destination == destination)
    stmt = stmt.order_by(diffs.c.destination, diffs.c.computation_key, diffs.c.user_id, diffs.c.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    out = []
    for row in conn.execute(stmt).mappings():
        item = dict(row)
        item["old_value"] = decode(item["old_value"])
        item["new_value"] = decode(item["new_value"])
        out.append(item)
    return out


def snapshot_sizes(conn: Connection, *, destination: str | None = None) -> dict[tuple[str, str], int]:
    """Per (destination, computation key): users the destination holds a value for (audiences: ``true``)."""
    stmt = select(snapshot.c.destination, snapshot.c.computation_key, func.count()).select_from(_joined)
    if destination is not None:
        stmt = stmt.where(snapshot.c.destination == destination)
    rows = conn.execute(stmt.where(_holds_value()).group_by(snapshot.c.destination, snapshot.c.computation_key)).all()
    return {(d, k): n for d, k, n in rows}


def members(conn: Connection, key: str, destinations: Sequence[str]) -> list[dict[str, Any]]:
    """Users ``key`` is acknowledged for, per destination: audience members or users with a trait value."""
    rows = conn.execute(
        select(snapshot.c.destination, snapshot.c.user_id, snapshot.c.email, snapshot.c.value, snapshot.c.updated_at)
        .select_from(_joined)
        .where(snapshot.c.computation_key == key, snapshot.c.destination.in_(list(destinations)), _holds_value())
        .order_by(snapshot.c.destination, snapshot.c.user_id)
    ).mappings()
    return [{**dict(r), "value": decode(r["value"])} for r in rows]
