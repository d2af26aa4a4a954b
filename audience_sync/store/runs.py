"""The ``sync_runs`` table: opening, closing and reading runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, Connection, case, func, literal_column, select, update

from ..model import COUNT_KEYS, RunCounts, RunStatus
from ..redact import scrub
from ..values import TRUE
from . import staging
from .schema import diffs, runs, utcnow

__all__ = ["COUNT_KEYS"]  # re-exported: counted here, named in model.py


def open_run(
    conn: Connection, *, mode: str, trigger: str, destinations: Sequence[str], computations: Sequence[str]
) -> int:
    """Insert a ``running`` run and return its id."""
    result = conn.execute(
        runs.insert()
        .values(
            mode=mode,
            trigger=trigger,
            status=RunStatus.RUNNING,
            started_at=utcnow(),
            destinations=list(destinations),
            computations=list(computations),
            counts={},
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        .returning(runs.c.id)
    )
    return int(result.scalar_one())


def close_run(conn: Connection, run_id: int, *, status: RunStatus, counts: RunCounts, error: str | None = None) -> None:
    """Mark a run finished with its final status, counts and error text."""
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(status=status, finished_at=utcnow(), counts=counts, error=scrub(error))
    )


def last_change_id(conn: Connection) -> int:
    """The id of the newest diff row (0 if none): every change written after this call gets a greater id."""
    return int(conn.execute(select(func.coalesce(func.max(diffs.c.id), 0))).scalar_one())


class ChangeGroup(NamedTuple):
    """The run's changes of one destination, key, kind and status: how many, and how many holders (audience:
    ``true``; trait: a value) they add minus those they remove."""

    destination: str
    key: str
    change: str
    status: str
    n: int
    moved: int


def _holds(value: Any, computation_class: Any) -> ColumnElement[int]:
    """1 when ``value`` makes its user count in a size (audience: ``true``; trait: any value), else 0."""
    return case(
        (computation_class == "audience", case((value == TRUE, 1), else_=0)),
        else_=case((value.is_not(None), 1), else_=0),
    )


def _rows_of(run_id: int, after_id: int | None) -> list[ColumnElement[bool]]:
    """The predicate of run ``run_id``'s diff rows: as a range of ids past ``after_id`` when it is known."""
    if after_id is None:
        return [diffs.c.run_id == run_id]
    # run_id + 0: no index serves it, so the planners (SQLite's has no statistics) take the id range
    return [diffs.c.id > after_id, (diffs.c.run_id + 0) == run_id]


def change_groups(conn: Connection, run_id: int, *, after_id: int | None = None) -> list[ChangeGroup]:
    """The run's diff rows grouped by destination, key, kind and status, in one read of them: what
    :func:`count_changes` and ``sizes.record`` both count, so that closing a run reads its rows once.

    ``after_id``, :func:`last_change_id` from before the run wrote its changes, lets the read take the run's rows
    in table order (a range of ids) instead of one index lookup per row.
    """
    mine = _rows_of(run_id, after_id)
    # grouped by an expression no index orders, or SQLite walks a whole index of the history to save a sort
    destination = diffs.c.destination.concat(literal_column("''"))
    moved = _holds(diffs.c.new_value, diffs.c.computation_class) - _holds(diffs.c.old_value, diffs.c.computation_class)
    rows = conn.execute(
        select(destination, diffs.c.computation_key, diffs.c.change, diffs.c.status, func.count(), func.sum(moved))
        .where(*mine)
        .group_by(destination, diffs.c.computation_key, diffs.c.change, diffs.c.status)
    ).all()
    return [ChangeGroup(str(d), str(k), str(c), str(s), int(n), int(m or 0)) for d, k, c, s, n, m in rows]


def count_changes(conn: Connection, run_id: int, *, groups: Sequence[ChangeGroup] | None = None) -> RunCounts:
    """Counts of a run's diff rows: totals, and the same per destination and per computation.

    ``entered``/``exited``/``changed`` count changes by kind; ``sent``/``failed``/``skipped``/``pending`` by
    what became of them. A ``skipped`` change counts as skipped only, not by its kind: nothing of it reached the
    destination. ``groups``: :func:`change_groups`' answer, when the caller has read it already.
    """
    if groups is None:
        groups = change_groups(conn, run_id)
    totals: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
    per_destination: dict[str, dict[str, int]] = {}
    per_computation: dict[str, dict[str, int]] = {}
    for destination, key, change, status, n, _ in groups:
        for bucket in (
            totals,
            per_destination.setdefault(destination, dict.fromkeys(COUNT_KEYS, 0)),
            per_computation.setdefault(key, dict.fromkeys(COUNT_KEYS, 0)),
        ):
            if status != "skipped":  # a user the destination cannot take entered nothing there
                bucket[change] = bucket.get(change, 0) + n
            bucket[status] = bucket.get(status, 0) + n
    # every bucket holds exactly the COUNT_KEYS (a change's kind and status are among them, CHECK constraints)
    return cast(RunCounts, {**totals, "destinations": per_destination, "computations": per_computation})


def last_errors(conn: Connection, run_id: int, *, after_id: int | None = None) -> dict[str, str]:
    """Per destination, the error of the newest of run ``run_id``'s changes that stayed pending or failed with one
    (why they were not delivered: "connection refused", "429 ... after 5 retries"); destinations without any are
    left out. ``after_id`` as in :func:`change_groups`."""
    mine = _rows_of(run_id, after_id)
    newest = (
        select(func.max(diffs.c.id))
        .where(*mine, diffs.c.status.in_(("pending", "failed")), diffs.c.error.is_not(None))
        .group_by(diffs.c.destination)
    )
    rows = conn.execute(select(diffs.c.destination, diffs.c.error).where(diffs.c.id.in_(newest))).all()
    return {str(destination): str(error) for destination, error in rows}


def list_runs(conn: Connection, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` runs, newest first, as plain dicts (``run_id`` instead of ``id``)."""
    result = conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).mappings().all()
    return [{"run_id": r["id"], **{k: v for k, v in r.items() if k != "id"}} for r in result]


def latest_run_id(conn: Connection) -> int | None:
    """The id of the newest run, or None when there is none."""
    return conn.execute(select(func.max(runs.c.id))).scalar_one_or_none()


def abandon_stale_runs(conn: Connection, destinations: Sequence[str], *, reason: str) -> list[int]:
    """Mark runs still ``running`` on any of ``destinations`` as failed with ``reason`` and counts of what they
    did (``sent``: what their destinations acknowledged and they recorded), and delete their staged (and skipped)
    rows in the same transaction; return their ids.

    Only call this while holding those destinations' run locks (confirmed in ``conn``'s transaction): then no such
    run can still record anything, though a paused one may still be alive; it closes its own row again when it
    notices it lost its lock.
    """
    mine = set(destinations)
    rows = conn.execute(select(runs.c.id, runs.c.destinations).where(runs.c.status == RunStatus.RUNNING)).all()
    abandoned = []
    for run_id in [r.id for r in rows if mine & set(r.destinations or [])]:
        # still running when updated: a run that noticed its lost lock may have closed its own row, with its own
        # reason, since the select above; that account is kept (PostgreSQL rechecks the row after waiting for it)
        closed = conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, finished_at=utcnow(), error=reason, counts=count_changes(conn, run_id))
        )
        if closed.rowcount:
            # nothing else ever deletes a dead run's staging: left, its rows would take space for good and keep
            # every later run from emptying staging whole (``staging.clear``)
            staging.clear(conn, run_id)
            abandoned.append(run_id)
    return abandoned


def run_exists(conn: Connection, run_id: int) -> bool:
    """True when a run with this id exists."""
    return conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None
