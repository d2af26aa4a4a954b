"""The ``computations`` table: which keys exist, since when, and which were retired."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select, update

from ..config import Computation
from ..errors import KeyCollisionError
from .schema import computations, utcnow


def check_keys(conn: Connection, wanted: Iterable[Computation]) -> None:
    """Refuse computations whose key belonged to a retired computation or to one of the other class.

    Guarantees: a key is never silently reused. Raises KeyCollisionError naming the key, the old and new
    names, and what to do.
    """
    known = {row.key: row for row in conn.execute(select(computations)).all()}
    for comp in wanted:
        row = known.get(comp.key)
        if row is None:
            continue
        if row.retired_at is not None:
            raise KeyCollisionError(
                f"trait key {comp.key!r} (of {comp.name!r}) belonged to {row.computation_class} {row.name!r}, "
                f"retired at {row.retired_at:%Y-%m-%d %H:%M} UTC; destinations still hold its values, so it "
                f"is not reused silently: give {comp.name!r} another `key`, or if it is the same "
                f"computation returning, run `audience-sync audiences --revive {comp.key}`",
                key=comp.key,
                names=(row.name, comp.name),
            )
        if row.computation_class != comp.computation_class:
            raise KeyCollisionError(
                f"trait key {comp.key!r} belongs to {row.computation_class} {row.name!r}; "
                f"{comp.computation_class} {comp.name!r} cannot take it over: give it another `key`",
                key=comp.key,
                names=(row.name, comp.name),
            )


def register(conn: Connection, synced: Iterable[Computation]) -> None:
    """Record computations as synced: new keys get ``first_synced_at``, known ones their current name."""
    now = utcnow()
    known = set(conn.execute(select(computations.c.key)).scalars())
    for comp in synced:
        values: dict[str, Any] = {
            "name": comp.name,
            "definition_hash": comp.definition_hash,
            "updated_at": now,
        }
        if comp.key in known:
            conn.execute(update(computations).where(computations.c.key == comp.key).values(**values))
        else:
            conn.execute(
                computations.insert().values(
                    key=comp.key, computation_class=comp.computation_class, first_synced_at=now, **values
                )
            )


def retire_missing(conn: Connection, configured: Iterable[str]) -> list[str]:
    """Retire every active key not in ``configured``; returns the keys retired now. Sends nothing."""
    keep = set(configured)
    active = conn.execute(select(computations.c.key).where(computations.c.retired_at.is_(None))).scalars()
    gone = sorted(k for k in active if k not in keep)
    if gone:
        conn.execute(update(computations).where(computations.c.key.in_(gone)).values(retired_at=utcnow()))
    return gone


def revive(conn: Connection, key: str) -> bool:
    """Clear the retirement of ``key``; False when no retired computation has that key."""
    result = conn.execute(
        update(computations)
        .where(computations.c.key == key, computations.c.retired_at.is_not(None))
        .values(retired_at=None, updated_at=utcnow())
    )
    return result.rowcount > 0


def list_computations(conn: Connection) -> list[dict[str, Any]]:
    """Every computation ever synced, retired ones included, ordered by key."""
    rows = conn.execute(select(computations).order_by(computations.c.key)).mappings().all()
    return [dict(r) for r in rows]
