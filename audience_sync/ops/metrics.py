"""Prometheus metrics in the text format, written to a file for node_exporter's textfile collector.

Everything but the ``last_attempt`` gauges is read back from the state database, per (destination,
computation) from the latest run that covered the pair, so the file tells the same story whichever process
(cron, the scheduler, a person) ran last, and per-destination or per-audience schedules do not hide or
overwrite each other's figures. Dry runs are left out. The file is replaced atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from sqlalchemy import Engine

from ..config import Config
from ..model import COUNT_KEYS
from ..store.history import snapshot_sizes
from ..store.latest import Pair, change_counts, latest_runs, pending_by_destination
from .attempts import Attempt

#: how many recent runs are searched for each pair's latest and latest successful run
RECENT_RUNS = 2_000


def configured_pairs(config: Config) -> set[Pair]:
    """Every (destination, computation key) the config syncs."""
    return {(d, c.key) for c in config.computations for d in c.destinations}


def build_registry(engine: Engine, pairs: Iterable[Pair], attempt: Attempt | None) -> CollectorRegistry:
    """A registry holding the current metrics of ``pairs`` (and of ``attempt``, when given)."""
    wanted = set(pairs)
    destinations = sorted({d for d, _ in wanted})
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(f"audience_sync_{name}", doc, labelnames=list(labels), registry=registry)

    if attempt is not None:
        gauge("last_attempt_timestamp_seconds", "When the latest run attempt of this host ended.").set(
            attempt.finished_at.timestamp()
        )
        gauge("last_attempt_exit_code", "Exit code of the latest run attempt (0 ok, 1 failed, 3 partial).").set(
            attempt.exit_code
        )
    pair_labels = ("destination", "computation")
    last_ts = gauge("last_run_timestamp_seconds", "When the latest run covering the pair finished.", pair_labels)
    last_ok = gauge("last_run_success", "1 if the latest run covering the pair succeeded, else 0.", pair_labels)
    status = gauge(
        "last_run_status", "The status of the latest run covering the pair (1 for it).", [*pair_labels, "status"]
    )
    duration = gauge("last_run_duration_seconds", "Wall time of the latest run covering the pair.", pair_labels)
    last_success = gauge(
        "last_success_timestamp_seconds", "When the latest successful run covering the pair finished.", pair_labels
    )
    changes = gauge(
        "last_run_changes",
        "Changes of the latest run covering the pair, by kind "
        "(entered, exited, changed; sent, failed, skipped, pending, held, planned; identifiers).",
        [*pair_labels, "kind"],
    )
    pending = gauge("pending_changes", "Changes waiting in the outbox (pending or in flight).", ["destination"])
    size = gauge("audience_size", "Users the destination holds the audience (or a trait value) for.", pair_labels)

    with engine.connect() as conn:
        latest, succeeded = latest_runs(conn, wanted, RECENT_RUNS)
        counted = change_counts(conn, latest)
        for (dest, key), row in latest.items():
            if row.finished_at is not None:
                last_ts.labels(dest, key).set(row.finished_at.timestamp())
                duration.labels(dest, key).set((row.finished_at - row.started_at).total_seconds())
            last_ok.labels(dest, key).set(1 if row.status == "succeeded" else 0)
            status.labels(dest, key, row.status).set(1)
            for kind in COUNT_KEYS:
                changes.labels(dest, key, kind).set(counted.get((dest, key, kind), 0))
        for (dest, key), ts in succeeded.items():
            last_success.labels(dest, key).set(ts)
        counts = pending_by_destination(conn, destinations)
        for dest in destinations:
            pending.labels(dest).set(counts.get(dest, 0))
        for pair, n in snapshot_sizes(conn).items():
            if pair in wanted:
                size.labels(*pair).set(n)
    return registry


def write_metrics(path: str | Path, engine: Engine, config: Config, attempt: Attempt | None) -> None:
    """Write the metrics of everything ``config`` syncs to ``path`` (Prometheus text format), atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), build_registry(engine, configured_pairs(config), attempt))
