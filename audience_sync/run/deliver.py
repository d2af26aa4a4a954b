"""Delivery: a run's pending changes for one destination, chunk by chunk, through its adapter.

Each chunk is noted in flight (one ``delivery_in_flight`` row, committed), handed to the adapter, then its outcomes
are recorded in one transaction that also advances the snapshot for what was acknowledged. A kill in between
leaves the note: the next run puts the chunk in doubt and sends the current truth, re-sending at most that chunk.
Every attempt to send is preceded by a check of the run lock, and every recording transaction begins with a
compare-and-set of its fencing token (``store/fencing.py``), so a run that lost its lock sends and records no more.

Destinations of Engage-shaped messages (:class:`~.destinations.base.MessageDestination`) get their messages
built by the state database, as bytes; the others get :class:`~.changes.Change` objects. Either way the next
chunk is read on a helper thread while the current one is marked, sent and recorded, so that reading the outbox
overlaps the destination's answer. Only reading is done ahead: one chunk at a time is ever in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine

from ..config import Config
from ..destinations import DestinationFactory, build_destination
from ..destinations.base import Destination, MessageDestination
from ..errors import CredentialsRejected, DestinationError, LockLost, TransientDestinationError
from ..model import NOT_ATTEMPTED, Outcome
from ..store import outbox
from ..store.engine import delivery_cache
from .progress import NoProgress, Progress

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


class Fence(Protocol):
    """The run lock as delivery sees it (:class:`~.store.lock.HeldLock`): a check before every attempt to send, a
    compare-and-set first in every recording transaction, and each destination's fencing token."""

    def check(self) -> None:
        """Raise LockLost once the run no longer holds its locks."""

    def confirm(self, conn: Connection, destinations: Sequence[str]) -> None:
        """Raise LockLost, in ``conn``'s transaction, unless the run still holds the locks of ``destinations``."""

    def destination_tokens(self) -> dict[str, int]:
        """Destination name -> the fencing token of its lock."""


class Unfenced:
    """No lock to prove (delivery outside a run, as in unit tests): every check passes, no token."""

    def check(self) -> None:
        pass

    def confirm(self, conn: Connection, destinations: Sequence[str]) -> None:
        pass

    def destination_tokens(self) -> dict[str, int]:
        return {}


def deliver_pending(
    engine: Engine,
    run_id: int,
    destination: Destination,
    *,
    chunk_size: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    fence: Fence | None = None,
) -> DeliveryReport:
    """Send the run's pending changes for ``destination`` and record each outcome.

    Guarantees: a chunk is noted in flight (committed) before any of it goes out, and at most one chunk is
    in flight; a change is marked ``sent`` (and its snapshot advanced, in the same transaction) only after the
    adapter reported it acknowledged; a destination-wide failure (credentials refused, sink unwritable) stops
    this destination, records what it had acknowledged, and leaves the rest pending with the reason. When
    ``stop`` is set (a SIGTERM), the requests under way are finished, no other request of the chunk starts
    (those changes stay pending), the chunk is recorded, and the rest stays pending for the next run. The
    progress advances by what was acknowledged.

    Fencing: ``fence`` is checked before every attempt to send (the adapter calls it) and confirmed first in every
    transaction that notes or records a chunk. When the run lost its lock, LockLost is raised: nothing more is
    recorded, the adapter is closed (its requests under way end first), and the chunk in flight is noted again
    as ``late`` so that a later run re-sends its users' current values whatever this run sent after the loss.
    """
    fence = fence or Unfenced()
    name = destination.name
    token = fence.destination_tokens().get(name)

    def before_attempt() -> None:
        fence.check()
        if _stop_requested(stop):  # the requests under way finish; no other starts (its change stays pending)
            raise TransientDestinationError(STOPPED, destination=name)

    destination.before_attempt = before_attempt
    progress = progress or NoProgress()
    report = DeliveryReport(name)
    task = f"sending to {name}"
    progress.begin(task)
    chunks, deliver, partial = _paths(engine, run_id, destination, chunk_size)
    ahead = read_ahead(chunks, name)
    in_flight: outbox.Chunk[Any] | None = None  # noted in flight (committed) and not recorded yet
    try:
        # one connection for the writes, with a page cache that holds a chunk between marking and recording it
        with engine.connect() as pooled, delivery_cache(pooled) as conn:
            chunk = next(ahead, None)
            if chunk is not None:
                with conn.begin():
                    fence.confirm(conn, [name])
                    if _stop_requested(stop):
                        return _stopped(conn, run_id, report)
                    outbox.mark_in_flight(conn, chunk, token)
                in_flight = chunk
            while chunk is not None:
                try:
                    unacked = deliver(chunk)
                except DestinationError as exc:
                    with conn.begin():
                        fence.confirm(conn, [name])
                        outbox.record(conn, chunk, partial(chunk, exc.partial))
                        outbox.keep_pending(conn, run_id, name, f"not sent: {exc}")
                    in_flight = None
                    report.error = str(exc)
                    report.credentials_rejected = isinstance(exc, CredentialsRejected)
                    log.error("%s", exc)
                    return report
                following = next(ahead, None)
                with conn.begin():  # one transaction: this chunk recorded, the next one marked in flight
                    fence.confirm(conn, [name])
                    outbox.record(conn, chunk, unacked)
                    report.attempted += chunk.size
                    progress.advance(task, chunk.size - len(unacked))  # what was acknowledged
                    if following is not None:
                        if _stop_requested(stop):
                            in_flight = None
                            return _stopped(conn, run_id, report)
                        outbox.mark_in_flight(conn, following, token)
                in_flight = chunk = following
    except LockLost:
        _fenced_out(engine, destination, in_flight, token)
        raise
    finally:
        ahead.close()
        progress.end(task)
    return report


def _fenced_out(engine: Engine, destination: Destination, chunk: outbox.Chunk[Any] | None, token: int | None) -> None:
    """After LockLost: let the adapter's requests under way end (closing it waits for them), then note the chunk
    in flight again as ``late`` (best effort: the database may be what went away)."""
    destination.close()
    if chunk is None:
        return
    try:
        with engine.begin() as conn:
            outbox.note_late(conn, chunk, token)
    except Exception:
        log.error(
            "run %d lost its lock for %s and could not note its chunk in flight again (users %r to %r): if the "
            "destination applied that chunk after another run re-sent it, it may hold older values for them; "
            "`audience-sync resync --destination %s` sends every current value again",
            chunk.run_id,
            destination.name,
            chunk.first[0],
            chunk.last[0],
            destination.name,
            exc_info=True,
        )


def _stop_requested(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _stopped(conn: Connection, run_id: int, report: DeliveryReport) -> DeliveryReport:
    """Note on the changes left pending that the run was asked to stop (in ``conn``'s transaction)."""
    outbox.keep_pending(conn, run_id, report.destination, STOPPED)
    report.error = STOPPED
    return report


def deliver_one(
    engine: Engine,
    config: Config,
    run_id: int,
    name: str,
    progress: Progress,
    stop: threading.Event | None,
    fence: Fence,
    build: DestinationFactory = build_destination,
) -> DeliveryReport:
    """Deliver run ``run_id``'s pending changes to destination ``name`` through a fresh adapter made by ``build``
    from the destination's config (closed afterwards, whatever happened); log how it went."""
    dest_config = config.destination(name)
    started = time.monotonic()
    with build(dest_config) as adapter:
        report = deliver_pending(
            engine, run_id, adapter, chunk_size=dest_config.chunk_size, progress=progress, stop=stop, fence=fence
        )
    elapsed = time.monotonic() - started
    log.info(
        "run %d: %s took %d changes in %.1fs%s",
        run_id,
        name,
        report.attempted,
        elapsed,
        f"; stopped: {report.error}" if report.error else "",
        extra={
            "run_id": run_id,
            "destination": name,
            "attempted": report.attempted,
            "duration_seconds": round(elapsed, 3),
            "error": report.error,
        },
    )
    return report


def deliver_all(
    engine: Engine,
    config: Config,
    run_id: int,
    dest_names: Sequence[str],
    progress: Progress,
    stop: threading.Event | None,
    fence: Fence,
    build: DestinationFactory = build_destination,
) -> dict[str, DeliveryReport]:
    """Deliver to every destination at once, each on its own thread and through its own adapter from ``build``: a
    slow or failing one holds up no other. When one raises (LockLost), the others finish first: a lost lock fences
    every destination of the run."""
    if len(dest_names) == 1:
        return {dest_names[0]: deliver_one(engine, config, run_id, dest_names[0], progress, stop, fence, build)}
    pool = ThreadPoolExecutor(max_workers=len(dest_names), thread_name_prefix="deliver")
    try:
        futures = {
            name: pool.submit(deliver_one, engine, config, run_id, name, progress, stop, fence, build)
            for name in dest_names
        }
        reports = {name: future.result() for name, future in futures.items()}
    except BaseException as exc:
        # a second Ctrl-C (KeyboardInterrupt) stops at once: the run is closed without waiting for the deliveries
        pool.shutdown(wait=isinstance(exc, Exception), cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return reports
