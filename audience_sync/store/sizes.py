"""The ``size_history`` table: per run, destination and computation, the size the destination held after the run
and the run's changes of it. Written by the run as it closes; read by ``audiences --history`` and the report.

The size is the number of users a destination acknowledged the computation for: audience members (``true``)
or users with a trait value (not null), exactly what counting the snapshot would give when the run closed. It is
known without counting the snapshot on every run (2–4 s at 10M memberships) because the snapshot's values change
in one way only: :func:`audience_sync.store.outbox.record` copies a change's ``new_value`` into the snapshot in
the transaction that marks it ``sent``, and the change's ``old_value`` is the value the diff read from the
snapshot, which no other run can have changed since (one run per destination holds the lock). Marking a row in
doubt or starting flap damping's clock leaves values alone. So

    size after run R = size after P + (holders the sent changes of R added - holders they removed)

where P is the latest run recorded for the destination and key. That holds only when no run between P and R
covered them: a run that died, or failed before delivering, records nothing, but may have sent changes. Then,
and for a pair never recorded, the snapshot is counted for that destination and key (once; later runs add up
again). Anything that ever changes snapshot values outside a run must delete the pair's newest size row, or
record one, so that the next run counts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, select, tuple_

from ..model import COUNT_KEYS
from ..values import TRUE
from .runs import ChangeGroup, change_groups
from .schema import runs, sizes, snapshot, utcnow

#: the change kinds and statuses a size row counts, besides ``size``
TALLIES = tuple(k for k in COUNT_KEYS if k != "planned")  # a dry run records no sizes


@dataclass(frozen=True)
class Pair:
    """One destination and computation a run covers."""

    destination: str
    key: str
    computation_class: str


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TALLIES, 0))
    delta: int = 0  # holders added minus removed by the acknowledged changes


def _changes(groups: Sequence[ChangeGroup]) -> dict[tuple[str, str], _Tally]:
    """The run's changes per (destination, key): kinds, statuses, and the holders their acknowledged part moved."""
    out: dict[tuple[str, str], _Tally] = {}
    for dest, key, change, status, n, moved in groups:
        tally = out.setdefault((dest, key), _Tally())
        if status != "skipped":  # as in runs.count_changes: a skipped change counts as skipped only
            tally.counts[change] = tally.counts.get(change, 0) + n
        if status in tally.counts:
            tally.counts[status] += n
        if status == "sent":
            tally.delta += moved
    return out


def _previous(conn: Connection, run_id: int, pairs: Sequence[Pair]) -> dict[tuple[str, str], tuple[int, int]]:
    """Per pair, the latest recorded run before ``run_id`` and the size recorded then."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for dest in sorted({p.destination for p in pairs}):
        keys = sorted({p.key for p in pairs if p.destination == dest})
        latest = (
            select(sizes.c.computation_key, func.max(sizes.c.run_id).label("run_id"))
            .where(sizes.c.destination == dest, sizes.c.computation_key.in_(keys), sizes.c.run_id < run_id)
            .group_by(sizes.c.computation_key)
            .subquery()
        )
        rows = conn.execute(
            select(sizes.c.computation_key, sizes.c.run_id, sizes.c.size).join(
                latest,
                and_(
                    sizes.c.destination == dest,
                    sizes.c.computation_key == latest.c.computation_key,
                    sizes.c.run_id == latest.c.run_id,
                ),
            )
        ).all()
        out.update({(dest, key): (int(rid), int(size)) for key, rid, size in rows})
    return out


def _unrecorded(
    conn: Connection, run_id: int, previous: dict[tuple[str, str], tuple[int, int]]
) -> set[tuple[str, str]]:
    """The pairs some run covered after their latest recorded run without recording a size (it died, or failed
    before delivering): what it may have sent is not in the running sum, so they must be counted."""
    if not previous:
        return set()
    since = min(rid for rid, _ in previous.values())
    between = conn.execute(
        select(runs.c.id, runs.c.destinations, runs.c.computations).where(
            runs.c.id > since, runs.c.id < run_id, runs.c.mode != "dry_run"
        )
    ).all()
    stale = set()
    for rid, dests, keys in between:
        covered = set(keys or [])
        for dest in dests or []:
            for key in covered:
                prev = previous.get((dest, key))
                if prev is not None and prev[0] < rid:
                    stale.add((dest, key))
    return stale


def _count(conn: Connection, pairs: Iterable[Pair]) -> dict[tuple[str, str], int]:
    """The snapshot's holders of each pair, counted."""
    wanted = list(pairs)
    out = dict.fromkeys(((p.destination, p.key) for p in wanted), 0)
    groups: dict[tuple[str, str], list[str]] = {}
    for p in wanted:
        groups.setdefault((p.destination, p.computation_class), []).append(p.key)
    for (dest, cls), keys in sorted(groups.items()):
        holds = snapshot.c.value == TRUE if cls == "audience" else snapshot.c.value.is_not(None)
        rows = conn.execute(
            select(snapshot.c.computation_key, func.count())
            .where(snapshot.c.destination == dest, snapshot.c.computation_key.in_(sorted(keys)), holds)
            .group_by(snapshot.c.computation_key)
        ).all()
        out.update({(dest, key): int(n) for key, n in rows})
    return out


def record(
    conn: Connection,
    run_id: int,
    pairs: Sequence[Pair],
    *,
    groups: Sequence[ChangeGroup] | None = None,
) -> None:
    """Record the size of every pair the run covered, and the run's changes of it, as the run closes.

    Call in the transaction that closes the run, while holding its destinations' locks, after its last chunk was
    recorded: the sizes are then exactly what the snapshot holds. ``groups``: ``runs.change_groups``' answer,
    when the run's close has read it already.
    A dry run changes no snapshot and is not recorded.
    """
    pairs = list(dict.fromkeys(pairs))  # a destination named twice on the command line is one destination
    if not pairs:
        return
    changes = _changes(change_groups(conn, run_id) if groups is None else groups)
    previous = _previous(conn, run_id, pairs)
    stale = _unrecorded(conn, run_id, previous)
    counted = _count(
        conn, [p for p in pairs if (p.destination, p.key) not in previous or (p.destination, p.key) in stale]
    )
    now = utcnow()
    rows = []
    for p in pairs:
        tally = changes.get((p.destination, p.key), _Tally())
        pair = (p.destination, p.key)
        size = counted[pair] if pair in counted else previous[pair][1] + tally.delta
        rows.append(
            {
                "destination": p.destination,
                "computation_key": p.key,
                "run_id": run_id,
                "computation_class": p.computation_class,
                "size": size,
                **{k: tally.counts[k] for k in TALLIES},
                "recorded_at": now,
            }
        )
    conn.execute(sizes.insert(), rows)


HISTORY_FIELDS = ("run_id", "recorded_at", "destination", "computation_key", "computation_class", "size", *TALLIES)


def history(
    conn: Connection,
    *,
    keys: Sequence[str] | None = None,
    destination: str | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Size rows in run order (oldest first), with the run's ``mode``, ``status`` and ``started_at`` (None once
    ``prune`` deleted the run). ``limit``: only the newest ``limit`` runs that recorded any of the selected
    rows; ``since``: only runs recorded at or after that instant."""
    where: list[ColumnElement[bool]] = []
    if keys is not None:
        where.append(sizes.c.computation_key.in_(list(keys)))
    if destination is not None:
        where.append(sizes.c.destination == destination)
    if since is not None:
        where.append(sizes.c.recorded_at >= since)
    if limit is not None:
        newest = (
            select(sizes.c.run_id).where(*where).group_by(sizes.c.run_id).order_by(sizes.c.run_id.desc()).limit(limit)
        ).subquery()
        first = conn.execute(select(func.min(newest.c.run_id))).scalar_one_or_none()
        if first is None:
            return []
        where.append(sizes.c.run_id >= first)
    stmt = (
        select(*(sizes.c[f] for f in HISTORY_FIELDS), runs.c.mode, runs.c.status, runs.c.started_at)
        .select_from(sizes.outerjoin(runs, runs.c.id == sizes.c.run_id))
        .where(*where)
        .order_by(sizes.c.run_id, sizes.c.destination, sizes.c.computation_key)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]


def latest(conn: Connection, *, destination: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (destination, key): its newest size row (``run_id``, ``size``, ``recorded_at``)."""
    newest = select(sizes.c.destination, sizes.c.computation_key, func.max(sizes.c.run_id).label("run_id"))
    if destination is not None:
        newest = newest.where(sizes.c.destination == destination)
    sub = newest.group_by(sizes.c.destination, sizes.c.computation_key).subquery()
    rows = conn.execute(
        select(sizes.c.destination, sizes.c.computation_key, sizes.c.run_id, sizes.c.size, sizes.c.recorded_at).where(
            tuple_(sizes.c.destination, sizes.c.computation_key, sizes.c.run_id).in_(select(sub))
        )
    ).mappings()
    return {(r["destination"], r["computation_key"]): dict(r) for r in rows}
