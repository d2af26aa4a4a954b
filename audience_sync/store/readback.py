"""The statements behind ``verify`` and ``adopt``: what the snapshot says a destination holds, marking users so that
the next run sends them the truth again (``--repair``), and seeding the snapshot from what a destination already
holds (adoption), with a ledger row for each adopted value."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, func, select, true

from .dialect import upsert
from .schema import ledger, snapshot, utcnow


def expected(
    conn: Connection, destination: str, keys: Sequence[str], users: Sequence[str] | None = None
) -> dict[str, dict[str, str | None]]:
    """Per user, per key: the snapshot's value (canonical JSON text, None for no value) at ``destination``;
    only ``users`` when given."""
    out: dict[str, dict[str, str | None]] = {}
    stmt = select(snapshot.c.user_id, snapshot.c.computation_key, snapshot.c.value).where(
        snapshot.c.destination == destination, snapshot.c.computation_key.in_(list(keys))
    )
    if users is not None:
        stmt = stmt.where(snapshot.c.user_id.in_(list(users)))
    for user_id, key, value in conn.execute(stmt):
        out.setdefault(user_id, {})[key] = value
    return out


def sample_users(conn: Connection, destination: str, keys: Sequence[str], n: int) -> list[str]:
    """Up to ``n`` distinct users the snapshot holds a row of ``keys`` for at ``destination``, at random."""
    users = (
        select(snapshot.c.user_id)
        .where(snapshot.c.destination == destination, snapshot.c.computation_key.in_(list(keys)))
        .distinct()
        .subquery()
    )
    return list(conn.execute(select(users.c.user_id).order_by(func.random()).limit(n)).scalars())


def mark_in_doubt(conn: Connection, destination: str, rows: Iterable[tuple[str, str, str | None, str | None]]) -> int:
    """For each ``(user_id, key, held, email)``: the snapshot row at ``destination`` takes the value the destination was
    read to hold (canonical JSON, None: nothing) and is put in doubt (created if missing), so the next run sends
    the user the current truth whatever the snapshot says, exits included (a value the destination holds and the
    source does not is then sent as ``false`` / ``null``)."""
    now = utcnow()
    count = 0
    for user_id, key, held, email in rows:
        stmt = upsert(conn, snapshot).values(
            destination=destination,
            computation_key=key,
            user_id=user_id,
            value=held,
            email=email,
            updated_at=now,
            in_doubt=True,
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[snapshot.c.destination, snapshot.c.computation_key, snapshot.c.user_id],
                set_={
                    "in_doubt": true(),
                    "value": stmt.excluded.value,
                    "updated_at": stmt.excluded.updated_at,
                    "email": func.coalesce(snapshot.c.email, stmt.excluded.email),
                },
            )
        )
        count += 1
    return count


def seed(conn: Connection, destination: str, rows: Iterable[tuple[str, str, str | None, str | None]]) -> int:
    """Seed the snapshot of ``destination`` with ``(user_id, key, value, email)`` read from it, where the snapshot
    has no row yet (what this tool sent itself is never overwritten); a ``adopted`` ledger row for each. How many."""
    now = utcnow()
    count = 0
    for user_id, key, value, email in rows:
        stmt = upsert(conn, snapshot).values(
            destination=destination, computation_key=key, user_id=user_id, value=value, email=email, updated_at=now
        )
        result = conn.execute(
            stmt.on_conflict_do_nothing(
                index_elements=[snapshot.c.destination, snapshot.c.computation_key, snapshot.c.user_id]
            )
        )
        if result.rowcount:
            conn.execute(
                ledger.insert().values(
                    destination=destination,
                    computation_key=key,
                    user_id=user_id,
                    old_value=None,
                    new_value=value,
                    run_id=None,
                    diff_id=None,
                    acknowledged_at=now,
                    source="adopted",
                )
            )
            count += 1
    return count
