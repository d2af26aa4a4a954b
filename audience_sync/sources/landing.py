"""Reading a computation's raw rows out of another database in bulk, to land them in the state database.

A query on a source that is not the state database is normally streamed through Python (``rows.py``), row by
row. When its columns have types the pushdown normalises exactly as Python would, the rows can instead be
moved in bulk into a temporary table of the state database (``store/landing.py``) and pushed down from there
(``run/land.py``): no Python per row, the same staged rows.

- **PostgreSQL to PostgreSQL** (:func:`pipe_postgres`): no landed table. The source runs the pushdown's
  normalising SQL around the query, and its ``COPY (...) TO STDOUT`` blocks go unchanged into ``COPY staging
  FROM STDIN`` on the state: one write per row. The rows it cannot stage (no user id, no value, unusable) come
  marked, to be counted, not written; a query that repeats users runs again with its repeats settled by a window.
  (:func:`land_postgres` lands the query's rows as they are, for callers that push down from the landed table.)
- **PostgreSQL to SQLite** (:func:`land_postgres`): the same ``COPY``, as CSV, read by Arrow's CSV reader
  into record batches of the probed types, given column by column to one ``executemany``.
- **DuckDB to either** (:func:`land_duckdb`): the query's Arrow record batches, rendered and landed by
  ``sources/arrow_ingest.py`` (text ``COPY`` on a PostgreSQL state, ``executemany`` on SQLite), for the DuckDB
  types whose Python objects that module renders as streaming would (:data:`DUCKDB_LANDED`).
- **Any other SQLAlchemy source** (``sources/arrow_read.py``): Arrow batches from an ADBC driver, or built from
  the dialect's rows, landed the same way.

Only the columns the computation uses are landed, under their canonical names, and only with types the pushdown
handles; any other type raises :class:`NotLandable`, and the computation is streamed as before.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Computation
from ..store import landing
from ..store.dialect import is_postgresql
from ..store.loading import PushedDown
from . import arrow_ingest, duck, pushdown
from .arrow_ingest import NotLandable, used_columns
from .pushdown import query_text

__all__ = ["PG_LANDED", "NotLandable", "errors", "land_duckdb", "land_postgres", "pipe_postgres", "used_columns"]

#: PostgreSQL type OIDs landed, with the type of the landed column: those ``sources/pushdown.py`` renders as
#: Python would (integers, text and varchar, boolean, uuid)
PG_LANDED = {20: "bigint", 21: "bigint", 23: "bigint", 25: "text", 1043: "text", 16: "boolean", 2950: "uuid"}
#: DuckDB column types landed through Arrow (``sources/arrow_ingest.py``): those whose Arrow form renders as
#: DuckDB's Python objects are encoded, and lists of them. Not UUID (exported to Arrow as text, a ``UUID`` in
#: Python), BLOB, INTERVAL, TIME, JSON, nested types.
DUCKDB_LANDED = re.compile(
    r"(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|BOOLEAN|VARCHAR|FLOAT|DOUBLE"
    r"|DECIMAL\(\d+,\d+\)|DATE|TIMESTAMP|TIMESTAMP_S|TIMESTAMP_MS|TIMESTAMP_NS|TIMESTAMP WITH TIME ZONE)(\[\])?"
)


def errors() -> tuple[type[Exception], ...]:
    """The errors a landing may meet on either side: each means "stream instead", and the streamed path says it
    again in its own words (a query that fails, a file missing, data the state refuses). The drivers are imported
    here, when a landing is tried, not with the module: a run on SQLite alone never needs psycopg."""
    import psycopg
    import pyarrow

    from . import arrow_read

    found: tuple[type[Exception], ...] = (SQLAlchemyError, psycopg.Error, pyarrow.ArrowException)
    return found + (duck.errors() if duck.installed() else ()) + arrow_read.errors()


#: how often a landing looks whether the run was asked to stop, in seconds (its query is then cancelled)
STOP_POLL = 0.1


@contextmanager
def cancelled_on(stop: threading.Event | None, cancel: Callable[[], None]) -> Iterator[None]:
    """While inside, ``cancel`` (the source's own way to interrupt its running query, callable from another thread)
    is called once ``stop`` is set, and again every :data:`STOP_POLL` until the landing is over: a landing that
    waits on its source, or moves rows for a long time, ends as soon as the run is asked to stop, with the driver's
    error for a cancelled query, even when the first cancel found the source idle between two statements."""
    if stop is None:
        yield
        return
    done, lock = threading.Event(), threading.Lock()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(STOP_POLL):
                with lock:  # never once the landing is over: the connection may be running something else
                    if not done.is_set():
                        cancel()
                # a cancel that reached an idle source cancels nothing: the landing's next statement is cancelled
                done.wait(STOP_POLL)

    # not joined on the way out (that could cost a poll per landing): once ``done`` is set it cancels nothing
    threading.Thread(target=watch, name="landing-stop", daemon=True).start()
    try:
        yield
    finally:
        with lock:
            done.set()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pg_utf8(raw: Any) -> None:
    """NotLandable unless the source's text is UTF-8 and reaches the client so (server and client encodings): the
    bytes of its ``COPY`` go unchanged into the state and into Arrow, which read them as UTF-8, and the pushdown's
    normalising SQL (characters outside LATIN1 and the like, a user id's length in bytes) runs as UTF-8 text.
    Streaming decodes any encoding; no round trip is made (the server reports both at connect and on a change)."""
    found = [raw.info.parameter_status(name) for name in ("server_encoding", "client_encoding")]
    if any(value is None or value.upper() != "UTF8" for value in found):
        server, client = (value or "?" for value in found)
        raise NotLandable(f"the source's text is {server} (sent to the client as {client}), not UTF-8")


def _pg_probe(cur: Any, inner: str) -> tuple[list[str], list[int]]:
    cur.execute(f"SELECT * FROM ({inner}) AS src LIMIT 0")
    description = cur.description or []
    return [d.name for d in description], [int(d.type_code) for d in description]


def _pg_type(canonical: str, oid: int, name: str, postgres: bool) -> str:
    sql_type = PG_LANDED.get(oid)
    # SQLite: no boolean (it would keep 1, which is not how a boolean reads), and a uuid only as a user id (its
    # text is the id Python makes of it; as a value, Python has no JSON form for it and says so)
    sqlite_refuses = sql_type == "boolean" or (sql_type == "uuid" and canonical != "user_id")
    if sql_type is None or (not postgres and sqlite_refuses):
        raise NotLandable(f"column {name!r} has PostgreSQL type {oid}, which is not landed")
    return sql_type


class _Blocks(io.RawIOBase):
    """The blocks of a ``COPY ... TO STDOUT`` as a binary file, for Arrow's CSV reader."""

    def __init__(self, blocks: Iterator[Any]) -> None:
        self._blocks, self._pending = blocks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # fill the whole buffer (a COPY block is one row): each call costs Arrow far more than a row does
        view, filled = memoryview(buffer).cast("B"), 0
        while filled < len(view):
            if not self._pending:
                block = next(self._blocks, None)
                if block is None:
                    break
                self._pending = memoryview(block).cast("B")
            size = min(len(view) - filled, len(self._pending))
            view[filled : filled + size] = self._pending[:size]
            self._pending, filled = self._pending[size:], filled + size
        return filled


def _csv_batches(blocks: Iterator[Any], columns: list[tuple[str, str]], batch_bytes: int) -> Iterator[Any]:
    """Arrow record batches of PostgreSQL's CSV ``blocks``: NULL (unquoted, empty) apart from ``""``."""
    import pyarrow
    import pyarrow.csv

    first = next(blocks, None)
    if first is None:  # no rows: Arrow's reader refuses an empty file
        return
    arrow = {"bigint": pyarrow.int64(), "text": pyarrow.string(), "uuid": pyarrow.string()}
    names = [name for name, _ in columns]
    reader = pyarrow.csv.open_csv(
        _Blocks(itertools.chain([first], blocks)),
        read_options=pyarrow.csv.ReadOptions(column_names=names, use_threads=False, block_size=batch_bytes),
        parse_options=pyarrow.csv.ParseOptions(newlines_in_values=True),
        convert_options=pyarrow.csv.ConvertOptions(
            column_types={name: arrow[sql_type] for name, sql_type in columns},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    yield from reader


def land_postgres(
    source: Engine, comp: Computation, conn: Connection, stop: threading.Event | None = None
) -> landing.Landed:
    """Copy ``comp``'s query rows from the PostgreSQL ``source`` into the landed table on ``conn`` (the state,
    inside a transaction); return the rows copied.

    NotLandable when a used column's type is not one of :data:`PG_LANDED` (on SQLite: not a boolean, a uuid only
    as the user id), or when the source's text is not UTF-8 (:func:`_pg_utf8`). Raises the driver's error
    (``psycopg.Error``) when the query fails on the source or its data is refused by the state, Arrow's when it
    cannot read the CSV. Setting ``stop`` cancels the source's query (the driver's ``QueryCanceled``).
    """
    assert comp.sql is not None
    inner = query_text(comp.sql)
    postgres = is_postgresql(conn)
    with source.connect() as source_conn:
        try:
            raw: Any = source_conn.connection.driver_connection
            _pg_utf8(raw)
            with cancelled_on(stop, raw.cancel_safe):
                return _copy_out(raw, inner, comp, conn, postgres)
        except NotLandable:  # found by the probe, the connection idle
            raise
        except BaseException:
            # the driver's own connection, used behind SQLAlchemy's back, may be dead (terminated mid-COPY) or still
            # in a COPY: never back to the pool, whose reset would fail on it (a traceback) or hand it out again
            source_conn.invalidate()
            raise


def _copy_out(raw: Any, inner: str, comp: Computation, conn: Connection, postgres: bool) -> landing.Landed:
    with raw.cursor() as cur:
        names, oids = _pg_probe(cur, inner)
        used = used_columns(comp, names)
        columns = [(canonical, _pg_type(canonical, oids[i], names[i], postgres)) for canonical, i in used]
        landing.create(conn, columns if postgres else [(name, "") for name, _ in columns])
        selected = ", ".join(f"src.{_quote(names[i])}" for _, i in used)
        copy_out = f"COPY (SELECT {selected} FROM ({inner}) AS src) TO STDOUT"
        with cur.copy(copy_out if postgres else f"{copy_out} (FORMAT csv)") as out:
            blocks: Iterator[Any] = iter(out)
            if postgres:
                return landing.Landed(landing.copy_blocks(conn, [c for c, _ in columns], blocks, csv=False), "COPY")
            batches = _csv_batches(blocks, columns, 1 << 22)
            return landing.Landed(arrow_ingest.insert_batches(conn, [c for c, _ in columns], batches), "COPY as CSV")


#: the marks of the rows :func:`pipe_postgres` counts rather than stages (``store/landing.copy_staging``)
NO_USER_ID, UNUSABLE, NO_VALUE, REPEAT = 1, 3, 2, 4


def _mark(run_id: int, repeat: str | None = None) -> str:
    """The first column of a piped row: the run's id for a row to stage, else the negated mark of why not (as the
    pushdown counts them, ``Pushdown.counts``: no user id first, then unusable, then no value)."""
    repeated = "" if repeat is None else f"WHEN {repeat} THEN -{REPEAT} "
    return (
        f"CASE WHEN n.u IS NULL THEN -{NO_USER_ID} WHEN n.b THEN -{UNUSABLE} WHEN n.v IS NULL THEN -{NO_VALUE} "
        f"{repeated}ELSE {int(run_id)} END"
    )


def _piped(plan: pushdown.Pushdown, run_id: int) -> str:
    """The source's rows for ``staging (run_id, computation_key, user_id, email, value)``, each row marked."""
    key = _literal(plan.comp.key)
    return f"SELECT {_mark(run_id)}, {key}, n.u, n.e, n.v FROM ({plan.normalized}) AS n"


def _piped_settled(plan: pushdown.Pushdown, run_id: int) -> str:
    """As :func:`_piped`, plus ``conflict_value``, for a query that repeats users: one row per user staged, the one
    ``store/loading._settle_repeats`` leaves (first value, first non-null email, last value that differs from the
    first, in the query's order), its other rows marked as repeats. A window over the user id (in bytes, as the
    state's key compares it) sees every row of the user, so one statement settles them all."""
    key = _literal(plan.comp.key)
    staged = "CASE WHEN o.u IS NOT NULL AND o.v IS NOT NULL AND NOT o.b THEN o.u END"
    ordered = f"SELECT n.*, row_number() OVER () AS ord FROM ({plan.normalized}) AS n"
    first = (
        f'SELECT o.*, {staged} AS s, first_value(o.v) OVER (PARTITION BY {staged} COLLATE "C" ORDER BY o.ord) AS fv '
        f"FROM ({ordered}) AS o"
    )
    settled = (
        "SELECT f.*, row_number() OVER w AS k, "
        "array_agg(f.e) FILTER (WHERE f.s IS NOT NULL AND f.e IS NOT NULL) OVER wf AS es, "
        "array_agg(f.v) FILTER (WHERE f.s IS NOT NULL AND f.v <> f.fv) OVER wf AS cs "
        f"FROM ({first}) AS f "
        'WINDOW w AS (PARTITION BY f.s COLLATE "C" ORDER BY f.ord), '
        "wf AS (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    )
    return f"SELECT {_mark(run_id, 'n.k > 1')}, {key}, n.u, n.es[1], n.v, n.cs[cardinality(n.cs)] FROM ({settled}) AS n"


def pipe_postgres(
    source: Engine, comp: Computation, conn: Connection, run_id: int, stop: threading.Event | None = None
) -> tuple[PushedDown, str] | None:
    """PostgreSQL source and state: stage ``comp``'s query rows for run ``run_id`` straight into ``staging`` on
    ``conn`` (the state, inside a transaction), normalised by the pushdown's SQL run on the source; return what was
    staged (the figures a pushdown gives) and how it was read, or None (nothing staged) when the pushdown cannot
    render the query's column types as Python would.

    Guarantees the staged rows and figures of landing the rows and pushing them down: the rows the streamed path
    would skip are left out and counted in ``unusable`` (roll back and stream). The query runs once when it repeats
    no user; when it does, the ``COPY`` into ``staging`` fails on the key, is rolled back to a savepoint, and the
    query runs again with its repeats settled on the source (:func:`_piped_settled`). NotLandable, errors and
    ``stop`` as :func:`land_postgres`; a ``stop`` set before the second run raises ``QueryCanceled`` without it.
    """
    import psycopg

    assert comp.sql is not None
    inner = query_text(comp.sql)
    with source.connect() as source_conn:
        try:
            raw: Any = source_conn.connection.driver_connection
            _pg_utf8(raw)
            with cancelled_on(stop, raw.cancel_safe), raw.cursor() as cur:
                names, oids = _pg_probe(cur, inner)
                for canonical, i in used_columns(comp, names):
                    _pg_type(canonical, oids[i], names[i], True)
                plan = pushdown.plan_typed(comp, inner, names, oids)
                if plan is None:
                    return None
                columns, via = ["run_id", "computation_key", "user_id", "email", "value"], "COPY"
                savepoint = conn.begin_nested()
                try:
                    with cur.copy(f"COPY ({_piped(plan, run_id)}) TO STDOUT") as out:
                        staged, marked = landing.copy_staging(conn, columns, out)
                    savepoint.commit()
                except psycopg.errors.UniqueViolation:  # a repeated user (the COPY out is cancelled, if still on)
                    savepoint.rollback()
                    raw.rollback()
                    if stop is not None and stop.is_set():  # a stop in between: no second pass, as if cancelled
                        raise psycopg.errors.QueryCanceled("canceling statement: the run was asked to stop") from None
                    columns, via = [*columns, "conflict_value"], "COPY, repeated users settled on the source"
                    with cur.copy(f"COPY ({_piped_settled(plan, run_id)}) TO STDOUT") as out:
                        staged, marked = landing.copy_staging(conn, columns, out)
        except NotLandable:  # found by the probe, the connection idle
            raise
        except BaseException:
            source_conn.invalidate()  # as land_postgres: the driver's connection, maybe dead or still in a COPY
            raise
    rows = staged + sum(marked.values())
    return PushedDown(rows, marked[NO_USER_ID], marked[NO_VALUE], staged, marked[UNUSABLE]), via


def land_duckdb(
    source: duck.DuckFile, comp: Computation, conn: Connection, batch_rows: int, stop: threading.Event | None = None
) -> landing.Landed:
    """Read ``comp``'s query rows from the DuckDB file ``source`` (on a cursor of the run's connection to it) as
    Arrow batches of ``batch_rows`` and land them on ``conn`` (the state, inside a transaction), their values as
    canonical JSON; return what was landed.

    NotLandable when a used column's type is not one of :data:`DUCKDB_LANDED`, or a value cannot be rendered as
    streaming would (``sources/arrow_ingest.py``). Raises ``duckdb.Error`` when the query fails, the driver's
    error when the state refuses the data. Setting ``stop`` interrupts the query (``duckdb.InterruptException``).
    """
    assert comp.sql is not None
    inner = query_text(comp.sql)
    with source.cursor() as cur, cancelled_on(stop, cur.interrupt):
        relation = cur.sql(inner)
        names, types = list(relation.columns), [str(t) for t in relation.types]
        used = used_columns(comp, names)
        for _, i in used:
            if not DUCKDB_LANDED.fullmatch(types[i]):
                raise NotLandable(f"column {names[i]!r} has DuckDB type {types[i]}, which is not landed")
        selected = ", ".join(f"src.{_quote(names[i])}" for _, i in used)
        reader = duck.arrow_reader(cur, f"SELECT {selected} FROM ({inner}) AS src", batch_rows)
        try:
            return arrow_ingest.land(conn, comp, [names[i] for _, i in used], reader, "DuckDB's Arrow")
        finally:  # not left to an error's traceback, which would keep the file open after the run closes it
            reader.close()
