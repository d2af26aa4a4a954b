"""Statements on ``alert_incidents`` and the reads the alerts make: what ``ops/alerts.py`` decides, stored here.

Claims are made by the statements themselves (an ``UPDATE ... RETURNING`` of unposted rows, a ``DELETE ...
RETURNING`` of recovered ones), so that two processes closing runs at once never post one alert twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, delete, func, select, update

from .dialect import upsert
from .schema import diffs, incidents


def held_changes(conn: Connection, run_id: int) -> list[tuple[Any, ...]]:
    """Per (destination, computation key): how many changes of the run the guard held, and one of their reasons."""
    rows = conn.execute(
        select(diffs.c.destination, diffs.c.computation_key, func.count(), func.max(diffs.c.error))
        .where(diffs.c.run_id == run_id, diffs.c.status == "held")
        .group_by(diffs.c.destination, diffs.c.computation_key)
    )
    return [tuple(r) for r in rows]


def open_incidents(conn: Connection) -> Sequence[Row[Any]]:
    """Every open incident row."""
    return conn.execute(select(incidents)).all()


def add(conn: Connection, rows: Iterable[Mapping[Any, Any]]) -> None:
    """Insert incident rows; one another process inserted first is left as it is."""
    values = [dict(r) for r in rows]
    if values:
        conn.execute(upsert(conn, incidents).on_conflict_do_nothing(index_elements=["incident"]), values)


def drop_unannounced(conn: Connection, keys: Sequence[str]) -> None:
    """Delete the incidents ``keys`` that were never posted: their recovery has nothing to announce."""
    conn.execute(delete(incidents).where(incidents.c.incident.in_(keys), incidents.c.notified_at.is_(None)))


def claim_unposted(conn: Connection, now: dt.datetime) -> Sequence[Row[Any]]:
    """Mark every unposted incident as posted at ``now`` and return them (incident, message, opened_at)."""
    return conn.execute(
        update(incidents)
        .where(incidents.c.notified_at.is_(None))
        .values(notified_at=now)
        .returning(incidents.c.incident, incidents.c.message, incidents.c.opened_at)
    ).all()


def claim_recoveries(conn: Connection, keys: Sequence[str]) -> Sequence[Row[Any]]:
    """Delete the recovered incidents ``keys`` and return their rows, to announce."""
    return conn.execute(delete(incidents).where(incidents.c.incident.in_(keys)).returning(*incidents.c)).all()


def release_claim(conn: Connection, keys: Sequence[str], now: dt.datetime) -> None:
    """Give back a claim made at ``now`` whose post failed: the next run posts these again."""
    conn.execute(
        update(incidents).where(incidents.c.incident.in_(keys), incidents.c.notified_at == now).values(notified_at=None)
    )
