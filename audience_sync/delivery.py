"""Delivery: a run's pending changes for one destination, chunk by chunk, through its adapter.

Each chunk is marked ``sending`` (committed), handed to the adapter, then its outcomes are recorded in one
transaction that also advances the snapshot for what was acknowledged. A kill in between leaves the chunk
``sending``: the next run puts it in doubt and sends the current truth, re-sending at most that chunk.

Destinations of Engage-shaped messages (:class:`~.destinations.base.MessageDestination`) get their messages
built by the state database, as bytes; the others get :class:`~.changes.Change` objects. Either way the next
chunk is read on a helper thread while the current one is marked, sent and recorded, so that reading the outbox
overlaps the destination's answer. Only reading is done ahead: one chunk at a time is ever in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from .changes import NOT_ATTEMPTED, Outcome
from .destinations.base import Destination, MessageDestination
from .errors import CredentialsRejected, DestinationError
from .progress import NoProgress, Progress
from .store import outbox
from .store.engine import delivery_cache

log = logging.getLogger(__name__)

STOPPED = "the run was asked to stop (SIGTERM/SIGINT) before sending this; the next run sends it"

T = TypeVar("T")


@dataclass
class DeliveryReport:
    """What happened to one destination in a run. ``error`` is set when it had to stop early."""

    destination: str
    attempted: int = 0
    error: str | None = None
    credentials_rejected: bool = False


def read_ahead(items: Iterator[T], name: str = "outbox") -> Generator[T, None, None]:
    """Yield ``items`` while the next one is produced on a helper thread, one item ahead.

    Guarantees: the same items in the same order (``items`` must not yield None, which ends it); ``items`` is
    advanced by one thread at a time and never more than one item beyond what was consumed; an exception raised
    by ``items`` is raised here, in order. Closing this generator early waits for the item being read, then
    drops it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{name}") as pool:
        ahead = pool.submit(next, items, None)
        while True:
            item = ahead.result()
            if item is None:
                return
            ahead = pool.submit(next, items, None)
            yield item


def _paths(
    engine: Engine, run_id: int, destination: Destination, chunk_size: int
) -> tuple[Iterator[outbox.Chunk[Any]], Callable[[outbox.Chunk[Any]], dict[int, Outcome]], Callable[..., Any]]:
    """The chunks of ``destination``, how to deliver one (returning what was not acknowledged), and how to read a
    refusal's ``partial`` outcomes the same way."""
    if isinstance(destination, MessageDestination):
        messages = outbox.pending_messages(
            engine, run_id, destination.name, chunk_size, destination.send, destination.options
        )

        def refused(chunk: outbox.Chunk[Any], partial: dict[int, Outcome] | None) -> dict[int, Outcome]:
            # partial lists what was not acknowledged; without one, nothing was
            return partial if partial is not None else {diff_id: NOT_ATTEMPTED for diff_id, _ in chunk.items}

        return messages, lambda chunk: destination.deliver_messages(chunk.items), refused
    changes = outbox.pending_chunks(engine, run_id, destination.name, chunk_size)

    def unacked(chunk: outbox.Chunk[Any], outcomes: dict[int, Outcome] | None) -> dict[int, Outcome]:
        return outbox.unacknowledged(chunk.items, outcomes or {})

    return changes, lambda chunk: unacked(chunk, destination.deliver(chunk.items)), unacked


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

    Guarantees: a chunk is marked ``sending`` (committed) before any of it goes out, and at most one chunk is
    in flight; a change is marked ``sent`` (and its snapshot advanced, in the same transaction) only after the
    adapter reported it acknowledged; a destination-wide failure (credentials refused, sink unwritable) stops
    this destination, records what it had acknowledged, and leaves the rest pending with the reason. When
    ``stop`` is set (a SIGTERM), the chunk in flight is finished and recorded, and the rest stays pending for
    the next run.
    """
    progress = progress or NoProgress()
    report = DeliveryReport(destination.name)
    task = f"sending to {destination.name}"
    progress.begin(task)
    chunks, deliver, partial = _paths(engine, run_id, destination, chunk_size)
    ahead = read_ahead(chunks, destination.name)
    try:
        # one connection for the writes, with a page cache that holds a chunk between marking and recording it
        with engine.connect() as pooled, delivery_cache(pooled) as conn:
            chunk = next(ahead, None)
            if chunk is not None:
                with conn.begin():
                    if _stop_requested(stop):
                        return _stopped(conn, run_id, report)
                    outbox.mark_in_flight(conn, chunk)
            while chunk is not None:
                try:
                    unacked = deliver(chunk)
                except DestinationError as exc:
                    with conn.begin():
                        outbox.record(conn, chunk, partial(chunk, exc.partial))
                        outbox.keep_pending(conn, run_id, destination.name, f"not sent: {exc}")
                    report.error = str(exc)
                    report.credentials_rejected = isinstance(exc, CredentialsRejected)
                    log.error("%s", exc)
                    return report
                following = next(ahead, None)
                with conn.begin():  # one transaction: this chunk recorded, the next one marked in flight
                    outbox.record(conn, chunk, unacked)
                    report.attempted += chunk.size
                    progress.advance(task, chunk.size)
                    if following is not None:
                        if _stop_requested(stop):
                            return _stopped(conn, run_id, report)
                        outbox.mark_in_flight(conn, following)
                chunk = following
    finally:
        ahead.close()
        progress.end(task)
    return report


def _stop_requested(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _stopped(conn: Connection, run_id: int, report: DeliveryReport) -> DeliveryReport:
    """Note on the changes left pending that the run was asked to stop (in ``conn``'s transaction)."""
    outbox.keep_pending(conn, run_id, report.destination, STOPPED)
    report.error = STOPPED
    return report
