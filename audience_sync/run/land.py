"""The landing path of the stage step: a query on another database, staged by the pushdown's own SQL.

When the source is neither the state database nor a SQLite file attached to it, a SQL computation is
normally streamed through Python. Where a bulk reader exists (``sources/landing.py``), its raw rows are
instead *landed* in a temporary table of the state database, in bulk, and pushed down from that table with
``pushdown.plan_table``: the same normalising SQL, the same fallbacks to streaming and the same counts as a
pushdown, in one transaction of the state. Whatever keeps the rows from landing (a column type the pushdown
does not render as Python would, a query that fails, data the state refuses) rolls that transaction back, and
the computation is streamed: its errors and skipped rows are then the streamed path's own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, Engine

from ..config import Computation
from ..errors import RunStopped
from ..sources import SourceStats, pushdown
from ..sources.arrow_read import AdbcSource, land_arrow
from ..sources.duck import DuckFile
from ..sources.landing import NotLandable, errors, land_duckdb, land_postgres
from ..store import landing, loading
from ..store.dialect import is_postgresql

log = logging.getLogger(__name__)

#: moves a computation's raw rows into the landed table on a state connection; says what it moved
Lander = Callable[[Connection], landing.Landed]


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
        return lambda conn: land_postgres(source, comp, conn, stop)
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


def land(
    engine: Engine,
    run_id: int,
    comp: Computation,
    move: Lander,
    stats: SourceStats,
    stop: threading.Event | None = None,
) -> bool:
    """Stage ``comp`` by landing its rows with ``move`` and pushing them down from the landed table.

    Guarantees: True when staged, with the same rows and figures as streaming; False with nothing staged
    (one transaction, rolled back) when it must be streamed instead. RunStopped, nothing staged, when ``stop`` was
    set while it ran (``move`` cancels the source's query then): streaming would run the query again.
    """
    pushed = None
    try:
        with engine.connect() as conn, landing.unprepared(conn):
            try:
                pushed = _stage_landed(conn, run_id, comp, move)
            finally:  # the connection goes back to the pool without the landed table, whatever happened
                if pushed is None:
                    if conn.in_transaction():
                        conn.rollback()
                    landing.drop(conn)
                    conn.commit()
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
