"""The outbox: reading a run's pending changes in chunks, and recording what destinations did with them.

Recording is where the delivery contract lives: the snapshot row of a change advances in the same
transaction that marks the change ``sent``, and only for changes the destination acknowledged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, bindparam, false, func, select, true, tuple_, update

from ..changes import NOT_ATTEMPTED, SENT, Change, Outcome
from ..destinations.messages import timestamp
from ..destinations.rendering import LineFormat, line_columns
from ..values import decode
from .dialect import upsert
from .schema import DiffRow, SnapshotRow, status_is, table_of, utcnow

diffs = table_of(DiffRow)
snapshot = table_of(SnapshotRow)

_FIELDS = (
    diffs.c.id,
    diffs.c.run_id,
    diffs.c.destination,
    diffs.c.computation_key,
    diffs.c.computation_class,
    diffs.c.user_id,
    diffs.c.email,
    diffs.c.change,
    diffs.c.old_value,
    diffs.c.new_value,
    diffs.c.message_id,
)
_ID_BATCH = 5_000  # ids per IN (...) list: well under every backend's parameter limit


def _change(row: Any) -> Change:
    return Change(
        diff_id=row.id,
        run_id=row.run_id,
        destination=row.destination,
        computation_key=row.computation_key,
        computation_class=row.computation_class,
        user_id=row.user_id,
        email=row.email,
        change=row.change,
        old_value=decode(row.old_value),
        new_value=decode(row.new_value),
        message_id=row.message_id,
    )


def pending_chunks(engine: Engine, run_id: int, destination: str, chunk_size: int) -> Iterator[list[Change]]:
    """Yield the run's pending changes for ``destination`` in chunks ordered by user.

    Guarantees: all of one user's changes are in the same chunk (so a destination can send them in one
    call); each change is yielded once even if it stays pending; memory is bounded by the chunk size
    (plus one user's changes).
    """
    after: tuple[str, int] = ("", -1)
    base = select(*_FIELDS).where(
        diffs.c.run_id == run_id, diffs.c.destination == destination, diffs.c.status == "pending"
    )
    while True:
        with engine.connect() as conn:
            rows = list(
                conn.execute(
                    base.where(diffs.c.user_id >= after[0], tuple_(diffs.c.user_id, diffs.c.id) > tuple_(*after))
                    .order_by(diffs.c.user_id, diffs.c.id)
                    .limit(chunk_size)
                ).all()
            )
            if not rows:
                return
            last = rows[-1]
            if len(rows) == chunk_size:  # complete the last user's changes
                rows.extend(
                    conn.execute(base.where(diffs.c.user_id == last.user_id, diffs.c.id > last.id).order_by(diffs.c.id))
                )
        after = (rows[-1].user_id, rows[-1].id)
        yield [_change(r) for r in rows]


@dataclass(frozen=True)
class Bounds:
    """A chunk's key range: run, destination, and (user_id, id) of its first and last change."""

    run_id: int
    destination: str
    first: tuple[str, int]
    last: tuple[str, int]


def _in_range(b: Bounds) -> list[ColumnElement[bool]]:
    return [
        diffs.c.run_id == b.run_id,
        diffs.c.destination == b.destination,
        diffs.c.user_id >= b.first[0],
        diffs.c.user_id <= b.last[0],
        tuple_(diffs.c.user_id, diffs.c.id) >= tuple_(*b.first),
        tuple_(diffs.c.user_id, diffs.c.id) <= tuple_(*b.last),
    ]


def _in_chunk(chunk: Sequence[Change]) -> list[ColumnElement[bool]]:
    """The rows of a chunk by its key range: (run, destination) and (user_id, id) from its first to its last."""
    first, last = chunk[0], chunk[-1]
    return _in_range(
        Bounds(first.run_id, first.destination, (first.user_id, first.diff_id), (last.user_id, last.diff_id))
    )


@dataclass
class LineChunk:
    """A chunk of pending changes as JSON lines rendered by the database (see ``destinations/rendering.py``)."""

    bounds: Bounds
    changes: int
    lines: list[str]


def pending_line_chunks(
    engine: Engine, run_id: int, destination: str, chunk_size: int, fmt: LineFormat
) -> Iterator[LineChunk]:
    """Like :func:`pending_chunks`, but each change comes as its rendered lines (identify, then track).

    Same guarantees: one user's changes never split, each change yielded once, memory bounded by the chunk.
    Lines carry the time the chunk was read as their ``timestamp``.
    """
    after: tuple[str, int] = ("", -1)
    while True:
        columns = line_columns(engine.dialect.name, diffs, fmt, timestamp())
        base = select(diffs.c.id, diffs.c.user_id, *columns).where(
            diffs.c.run_id == run_id, diffs.c.destination == destination, diffs.c.status == "pending"
        )
        with engine.connect() as conn:
            rows = list(
                conn.execute(
                    base.where(diffs.c.user_id >= after[0], tuple_(diffs.c.user_id, diffs.c.id) > tuple_(*after))
                    .order_by(diffs.c.user_id, diffs.c.id)
                    .limit(chunk_size)
                ).all()
            )
            if not rows:
                return
            if len(rows) == chunk_size:  # complete the last user's changes
                last = rows[-1]
                rows.extend(
                    conn.execute(base.where(diffs.c.user_id == last.user_id, diffs.c.id > last.id).order_by(diffs.c.id))
                )
        first, last = rows[0], rows[-1]
        after = (last.user_id, last.id)
        lines = [line for row in rows for line in row[2:]]
        yield LineChunk(Bounds(run_id, destination, (first.user_id, first.id), after), len(rows), lines)


def mark_range_sending(conn: Connection, bounds: Bounds) -> None:
    """Note durably that the pending changes in ``bounds`` are being handed to their destination."""
    conn.execute(update(diffs).where(*_in_range(bounds), diffs.c.status == "pending").values(status="sending"))


def record_range(conn: Connection, bounds: Bounds, error: str | None = None) -> None:
    """Record the changes in ``bounds`` as acknowledged (snapshot advanced), or, given ``error``, as still pending.

    Call inside one transaction, as :func:`record`.
    """
    in_range = _in_range(bounds)
    if error is not None:
        conn.execute(update(diffs).where(*in_range, diffs.c.status == "sending").values(status="pending", error=error))
        return
    now = utcnow()
    conn.execute(
        update(diffs)
        .where(*in_range, diffs.c.status == "sending")
        .values(status="sent", error=None, sent_at=now, attempts=diffs.c.attempts + 1)
    )
    _advance_snapshot(conn, [*in_range, diffs.c.status == "sent"], now)


def record(conn: Connection, chunk: Sequence[Change], outcomes: Mapping[int, Outcome]) -> None:
    """Store the outcome of each change of ``chunk`` and advance the snapshot for those that were sent.

    ``chunk`` must be one chunk as :func:`pending_chunks` yielded it: then its rows are exactly the pending rows
    of its key range, so the range is marked sent and copied to the snapshot in a few statements whatever the
    chunk's size, after the changes that were not sent got their own outcome back. A change without an outcome
    stays pending (``not attempted``). Call inside one transaction: the snapshot and the diff rows can then never
    disagree, and nothing outside it ever sees a change marked sent that was not.
    """
    if not chunk:
        return
    now = utcnow()
    in_chunk = _in_chunk(chunk)
    conn.execute(
        update(diffs)
        .where(*in_chunk, diffs.c.status == "sending")
        .values(status="sent", error=None, sent_at=now, attempts=diffs.c.attempts + 1)
    )
    not_sent: dict[Outcome, list[int]] = defaultdict(list)
    for ch in chunk:
        outcome = outcomes.get(ch.diff_id, NOT_ATTEMPTED)
        if outcome != SENT:
            not_sent[outcome].append(ch.diff_id)
    for outcome, ids in not_sent.items():
        for start in range(0, len(ids), _ID_BATCH):
            conn.execute(
                update(diffs)
                .where(diffs.c.id.in_(ids[start : start + _ID_BATCH]))
                .values(status=outcome.status, error=outcome.error, sent_at=None)
            )
    if sum(map(len, not_sent.values())) < len(chunk):
        _advance_snapshot(conn, [*in_chunk, diffs.c.status == "sent"], now)


def mark_sending(conn: Connection, chunk: Sequence[Change]) -> None:
    """Note durably that ``chunk`` is being handed to its destination (commit before sending)."""
    if chunk:
        conn.execute(update(diffs).where(*_in_chunk(chunk), diffs.c.status == "pending").values(status="sending"))


def recover_in_flight(conn: Connection, run_id: int, destinations: Sequence[str]) -> int:
    """Put the changes that dead runs left in flight (``sending``) in doubt; return how many there were.

    The destination may or may not have applied them, so their snapshot rows are marked ``in_doubt`` (created
    if missing, keeping the email the change went to) and the next diff sends the current truth for them,
    exits included. Their ``run_id`` becomes the dead run's, so the re-send gets a message id of its own: a
    destination that deduplicates must not drop it as the repeat of an older message with the same value.
    The old rows become ``superseded``. Call while holding those destinations' locks.
    """
    in_flight = [status_is("sending"), diffs.c.destination.in_(list(destinations)), diffs.c.run_id < run_id]
    stmt = upsert(conn, snapshot)
    source = select(
        diffs.c.destination,
        diffs.c.computation_key,
        diffs.c.user_id,
        diffs.c.email,
        diffs.c.run_id,
        bindparam("now", utcnow(), type_=snapshot.c.updated_at.type),
        true(),
    ).where(*in_flight)
    stmt = stmt.from_select(
        ["destination", "computation_key", "user_id", "email", "run_id", "updated_at", "in_doubt"], source
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[snapshot.c.destination, snapshot.c.computation_key, snapshot.c.user_id],
        set_={
            "in_doubt": true(),
            "run_id": stmt.excluded.run_id,
            "email": func.coalesce(snapshot.c.email, stmt.excluded.email),
        },
    )
    conn.execute(stmt)
    result = conn.execute(
        update(diffs)
        .where(*in_flight)
        .values(
            status="superseded", error=f"in flight when its run stopped; run {run_id} sends the current value again"
        )
    )
    return result.rowcount


def _advance_snapshot(conn: Connection, sent: Sequence[ColumnElement[bool]], now: Any) -> None:
    """Copy the sent rows selected by ``sent`` into the snapshot: one INSERT ... SELECT ... ON CONFLICT."""
    stmt = upsert(conn, snapshot)
    source = select(
        diffs.c.destination,
        diffs.c.computation_key,
        diffs.c.user_id,
        diffs.c.new_value,
        diffs.c.email,
        diffs.c.run_id,
        bindparam("now", now, type_=snapshot.c.updated_at.type),
    ).where(*sent)
    stmt = stmt.from_select(
        ["destination", "computation_key", "user_id", "value", "email", "run_id", "updated_at"], source
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[snapshot.c.destination, snapshot.c.computation_key, snapshot.c.user_id],
        set_={
            "value": stmt.excluded.value,
            "email": stmt.excluded.email,
            "run_id": stmt.excluded.run_id,
            "updated_at": stmt.excluded.updated_at,
            "in_doubt": false(),
            "missing_since": None,
        },
    )
    conn.execute(stmt)


def keep_pending(conn: Connection, run_id: int, destination: str, reason: str) -> int:
    """Give every still-pending change of the run for ``destination`` an error saying why it was not sent."""
    result = conn.execute(
        update(diffs)
        .where(diffs.c.run_id == run_id, diffs.c.destination == destination, diffs.c.status == "pending")
        .values(error=reason)
    )
    return result.rowcount
