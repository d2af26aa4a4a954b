"""The outbox: reading a run's pending changes in chunks, and recording what destinations did with them.

Recording is where the delivery contract lives: the snapshot row of a change advances in the same
transaction that marks the change ``sent``, and only for changes the destination acknowledged. The chunk being
handed over is noted as one ``delivery_in_flight`` row (its key range) until its outcomes are recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)

from ..model import NOT_ATTEMPTED, SENT, Change, ChangeKind, DiffStatus, Encoded, MessageOptions, Outcome, timestamp
from ..redact import scrub
from ..values import decode
from . import ledger
from .dialect import upsert
from .engine import text_is_utf8
from .messages import TIMESTAMP, message_columns
from .schema import diffs, in_flight, snapshot, utcnow
from .snapshot import upsert_snapshot

T = TypeVar("T")


#: what a Change needs besides ``id`` and ``user_id``, which every chunk query selects first
_FIELDS = (
    diffs.c.run_id,
    diffs.c.destination,
    diffs.c.computation_key,
    diffs.c.computation_class,
    diffs.c.email,
    diffs.c.change,
    diffs.c.old_value,
    diffs.c.new_value,
    diffs.c.message_id,
)
_ID_BATCH = 5_000  # ids per IN (...) list: well under every backend's parameter limit


def _change(row: Sequence[Any]) -> Change:
    diff_id, user_id, run_id, destination, key, computation_class, email, change, old, new, message_id = row
    return Change(
        diff_id=diff_id,
        run_id=run_id,
        destination=destination,
        computation_key=key,
        computation_class=computation_class,
        user_id=user_id,
        email=email,
        change=ChangeKind(change),
        old_value=decode(old),
        new_value=decode(new),
        message_id=message_id,
    )


def _tuples(conn: Connection, statement: Select[Any], params: Mapping[str, Any]) -> list[Any]:
    """All rows of ``statement`` as the driver's plain tuples, fetched from the DBAPI cursor: a chunk of
    10,000 rows then costs no SQLAlchemy ``Row`` per row (about 40 % of reading a chunk of messages). Only for
    columns whose values need no result processing (text, integers, bytes)."""
    result = conn.execute(statement, params)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


@dataclass(frozen=True, slots=True)
class Chunk(Generic[T]):
    """One chunk of a run's pending changes for a destination, as :func:`pending_chunks` or
    :func:`pending_messages` read it: its key range ``first``..``last`` in (user_id, id) order, the number of
    changes in it, and ``items``, what the destination adapter takes (changes, or encoded messages)."""

    run_id: int
    destination: str
    first: tuple[str, int]
    last: tuple[str, int]
    size: int
    items: T
    #: the ids of its changes, in (user_id, id) order
    ids: Sequence[int]


def _keyset_chunks(
    engine: Engine,
    run_id: int,
    destination: str,
    chunk_size: int,
    columns: Sequence[ColumnElement[Any]],
    params: Callable[[], dict[str, Any]] = dict,
) -> Iterator[tuple[tuple[str, int], list[Any]]]:
    """The run's pending rows for ``destination`` as ``(id, user_id, *columns)``, in (user_id, id) order, a chunk
    at a time with the last user's rows completed; each chunk with its first key. ``params`` gives the bind
    parameters of each chunk's query (called once per chunk)."""
    after: tuple[str, int] = ("", -1)
    base = select(diffs.c.id, diffs.c.user_id, *columns).where(
        diffs.c.run_id == run_id, diffs.c.destination == destination, diffs.c.status == "pending"
    )
    while True:
        values = params()
        with engine.connect() as conn:
            rows = _tuples(
                conn,
                base.where(diffs.c.user_id >= after[0], tuple_(diffs.c.user_id, diffs.c.id) > tuple_(*after))
                .order_by(diffs.c.user_id, diffs.c.id)
                .limit(chunk_size),
                values,
            )
            if not rows:
                return
            last = rows[-1]
            if len(rows) == chunk_size:  # complete the last user's changes
                rows += _tuples(
                    conn, base.where(diffs.c.user_id == last[1], diffs.c.id > last[0]).order_by(diffs.c.id), values
                )
        after = (rows[-1][1], rows[-1][0])
        yield (rows[0][1], rows[0][0]), rows


def pending_chunks(engine: Engine, run_id: int, destination: str, chunk_size: int) -> Iterator[Chunk[list[Change]]]:
    """Yield the run's pending changes for ``destination`` in chunks ordered by user.

    Guarantees: all of one user's changes are in the same chunk (so a destination can send them in one
    call); each change is yielded once even if it stays pending; memory is bounded by the chunk size
    (plus one user's changes).
    """
    for first, rows in _keyset_chunks(engine, run_id, destination, chunk_size, _FIELDS):
        changes = [_change(r) for r in rows]
        last = (changes[-1].user_id, changes[-1].diff_id)
        yield Chunk(run_id, destination, first, last, len(changes), changes, [c.diff_id for c in changes])


def pending_messages(
    engine: Engine, run_id: int, destination: str, chunk_size: int, send: tuple[str, ...], options: MessageOptions
) -> Iterator[Chunk[list[Encoded]]]:
    """Yield the run's pending changes for ``destination`` as the Engage-shaped messages ``send`` asks for, built
    by the database (:mod:`.messages`): per chunk, ``(diff_id, message bytes)`` in (user_id, id) order, a
    change's identify before its track event. Same chunking guarantees as :func:`pending_chunks`; every message
    of a chunk carries the same ``timestamp``, taken when the chunk is read.
    """
    with engine.connect() as conn:
        utf8 = text_is_utf8(conn)
    columns = message_columns(engine.dialect.name, send, options, utf8)
    for first, rows in _keyset_chunks(
        engine, run_id, destination, chunk_size, columns, lambda: {TIMESTAMP: timestamp()}
    ):
        if len(columns) == 1:
            items: list[Encoded] = [(r[0], r[2]) for r in rows]
        else:
            items = [(r[0], m) for r in rows for m in r[2:]]
        yield Chunk(run_id, destination, first, (rows[-1][1], rows[-1][0]), len(rows), items, [r[0] for r in rows])


def unacknowledged(changes: Sequence[Change], outcomes: Mapping[int, Outcome]) -> dict[int, Outcome]:
    """The outcome of each change of ``changes`` that was not acknowledged; no outcome means not attempted."""
    out = {}
    for ch in changes:
        outcome = outcomes.get(ch.diff_id, NOT_ATTEMPTED)
        if outcome != SENT:
            out[ch.diff_id] = outcome
    return out


def _in_range(
    run_id: int, destination: str, first: tuple[str, int], last: tuple[str, int]
) -> list[ColumnElement[bool]]:
    """The rows of a run for a destination whose (user_id, id) lies from ``first`` to ``last``."""
    (first_user, first_id), (last_user, last_id) = first, last
    return [
        diffs.c.run_id == run_id,
        diffs.c.destination == destination,
        diffs.c.user_id >= first_user,
        diffs.c.user_id <= last_user,
        tuple_(diffs.c.user_id, diffs.c.id) >= tuple_(first_user, first_id),
        tuple_(diffs.c.user_id, diffs.c.id) <= tuple_(last_user, last_id),
    ]


def record(conn: Connection, chunk: Chunk[Any], unacked: Mapping[int, Outcome]) -> None:
    """Store what became of each change of ``chunk``: those in ``unacked`` get their outcome, every other one was
    acknowledged: it is marked ``sent`` and its snapshot row advances. The chunk is no longer in flight.

    ``chunk`` must be one chunk as :func:`pending_chunks` or :func:`pending_messages` yielded it, noted with
    :func:`mark_in_flight`: its rows are then exactly the pending rows of its key range, so the range is marked
    sent and copied to the snapshot in a few statements whatever the chunk's size. Call inside one transaction:
    the snapshot and the diff rows can then never disagree, and nothing outside it ever sees a change marked
    sent that was not.
    """
    if not chunk.size:
        return
    now = utcnow()
    by_outcome: dict[Outcome, list[int]] = defaultdict(list)
    for diff_id, outcome in unacked.items():
        if outcome != SENT:
            by_outcome[outcome].append(diff_id)
    in_chunk = _in_range(chunk.run_id, chunk.destination, chunk.first, chunk.last)
    pending = diffs.c.status == "pending"
    for outcome, ids in by_outcome.items():
        for batch in _batches(ids):
            conn.execute(
                update(diffs)
                .where(diffs.c.id.in_(batch), pending)
                .values(status=outcome.status, error=scrub(outcome.error), sent_at=None, attempts=diffs.c.attempts + 1)
            )
    sent = {"status": "sent", "error": None, "sent_at": now, "attempts": diffs.c.attempts + 1}
    if any(outcome.status == "pending" for outcome in by_outcome):  # still pending: mark the others by id
        left = set(unacked)
        for batch in _batches([i for i in chunk.ids if i not in left]):
            conn.execute(update(diffs).where(diffs.c.id.in_(batch), pending).values(**sent))
    elif sum(map(len, by_outcome.values())) < chunk.size:
        conn.execute(update(diffs).where(*in_chunk, pending).values(**sent))
    _advance_snapshot(conn, [*in_chunk, diffs.c.status == "sent"], now)
    conn.execute(
        delete(in_flight).where(in_flight.c.run_id == chunk.run_id, in_flight.c.destination == chunk.destination)
    )


def _batches(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    """``ids`` in lists short enough for one ``IN (...)`` on every backend."""
    for start in range(0, len(ids), _ID_BATCH):
        yield ids[start : start + _ID_BATCH]


def mark_in_flight(conn: Connection, chunk: Chunk[Any], token: int | None = None) -> None:
    """Note durably that ``chunk`` is being handed to its destination (commit before sending): one row naming its
    key range and the fencing ``token`` of the lock it goes out under, until :func:`record` records its outcomes.
    At most one chunk per run and destination."""
    if chunk.size:
        conn.execute(insert(in_flight).values(**_range_values(chunk), started_at=utcnow(), token=token))


def _range_values(chunk: Chunk[Any]) -> dict[str, Any]:
    (first_user, first_id), (last_user, last_id) = chunk.first, chunk.last
    return {
        "run_id": chunk.run_id,
        "destination": chunk.destination,
        "first_user_id": first_user,
        "first_diff_id": first_id,
        "last_user_id": last_user,
        "last_diff_id": last_id,
    }


def note_late(conn: Connection, chunk: Chunk[Any], token: int | None) -> None:
    """Note ``chunk`` in flight again (``late``) after its run found it had lost its lock, once its requests ended.

    The run that took the lock over may already have recovered the chunk and re-sent its users' values, and the
    fenced run's requests may have reached the destination after that re-send: the next run to recover this note
    sends those users' current values once more, under message ids of its own. Safe without the lock: it can only
    make a later run re-send current values. Nothing is written if the chunk's first note is still there (nobody
    has recovered it yet, so nobody has re-sent it).
    """
    if chunk.size:
        stmt = upsert(conn, in_flight).values(**_range_values(chunk), started_at=utcnow(), token=token, late=True)
        conn.execute(stmt.on_conflict_do_nothing(index_elements=[in_flight.c.run_id, in_flight.c.destination]))


def recover_in_flight(
    conn: Connection, run_id: int, destinations: Sequence[str], tokens: Mapping[str, int] | None = None
) -> int:
    """Put the changes that stopped runs left in flight in doubt; return how many there were.

    The destination may or may not have applied them, so their snapshot rows are marked ``in_doubt`` (created
    if missing, keeping the email the change went to) and the next diff sends the current truth for them,
    exits included. Their ``run_id`` becomes the stopped run's, so the re-send gets a message id of its own: a
    destination that deduplicates must not drop it as the repeat of an older message with the same value. A
    ``late`` note (its run lost its lock and may have sent after an earlier recovery re-sent it) takes this run's
    id instead, which no earlier re-send used. The old rows become ``superseded``, and the notes are removed.

    Call while holding those destinations' locks, in the transaction that confirmed them. With ``tokens`` (each
    destination's fencing token of that lock), only notes taken under an older token are recovered: never a chunk
    of a run that holds the lock now, nor one of this acquisition. Without, notes of runs older than ``run_id``.
    """
    if tokens is None:
        dead = [in_flight.c.destination.in_(list(destinations)), in_flight.c.run_id < run_id]
    else:
        dead = [
            in_flight.c.run_id != run_id,
            or_(
                *(
                    and_(in_flight.c.destination == d, or_(in_flight.c.token.is_(None), in_flight.c.token < tokens[d]))
                    for d in destinations
                )
            ),
        ]
    total = 0
    for dead_run, destination, first_user, first_id, last_user, last_id, late in conn.execute(
        select(
            in_flight.c.run_id,
            in_flight.c.destination,
            in_flight.c.first_user_id,
            in_flight.c.first_diff_id,
            in_flight.c.last_user_id,
            in_flight.c.last_diff_id,
            in_flight.c.late,
        ).where(*dead)
    ).all():
        rows = _in_range(dead_run, destination, (first_user, first_id), (last_user, last_id))
        if late:  # a recovery has superseded them already; none of them was recorded after the loss
            total += _put_in_doubt(conn, run_id, [*rows, diffs.c.status.in_(("pending", "superseded"))], base=run_id)
        else:
            total += _put_in_doubt(conn, run_id, [*rows, diffs.c.status == "pending"])
    conn.execute(delete(in_flight).where(*dead))
    return total


def _put_in_doubt(
    conn: Connection, run_id: int, rows: Sequence[ColumnElement[bool]], *, base: int | None = None
) -> int:
    """Mark the snapshot rows of the changes selected by ``rows`` in doubt and the changes superseded. The snapshot
    rows' ``run_id`` (the base of the re-send's message id) becomes ``base``, by default the changes' run."""
    upsert_snapshot(
        conn,
        {
            "email": diffs.c.email,
            "run_id": diffs.c.run_id if base is None else literal(base, BigInteger),
            "updated_at": bindparam("now", utcnow(), type_=snapshot.c.updated_at.type),
            "in_doubt": true(),
        },
        rows,
        lambda excluded: {
            "in_doubt": true(),
            "run_id": excluded.run_id,
            "email": func.coalesce(snapshot.c.email, excluded.email),
        },
    )
    result = conn.execute(
        update(diffs)
        .where(*rows)
        .values(
            status=DiffStatus.SUPERSEDED,
            error=f"in flight when its run stopped; run {run_id} sends the current value again",
        )
    )
    return result.rowcount


def _advance_snapshot(conn: Connection, sent: Sequence[ColumnElement[bool]], now: Any) -> None:
    """Copy the sent rows selected by ``sent`` into the snapshot: one INSERT ... SELECT ... ON CONFLICT."""
    ledger.record_sent(conn, sent, now)  # the same rows, in the same transaction
    upsert_snapshot(
        conn,
        {
            "value": diffs.c.new_value,
            "email": diffs.c.email,
            "run_id": diffs.c.run_id,
            "updated_at": bindparam("now", now, type_=snapshot.c.updated_at.type),
        },
        sent,
        lambda excluded: {
            "value": excluded.value,
            "email": excluded.email,
            "run_id": excluded.run_id,
            "updated_at": excluded.updated_at,
            "in_doubt": false(),
            "missing_since": None,
        },
    )


def keep_pending(conn: Connection, run_id: int, destination: str, reason: str) -> int:
    """Give every still-pending change of the run for ``destination`` an error saying why it was not sent."""
    result = conn.execute(
        update(diffs)
        .where(diffs.c.run_id == run_id, diffs.c.destination == destination, diffs.c.status == "pending")
        .values(error=scrub(reason))
    )
    return result.rowcount
