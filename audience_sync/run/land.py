"""The landing path of the stage step: a query on another database, staged by the pushdown's own SQL.

When the source is neither the state database nor a SQLite file attached to it, a SQL computation is
normally streamed through Python. Where a bulk reader exists (``sources/landing.py``), its raw rows are
instead *landed* in a temporary table of the state database, in bulk, and pushed down from that table with
``pushdown.plan_table``: the same normalising SQL, the same fallbacks to streaming and the same counts as a
pushdown, in one transaction of the state. Whatever keeps the rows from landing (a column type the pushdown
does not render as Python would, a query that fails, data the state refuses) rolls that transaction back, and
the computation is streamed: its errors and skipped rows are then the streamed path's own.

From a PostgreSQL source to a PostgreSQL state nothing is landed (:class:`Pipe`): the source runs the same
normalising SQL and its ``COPY`` goes straight into ``staging``, with the same counts, fallbacks and transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from ..config import Computation
from ..errors import RunStopped
from ..sources import SourceStats, pushdown
from ..sources.arrow_read import AdbcSource, land_arrow
from ..sources.duck import DuckFile
from ..sources.landing import NotLandable, errors, land_duckdb, land_postgres, pipe_postgres
from ..store import landing, loading
from ..store.dialect import is_postgresql

log = logging.getLogger(__name__)

#: moves a computation's raw rows into the landed table on a state connection; says what it moved
Lander = Callable[[Connection], landing.Landed]


@dataclass(frozen=True)
class Pipe:
    """A PostgreSQL source's :data:`Lander`, which on a PostgreSQL state lands nothing: ``stage`` stages the rows
    for a run straight into ``staging`` on a state connection, normalised on the source (``sources/landing.py``),
    and says what it staged and how it read them, or None to stream."""

    land: Lander
    stage: Callable[[Connection, int], tuple[loading.PushedDown, str] | None]

    def __call__(self, conn: Connection) -> landing.Landed:
        return self.land(conn)


def lander(
    source: Engine | None,
    duckdb: DuckFile | None,
    comp: Computation,
    batch_rows: int,
    stop: threading.Event | None = None,
    adbc: AdbcSource | None = None,
) -> Lander | None:
    """How ``comp``'s rows can be landed in the state database from ``source`` (a SQLAlchemy source: PostgreSQL
    by ``COPY``, any other as Arrow batches, ``sources/arrow_read.py``, read on the run's ADBC connection ``adbc``
    when there is one) or from the run's DuckDB file ``duckdb``, in Arrow batches of ``batch_rows``; None when they
    must be streamed. Setting ``stop`` cancels the source's query (PostgreSQL and DuckDB; another engine's read
    runs to its end, and the run stops before the next computation)."""
    if comp.sql is None or comp.builder is not None or comp.file is not None:
        return None
    if duckdb is not None:
        return lambda conn: land_duckdb(duckdb, comp, conn, batch_rows, stop)
    if source is not None and is_postgresql(source):
        return Pipe(
            lambda conn: land_postgres(source, comp, conn, stop),
            lambda conn, run_id: pipe_postgres(source, comp, conn, run_id, stop),
        )
    if source is not None:
        return lambda conn: land_arrow(source, adbc, comp, conn, batch_rows)
    return None


def stopped(run_id: int, comp: Computation) -> RunStopped:
    """The error of a run asked to stop while it read ``comp``."""
    return RunStopped(
        f"run {run_id} was asked to stop (SIGTERM/SIGINT) while reading {comp.key}; nothing was sent "
        f"and no diff stored: the next run starts over",
        run_id=run_id,
    )


def record(stats: SourceStats, pushed: loading.PushedDown) -> None:
    """Add what a pushdown staged to the computation's source figures."""
    stats.rows += pushed.rows
    stats.null_user_ids += pushed.null_user_ids
    stats.null_values += pushed.null_values
    stats.members = pushed.members


def _stage_landed(conn: Connection, run_id: int, comp: Computation, move: Lander) -> loading.PushedDown | None:
    """Land and push down in one transaction of ``conn``; None (rolled back) when the rows must be streamed."""
    with conn.begin() as transaction:
        landed = move(conn)
        plan = pushdown.plan_table(conn, comp, landing.TABLE, landed.value_is_json)
        if plan is None:
            transaction.rollback()
            log.info("%s: streaming (its column types cannot be pushed down once landed)", comp.key)
            return None
        pushed = loading.push_down(conn, run_id, plan)
        if pushed.unusable:  # rows to skip: the streamed path says why, user by user
            transaction.rollback()
            log.info("%s: streaming, to report %d rows it cannot stage", comp.key, pushed.unusable)
            return None
        landing.drop(conn)
    log.info(
        "%s: landed %d rows in the state database (read with %s) and pushed down", comp.key, landed.rows, landed.via
    )
    return pushed


def _stage_piped(conn: Connection, run_id: int, comp: Computation, pipe: Pipe) -> loading.PushedDown | None:
    """Stage straight into ``staging`` in one transaction of ``conn``; None (rolled back) to stream instead."""
    with conn.begin() as transaction:
        piped = pipe.stage(conn, run_id)
        if piped is None:
            transaction.rollback()
            log.info("%s: streaming (its column types cannot be pushed down)", comp.key)
            return None
        pushed, via = piped
        if pushed.unusable:  # rows to skip: the streamed path says why, user by user
            transaction.rollback()
            log.info("%s: streaming, to report %d rows it cannot stage", comp.key, pushed.unusable)
            return None
    log.info(
        "%s: landed %d rows straight into staging (normalised on the source, read with %s)", comp.key, pushed.rows, via
    )
    return pushed


def land(
    engine: Engine,
    run_id: int,
    comp: Computation,
    move: Lander,
    stats: SourceStats,
    stop: threading.Event | None = None,
) -> bool:
    """Stage ``comp`` by landing its rows with ``move`` and pushing them down from the landed table, or, for a
    :class:`Pipe` on a PostgreSQL state, by its rows piped straight into ``staging``.

    Guarantees: True when staged, with the same rows and figures as streaming; False with nothing staged
    (one transaction, rolled back) when it must be streamed instead. RunStopped, nothing staged, when ``stop`` was
    set while it ran (``move`` cancels the source's query then): streaming would run the query again.
    """
    pushed = None
    try:
        if isinstance(move, Pipe) and is_postgresql(engine):
            with engine.connect() as conn:
                pushed = _stage_piped(conn, run_id, comp, move)
        else:
            pushed = _land(engine, run_id, comp, move)
    except NotLandable as exc:
        log.info("%s: streaming (%s)", comp.key, exc)
        return False
    except errors() as exc:  # the streamed path reports the query's own error, or a value's
        if stop is not None and stop.is_set():
            raise stopped(run_id, comp) from None
        log.info("%s: landing failed (%s); streaming instead", comp.key, " ".join(str(exc).split())[:200])
        return False
    if pushed is None:
        return False
    record(stats, pushed)
    return True


def _land(engine: Engine, run_id: int, comp: Computation, move: Lander) -> loading.PushedDown | None:
    """Land with ``move`` and push down from the landed table, on a connection that goes back to the pool
    without that table, whatever happened."""
    pushed = None
    with engine.connect() as conn, landing.unprepared(conn):
        try:
            pushed = _stage_landed(conn, run_id, comp, move)
        finally:
            if pushed is None:
                if conn.in_transaction():
                    conn.rollback()
                landing.drop(conn)
                conn.commit()
    return pushed
