"""The reads behind the metrics: each (destination, computation) pair's latest runs, their tallies, and the
pending outbox per destination. Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, func, select

from .schema import diffs, runs

Pair = tuple[str, str]  # (destination, computation key)


def latest_runs(conn: Connection, pairs: set[Pair], recent: int) -> tuple[dict[Pair, Row[Any]], dict[Pair, float]]:
    """Per pair: its latest finished run, and when its latest successful run finished (epoch seconds), among
    the ``recent`` latest finished runs; dry runs left out."""
    rows = conn.execute(
        select(runs)
        .where(runs.c.status != "running", runs.c.mode != "dry_run")
        .order_by(runs.c.id.desc())
        .limit(recent)
    ).all()
    latest: dict[Pair, Row[Any]] = {}
    succeeded: dict[Pair, float] = {}
    for row in rows:
        for dest in row.destinations or []:
            for key in row.computations or []:
                pair = (dest, key)
                if pair not in pairs:
                    continue
                latest.setdefault(pair, row)
                if row.status == "succeeded" and row.finished_at is not None:
                    succeeded.setdefault(pair, row.finished_at.timestamp())
    return latest, succeeded


def change_counts(conn: Connection, latest: dict[Pair, Row[Any]]) -> dict[tuple[str, str, str], int]:
    """Per (destination, computation, kind): the changes of the pair's latest run (kinds as in ``COUNT_KEYS``)."""
    counted: dict[tuple[str, str, str], int] = {}
    run_ids = {r.id for r in latest.values()}
    if not run_ids:
        return counted
    stmt = (
        select(
            diffs.c.run_id, diffs.c.destination, diffs.c.computation_key, diffs.c.change, diffs.c.status, func.count()
        )
        .where(diffs.c.run_id.in_(run_ids))
        .group_by(diffs.c.run_id, diffs.c.destination, diffs.c.computation_key, diffs.c.change, diffs.c.status)
    )
    for run_id, dest, key, change, status, n in conn.execute(stmt).all():
        row = latest.get((dest, key))
        if row is None or row.id != run_id:
            continue
        for kind in (status,) if status == "skipped" else (change, status):  # as runs.count_changes counts
            counted[(dest, key, kind)] = counted.get((dest, key, kind), 0) + n
    return counted


def pending_by_destination(conn: Connection, destinations: Sequence[str]) -> dict[str, int]:
    """How many changes wait in the outbox per destination (dry runs' left out)."""
    waiting = conn.execute(
        select(diffs.c.destination, func.count())
        .select_from(diffs.join(runs, runs.c.id == diffs.c.run_id))
        .where(
            diffs.c.status == "pending",
            runs.c.mode != "dry_run",
            diffs.c.destination.in_(destinations),
        )
        .group_by(diffs.c.destination)
    ).all()
    return {str(d): int(n) for d, n in waiting}
