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
    users: Sequence[str] = (),
    changes: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The diff rows of a run by destination, key and user id (numeric ids in numeric order, :func:`id_order`),
    values decoded from JSON (``null`` stays None); only ``users``' and ``changes``' when given, the first
    ``limit``."""
    stmt = select(*(diffs.c[f] for f in DIFF_FIELDS)).where(diffs.c.run_id == run_id)
    if users:
        stmt = stmt.where(diffs.c.user_id.in_(list(users)))
    if changes:
        stmt = stmt.where(diffs.c.change.in_(list(changes)))
    if computation is not None:
        stmt = stmt.where(diffs.c.computation_key == computation)
    if status is not None:
        stmt = stmt.where(diffs.c.status == status)
    if destination is not None:
        stmt = stmt.where(diffs.c.destination == destination)
    stmt = stmt.order_by(diffs.c.destination, diffs.c.computation_key, diffs.c.user_id, diffs.c.id)
    out = []
    for row in conn.execute(stmt).mappings():
        item = dict(row)
        item["old_value"] = decode(item["old_value"])
        item["new_value"] = decode(item["new_value"])
        out.append(item)
    out.sort(key=lambda r: (r["destination"], r["computation_key"], id_order(r["user_id"])))
    return out if limit is None else out[:limit]


def id_order(user_id: str) -> tuple[int, int, str]:
    """A sort key putting numeric ids first, in numeric order (``2`` before ``10``), then the others as text."""
    if user_id.isascii() and user_id.isdigit():
        return (0, int(user_id), user_id)
    return (1, 0, user_id)


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
    out = [{**dict(r), "value": decode(r["value"])} for r in rows]
    return sorted(out, key=lambda r: (r["destination"], id_order(r["user_id"])))


def user_snapshot(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """``user_id``'s snapshot rows: per destination and key, the acknowledged value and when."""
    rows = conn.execute(
        select(
            snapshot.c.destination,
            snapshot.c.computation_key,
            snapshot.c.value,
            snapshot.c.email,
            snapshot.c.run_id,
            snapshot.c.updated_at,
            snapshot.c.in_doubt,
        )
        .where(snapshot.c.user_id == user_id)
        .order_by(snapshot.c.destination, snapshot.c.computation_key)
    ).mappings()
    return [{**dict(r), "value": decode(r["value"])} for r in rows]


def user_diffs(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """Every diff row of ``user_id`` still kept (any status), oldest first."""
    rows = conn.execute(
        select(diffs.c.id, *(diffs.c[f] for f in DIFF_FIELDS)).where(diffs.c.user_id == user_id).order_by(diffs.c.id)
    ).mappings()
    return [dict(r) for r in rows]
