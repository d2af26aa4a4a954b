"""Prometheus metrics in the text format, written to a file for node_exporter's textfile collector.

Everything but the ``last_attempt`` gauges is read back from the state database, so the file tells the same
story whichever process (cron, the scheduler, a person) ran last, and per-destination schedules do not
overwrite each other's figures. The file is replaced atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from sqlalchemy import Connection, Engine, Row, func, select

from .attempts import Attempt
from .store.history import snapshot_sizes
from .store.runs import COUNT_KEYS
from .store.schema import DiffRow, SyncRun, table_of

runs = table_of(SyncRun)
diffs = table_of(DiffRow)

#: how many recent runs are searched for each destination's latest and latest successful run
RECENT_RUNS = 1_000


def _latest_runs(conn: Connection, destinations: Sequence[str]) -> tuple[dict[str, Row[Any]], dict[str, float]]:
    """Per destination: its latest finished run, and when its latest successful run finished (epoch s)."""
    rows = conn.execute(
        select(runs)
        .where(runs.c.status != "running", runs.c.mode != "dry_run")
        .order_by(runs.c.id.desc())
        .limit(RECENT_RUNS)
    ).all()
    latest: dict[str, Row[Any]] = {}
    succeeded: dict[str, float] = {}
    for row in rows:
        for dest in row.destinations or []:
            if dest not in destinations:
                continue
            latest.setdefault(dest, row)
            if row.status == "succeeded" and row.finished_at is not None:
                succeeded.setdefault(dest, row.finished_at.timestamp())
    return latest, succeeded


def build_registry(engine: Engine, destinations: Sequence[str], attempt: Attempt | None) -> CollectorRegistry:
    """A registry holding the current metrics of ``destinations`` (and of ``attempt``, when given)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"audience_sync_{name}", doc, labelnames=labels, registry=registry)

    if attempt is not None:
        gauge("last_attempt_timestamp_seconds", "When the latest run attempt of this host ended.").set(
            attempt.finished_at.timestamp()
        )
        gauge("last_attempt_exit_code", "Exit code of the latest run attempt (0 ok, 1 failed, 3 partial).").set(
            attempt.exit_code
        )
    last_ts = gauge("last_run_timestamp_seconds", "When the destination's latest run finished.", ["destination"])
    last_ok = gauge("last_run_success", "1 if the destination's latest run succeeded, else 0.", ["destination"])
    status = gauge(
        "last_run_status", "The destination's latest run status (1 for the current one).", ["destination", "status"]
    )
    duration = gauge("last_run_duration_seconds", "Wall time of the destination's latest run.", ["destination"])
    last_success = gauge(
        "last_success_timestamp_seconds", "When the destination's latest successful run finished.", ["destination"]
    )
    changes = gauge(
        "last_run_changes",
        "Changes of the destination's latest run, by computation and kind "
        "(entered, exited, changed; sent, failed, skipped, pending, held).",
        ["destination", "computation", "kind"],
    )
    pending = gauge("pending_changes", "Changes waiting in the outbox (pending or in flight).", ["destination"])
    size = gauge(
        "audience_size",
        "Users the destination holds the audience (or a trait value) for.",
        ["destination", "computation"],
    )

    with engine.connect() as conn:
        latest, succeeded = _latest_runs(conn, destinations)
        for dest, row in latest.items():
            finished = row.finished_at
            if finished is not None:
                last_ts.labels(dest).set(finished.timestamp())
                duration.labels(dest).set((finished - row.started_at).total_seconds())
            last_ok.labels(dest).set(1 if row.status == "succeeded" else 0)
            status.labels(dest, row.status).set(1)
        for dest, ts in succeeded.items():
            last_success.labels(dest).set(ts)
        if latest:
            per_run = conn.execute(
                select(
                    diffs.c.run_id,
                    diffs.c.destination,
                    diffs.c.computation_key,
                    diffs.c.change,
                    diffs.c.status,
                    func.count(),
                )
                .where(diffs.c.run_id.in_({r.id for r in latest.values()}))
                .group_by(diffs.c.run_id, diffs.c.destination, diffs.c.computation_key, diffs.c.change, diffs.c.status)
            ).all()
            counted: dict[tuple[str, str, str], int] = {}
            for run_id, dest, key, change, st, n in per_run:
                if dest not in latest or latest[dest].id != run_id:
                    continue
                for kind in (change, st):
                    counted[(dest, key, kind)] = counted.get((dest, key, kind), 0) + n
            keys = {(d, k) for d, k, _ in counted}
            for dest, key in keys:
                for kind in COUNT_KEYS:
                    changes.labels(dest, key, kind).set(counted.get((dest, key, kind), 0))
        for dest, n in conn.execute(
            select(diffs.c.destination, func.count())
            .where(diffs.c.status.in_(("pending", "sending")), diffs.c.destination.in_(list(destinations)))
            .group_by(diffs.c.destination)
        ).all():
            pending.labels(dest).set(n)
        for dest in destinations:
            pending.labels(dest)  # present (0) even when nothing waits
        for (dest, key), n in snapshot_sizes(conn).items():
            if dest in destinations:
                size.labels(dest, key).set(n)
    return registry


def write_metrics(path: str | Path, engine: Engine, destinations: Sequence[str], attempt: Attempt | None) -> None:
    """Write the metrics of ``destinations`` to ``path`` in the Prometheus text format, replacing it atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), build_registry(engine, destinations, attempt))
