"""Landing: a source's raw rows moved in bulk into a temporary table of the state database.

When the source is another database, a computation's rows can still be staged by the pushdown's normalising
SQL (``sources/pushdown.py``): they are first *landed*, unchanged, in :data:`TABLE` (columns ``user_id``,
``email`` and ``value``, those the query has), then pushed down from there. Nothing here looks at a row: on
PostgreSQL the blocks a ``COPY ... TO STDOUT`` of the source (or a CSV writer) produced go as they are into
``COPY ... FROM STDIN``; on SQLite whole columns go to one ``executemany``.

The table keeps the rows in the order they were written: a fresh temporary table is read back in insertion
order (SQLite by rowid; PostgreSQL scans a temporary table alone, never in parallel nor synchronised with
another scan), which is the order the pushdown settles repeated users by, as streaming does.

From a PostgreSQL source to a PostgreSQL state no table is landed: the source runs the pushdown's normalising
SQL itself and its ``COPY ... TO STDOUT`` goes straight into ``staging`` (:func:`copy_staging`), one write per row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from .dialect import is_postgresql, temporary_schema

#: the temporary table rows are landed in (one per connection, dropped when the load ends)
TABLE = "as_landed"

#: the columns a landed table may have, in this order
COLUMNS = ("user_id", "email", "value")


@dataclass(frozen=True)
class Landed:
    """What a landing wrote into :data:`TABLE`: its rows, how they were read (for the log), and whether its
    ``value`` column holds each value's canonical JSON text already (rendered from Arrow) rather than the
    source's own value."""

    rows: int
    via: str
    value_is_json: bool = False


@contextmanager
def unprepared(conn: Connection) -> Iterator[None]:
    """No server-side prepared statements on ``conn`` (PostgreSQL) while it lands.

    psycopg prepares a statement once its text has run five times on a connection. Each landing creates
    :data:`TABLE` anew with one computation's columns and types, so a statement of the same text (the pushdown's
    probe, ``SELECT * FROM as_landed``) may read a table of another shape than the one it was prepared for:
    PostgreSQL then refuses it ("cached plan must not change result type") and the computation, landed for
    nothing, is streamed. Without preparation each statement is planned for the table it reads.
    """
    raw: Any = conn.connection.driver_connection if is_postgresql(conn) else None
    threshold = getattr(raw, "prepare_threshold", None)
    if threshold is None:
        yield
        return
    raw.prepare_threshold = None
    try:
        yield
    finally:
        raw.prepare_threshold = threshold


def create(conn: Connection, columns: Sequence[tuple[str, str]]) -> None:
    """Create :data:`TABLE` with ``columns`` (name among :data:`COLUMNS`, SQL type or ``""`` for none) on ``conn``.

    Call inside the transaction that loads it, and :func:`drop` the table once it is over, whatever happened: a
    rollback does not always drop it (SQLite's driver runs DDL outside the transaction it opens for writes).
    """
    for name, _type in columns:
        if name not in COLUMNS:
            raise ValueError(f"not a landed column: {name!r}")
    body = ", ".join(f"{name} {sql_type}".rstrip() for name, sql_type in columns)
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {TABLE} ({body})")


def copy_blocks(conn: Connection, names: Sequence[str], blocks: Iterable[bytes | memoryview], csv: bool) -> int:
    """PostgreSQL: write ``blocks`` (COPY text format, or CSV without a header) into :data:`TABLE`'s ``names``.

    Returns the rows written. Raises the driver's error (``psycopg.Error``) when the state database refuses
    the data (a NUL byte in a text, a value of the wrong type): the caller's transaction is then aborted.
    """
    raw: Any = conn.connection.driver_connection
    options = " (FORMAT csv)" if csv else ""
    with raw.cursor() as cur:
        with cur.copy(f"COPY {TABLE} ({', '.join(names)}) FROM STDIN{options}") as copy:
            for block in blocks:
                copy.write(block)
        return int(cur.rowcount)


#: the first byte of a row :func:`copy_staging` counts rather than writes: its first column is a negative number
MARK = ord("-")
#: the bytes :func:`copy_staging` gives the driver at once
WRITE_BYTES = 1 << 16


def copy_staging(
    conn: Connection, names: Sequence[str], blocks: Iterable[bytes | memoryview]
) -> tuple[int, Counter[int]]:
    """PostgreSQL: write ``blocks`` (COPY text format, one row per block, as ``COPY ... TO STDOUT`` sends them)
    straight into ``staging``'s columns ``names``, the first of which is ``run_id``; a *marked* row, whose first
    column is a negative number instead (``-1`` ... ``-9``), is not written but counted by that number.

    Returns the rows written and the marked rows by number. Raises the driver's error (``psycopg.Error``) when the
    state database refuses the data, ``UniqueViolation`` when two rows have one user: the caller's transaction is
    then aborted (roll back to a savepoint taken before).
    """
    raw: Any = conn.connection.driver_connection
    marked: Counter[int] = Counter()
    with raw.cursor() as cur:
        with cur.copy(f"COPY staging ({', '.join(names)}) FROM STDIN") as copy:
            # rows gathered into writes of about WRITE_BYTES: a write costs the driver far more than a row
            pending = bytearray()
            for block in blocks:
                if block[0] == MARK:  # a row to count, not to stage: one byte looked at, no row parsed
                    marked[block[1] - ord("0")] += 1
                    continue
                pending += block
                if len(pending) >= WRITE_BYTES:
                    copy.write(pending)
                    pending = bytearray()
            if pending:
                copy.write(pending)
        return int(cur.rowcount), marked


def insert_columns(conn: Connection, names: Sequence[str], batches: Iterable[Sequence[Sequence[Any]]]) -> None:
    """SQLite: insert each batch, given as one sequence of values per column of ``names``, into :data:`TABLE`."""
    sql = f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    for columns in batches:
        rows = list(zip(*columns, strict=True))
        if rows:
            conn.exec_driver_sql(sql, rows)


def drop(conn: Connection) -> None:
    """Drop :data:`TABLE` if ``conn`` has it, never a table of the database's own schemas (a temporary table lasts
    as long as its connection, which goes back to the pool)."""
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temporary_schema(conn)}.{TABLE}")
