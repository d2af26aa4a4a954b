"""Delivery: a run's pending changes for one destination, chunk by chunk, through its adapter.

Each chunk is handed to the adapter, then its outcomes are recorded in one transaction that also advances
the snapshot for what was acknowledged. A kill between the two leaves the chunk pending: the next run
recomputes it and re-sends at most that chunk, with the same message ids.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy import Engine

from .destinations.base import Destination
from .destinations.rendering import LineFormat
from .errors import CredentialsRejected, DestinationError
from .progress import NoProgress, Progress
from .store import outbox

log = logging.getLogger(__name__)

STOPPED = "the run was asked to stop (SIGTERM/SIGINT) before sending this; the next run sends it"


@dataclass
class DeliveryReport:
    """What happened to one destination in a run. ``error`` is set when it had to stop early."""

    destination: str
    attempted: int = 0
    error: str | None = None
    credentials_rejected: bool = False


def deliver_pending(
    engine: Engine,
    run_id: int,
    destination: Destination,
    *,
    chunk_size: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> DeliveryReport:
    """Send the run's pending changes for ``destination`` and record each outcome.

    Guarantees: a change is marked ``sent`` (and its snapshot advanced) only after the adapter reported it
    acknowledged; a destination-wide failure (credentials refused, sink unwritable) stops this destination,
    records what it had acknowledged, and leaves the rest pending with the reason. When ``stop`` is set (a
    SIGTERM), the chunk in flight is finished and recorded, and the rest stays pending for the next run.
    """
    progress = progress or NoProgress()
    report = DeliveryReport(destination.name)
    task = f"sending to {destination.name}"
    progress.begin(task)
    fmt = destination.line_format()
    try:
        if fmt is not None:
            _deliver_lines(engine, run_id, destination, fmt, chunk_size, progress, task, stop, report)
            return report
        for chunk in outbox.pending_chunks(engine, run_id, destination.name, chunk_size):
            if stop is not None and stop.is_set():
                with engine.begin() as conn:
                    outbox.keep_pending(conn, run_id, destination.name, STOPPED)
                report.error = STOPPED
                return report
            with engine.begin() as conn:
                outbox.mark_sending(conn, chunk)
            try:
                outcomes = destination.deliver(chunk)
            except DestinationError as exc:
                with engine.begin() as conn:
                    outbox.record(conn, chunk, exc.partial)
                    outbox.keep_pending(conn, run_id, destination.name, f"not sent: {exc}")
                report.error = str(exc)
                report.credentials_rejected = isinstance(exc, CredentialsRejected)
                log.error("%s", exc)
                return report
            with engine.begin() as conn:
                outbox.record(conn, chunk, outcomes)
            report.attempted += len(chunk)
            progress.advance(task, len(chunk))
    finally:
        progress.end(task)
    return report


def _deliver_lines(
    engine: Engine,
    run_id: int,
    destination: Destination,
    fmt: LineFormat,
    chunk_size: int,
    progress: Progress,
    task: str,
    stop: threading.Event | None,
    report: DeliveryReport,
) -> None:
    """:func:`deliver_pending` for a sink that takes lines rendered by the database; the same guarantees."""
    for chunk in outbox.pending_line_chunks(engine, run_id, destination.name, chunk_size, fmt):
        if stop is not None and stop.is_set():
            with engine.begin() as conn:
                outbox.keep_pending(conn, run_id, destination.name, STOPPED)
            report.error = STOPPED
            return
        with engine.begin() as conn:
            outbox.mark_range_sending(conn, chunk.bounds)
        try:
            destination.write_lines(chunk.lines)
        except DestinationError as exc:
            with engine.begin() as conn:
                outbox.record_range(conn, chunk.bounds, error=f"not sent: {exc}")
                outbox.keep_pending(conn, run_id, destination.name, f"not sent: {exc}")
            report.error = str(exc)
            report.credentials_rejected = isinstance(exc, CredentialsRejected)
            log.error("%s", exc)
            return
        with engine.begin() as conn:
            outbox.record_range(conn, chunk.bounds)
        report.attempted += chunk.changes
        progress.advance(task, chunk.changes)
