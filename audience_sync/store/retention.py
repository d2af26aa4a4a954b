"""Retention: deleting old diff rows and runs, in batches, without touching what a run still needs.

Only rows of finished runs whose status is final (``sent``, ``failed``, ``skipped``, ``superseded``, ``held``,
``planned``) are deleted. The snapshot, ``pending`` rows (the outbox), ``delivery_in_flight`` rows (the
crash-recovery record) and
runs still ``running`` are never touched, so pruning is safe while a run is in progress. The newest run is
always kept, so run ids (part of message ids) are never handed out again. The membership ledger is folded at
the same cut-off (:func:`audience_sync.store.ledger.fold`): one baseline row per user, so ``members --at`` still
answers every instant from the cut-off on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select, Table, delete, exists, func, select

from ..model import DiffStatus
from . import ledger
from .schema import diffs, runs, utcnow

#: every status a change does not leave again
FINAL_STATUSES = tuple(s.value for s in DiffStatus if s is not DiffStatus.PENDING)


@dataclass(frozen=True)
class PruneResult:
    """What a prune deleted (or, dry, would delete), and the cut-off it used."""

    cutoff: dt.datetime
    diffs: int
    runs: int
    #: membership ledger rows folded into the per-user baseline at the cut-off (``store/ledger.py``)
    ledger: int = 0


def prune(engine: Engine, older_than: dt.timedelta, *, batch_size: int = 10_000, dry_run: bool = False) -> PruneResult:
    """Delete final diff rows of runs that finished more than ``older_than`` ago, then those runs if empty.

    Each batch of at most ``batch_size`` rows is its own transaction, so a large prune never holds a long
    lock and an interrupted prune leaves a consistent (partly pruned) history. ``dry_run`` only counts.
    """
    cutoff = utcnow() - older_than
    newest = select(func.max(runs.c.id)).scalar_subquery()
    # the newest run is always kept: SQLite would otherwise hand its id out again, and run ids are part of
    # message ids (through the snapshot's run_id), which must never repeat
    old_runs = select(runs.c.id).where(runs.c.status != "running", runs.c.finished_at < cutoff, runs.c.id != newest)
    prunable = select(diffs.c.id).where(diffs.c.run_id.in_(old_runs), diffs.c.status.in_(FINAL_STATUSES))
    # runs left with no diff rows at all (a concurrent run may turn an old pending row into a final one
    # between the two phases; such a row keeps its run until the next prune)
    empty_runs = select(runs.c.id).where(runs.c.id.in_(old_runs), ~exists().where(diffs.c.run_id == runs.c.id))
    would_be_empty = select(runs.c.id).where(
        runs.c.id.in_(old_runs), ~exists().where(diffs.c.run_id == runs.c.id, diffs.c.status.not_in(FINAL_STATUSES))
    )
    if dry_run:
        with engine.connect() as conn:
            n_diffs = conn.execute(select(func.count()).select_from(prunable.subquery())).scalar_one()
            n_runs = conn.execute(select(func.count()).select_from(would_be_empty.subquery())).scalar_one()
        return PruneResult(cutoff, int(n_diffs), int(n_runs), ledger.fold(engine, cutoff, dry_run=True))

    deleted_diffs = _delete_in_batches(engine, diffs, prunable, batch_size)
    deleted_runs = _delete_in_batches(engine, runs, empty_runs, batch_size)
    return PruneResult(cutoff, deleted_diffs, deleted_runs, ledger.fold(engine, cutoff))


def _delete_in_batches(engine: Engine, table: Table, ids: Select[Any], batch_size: int) -> int:
    """Delete the rows of ``table`` whose ``id`` ``ids`` selects, ``batch_size`` per transaction; how many."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            batch = conn.execute(ids.limit(batch_size)).scalars().all()
            if batch:
                conn.execute(delete(table).where(table.c.id.in_(batch)))
        deleted += len(batch)
        if len(batch) < batch_size:
            return deleted
