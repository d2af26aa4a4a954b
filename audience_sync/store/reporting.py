"""Read-only queries behind the HTML report: the runs of a window, and what needs attention (failed changes,
the pending outbox, the guard's holds). Each reads what an index serves or stops at a limit, so a report of a
state database with a long history reads the runs it shows, not the whole history of changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from ..values import decode
from .schema import diffs, runs, status_is

_RUN_FIELDS = (runs.c.id, runs.c.mode, runs.c.status, runs.c.started_at, runs.c.finished_at, runs.c.destinations)


def _runs_newest_first(
    conn: Connection, *, since: dt.datetime | None, destination: str | None, with_counts: bool
) -> Iterator[dict[str, Any]]:
    fields = (*_RUN_FIELDS, runs.c.counts, runs.c.error) if with_counts else _RUN_FIELDS
    stmt = select(*fields).order_by(runs.c.id.desc())
    if since is not None:
        stmt = stmt.where(runs.c.started_at >= since)
    for row in conn.execution_options(yield_per=500).execute(stmt).mappings():
        if destination is None or destination in (row["destinations"] or []):
            yield dict(row)


def window_runs(
    conn: Connection, *, since: dt.datetime | None = None, destination: str | None = None, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` runs (newest first) started at or after ``since`` that covered ``destination`` (all
    runs when None), with their counts and error; and how many such runs there are in all."""
    shown: list[dict[str, Any]] = []
    for row in _runs_newest_first(conn, since=since, destination=destination, with_counts=True):
        shown.append(row)
        if len(shown) == limit:
            break
    if len(shown) < limit:
        return shown, len(shown)
    total = sum(1 for _ in _runs_newest_first(conn, since=since, destination=destination, with_counts=False))
    return shown, total


_CHANGE_FIELDS = (
    diffs.c.run_id,
    diffs.c.destination,
    diffs.c.computation_key,
    diffs.c.user_id,
    diffs.c.change,
    diffs.c.new_value,
    diffs.c.attempts,
    diffs.c.error,
    diffs.c.created_at,
)


def changes_of_runs(
    conn: Connection, run_ids: Sequence[int], status: str, *, destination: str | None = None, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` changes with ``status`` of the runs ``run_ids``, taken newest run first (each run read
    through its run_id index), values decoded."""
    out: list[dict[str, Any]] = []
    for run_id in run_ids:
        stmt = select(*_CHANGE_FIELDS).where(diffs.c.run_id == run_id, diffs.c.status == status)
        if destination is not None:
            stmt = stmt.where(diffs.c.destination == destination)
        stmt = stmt.order_by(diffs.c.destination, diffs.c.computation_key, diffs.c.user_id).limit(limit - len(out))
        out += [{**dict(r), "new_value": decode(r["new_value"])} for r in conn.execute(stmt).mappings()]
        if len(out) >= limit:
            break
    return out


def held_groups(conn: Connection, run_ids: Sequence[int], *, destination: str | None = None) -> list[dict[str, Any]]:
    """The guard's holds of the runs ``run_ids``: per run, destination and key, how many changes it held and why."""
    if not run_ids:
        return []
    stmt = (
        select(diffs.c.run_id, diffs.c.destination, diffs.c.computation_key, diffs.c.error, func.count().label("n"))
        .where(diffs.c.run_id.in_(list(run_ids)), diffs.c.status == "held")
        .group_by(diffs.c.run_id, diffs.c.destination, diffs.c.computation_key, diffs.c.error)
        .order_by(diffs.c.run_id.desc(), diffs.c.destination, diffs.c.computation_key)
    )
    if destination is not None:
        stmt = stmt.where(diffs.c.destination == destination)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def pending_groups(conn: Connection, *, destination: str | None = None) -> list[dict[str, Any]]:
    """The outbox: per destination, key and run, how many changes are still pending and with what error (set
    when a run stopped before sending them), oldest run first, with the run's start; dry runs left out."""
    stmt = (
        select(
            diffs.c.destination,
            diffs.c.computation_key,
            diffs.c.run_id,
            diffs.c.error,
            func.count().label("n"),
        )
        .where(status_is("pending"))  # the partial index of pending changes
        .group_by(diffs.c.destination, diffs.c.computation_key, diffs.c.run_id, diffs.c.error)
    )
    if destination is not None:
        stmt = stmt.where(diffs.c.destination == destination)
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    of_run = {
        rid: (mode, started)
        for rid, mode, started in conn.execute(
            select(runs.c.id, runs.c.mode, runs.c.started_at).where(runs.c.id.in_(sorted({r["run_id"] for r in rows})))
        )
    }
    out = []
    for row in rows:
        mode, started = of_run.get(row["run_id"], (None, None))
        if mode != "dry_run":  # older dry runs left their changes pending (now planned): not the outbox
            out.append({**row, "started_at": started})
    return sorted(out, key=lambda r: (r["run_id"], r["destination"], r["computation_key"]))
