"""The stage step: every computation of a run read into ``staging`` under the run's id.

A computation is pushed down (one ``INSERT ... SELECT`` inside the state database) when its source is the state
database, or a SQLite file attached to a SQLite state (``store/attach.py``), and its query allows it. A query
on another database whose rows can be read in bulk is landed in the state database and pushed down from there
(``run/land.py``). Anything else is streamed in chunks. A source failure raises SourceError; the caller clears
the run's staging whatever happens.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Computation, Config
from ..errors import ConfigError, SourceError
from ..model import SourceFigures
from ..sources import RawRow, SourceStats, normalize, pushdown, read_rows
from ..sources.arrow_read import AdbcSource
from ..sources.builder import BuilderSource
from ..sources.duck import DuckFile, duckdb_file
from ..store import attach, loading, staging
from ..store.dialect import backend
from ..store.engine import redact_url
from ..store.staging import StagedRow
from . import land
from .progress import Progress

log = logging.getLogger(__name__)

#: skipped source rows logged one by one per computation; the rest are counted (every one is a skipped change)
SKIPS_LOGGED = 10


Connect = Callable[[], AbstractContextManager[Connection]]


def _push_down(
    connect: Connect,
    run_id: int,
    comp: Computation,
    stats: SourceStats,
    planner: Callable[[Any, Computation], pushdown.Pushdown | None] = pushdown.plan,
) -> bool:
    """Stage ``comp`` by running its query inside the state database (on connections from ``connect``: the
    state's own, or with the source file attached); False when it must be streamed instead."""
    with connect() as conn:
        plan = planner(conn, comp)
    if plan is None:
        log.info("%s: streaming (its query or its column types cannot be pushed down)", comp.key)
        return False
    try:
        with connect() as conn, conn.begin() as transaction:
            pushed = loading.push_down(conn, run_id, plan)
            if pushed.unusable:  # rows to skip: the streamed path says why, user by user
                transaction.rollback()
                log.info("%s: streaming, to report %d rows it cannot stage", comp.key, pushed.unusable)
                return False
    except SQLAlchemyError as exc:  # the streamed path reports the query's own error, or a value's
        log.info("%s: pushdown failed (%s); streaming instead", comp.key, " ".join(str(exc).split())[:200])
        return False
    land.record(stats, pushed)
    return True


def _stream(
    engine: Engine,
    source: Engine | DuckFile,
    config: Config,
    run_id: int,
    comp: Computation,
    stats: SourceStats,
    advance: Any,
    stop: threading.Event | None = None,
    builder: BuilderSource | None = None,
) -> None:
    """Stage ``comp`` from its source in chunks: COPY on PostgreSQL, batched upserts on SQLite; one transaction.

    Setting ``stop`` raises RunStopped at the next chunk (the transaction, and so the staging, is rolled back).
    """
    raws: Iterator[list[RawRow]] = (
        builder.read_rows(comp, config.source_chunk_size)
        if builder is not None and comp.builder is not None
        else read_rows(comp, source, config.source_chunk_size)
    )

    def chunks() -> Iterator[list[StagedRow]]:
        for raw in raws:
            if stop is not None and stop.is_set():
                raise land.stopped(run_id, comp)
            yield normalize(comp, raw, stats)
            advance(len(raw))

    with engine.begin() as conn:
        if backend(conn).bulk_copy:
            loading.copy_rows(conn, run_id, comp.key, chunks())
        else:
            loading.insert_batches(conn, run_id, comp.key, chunks())
        staging.insert_skips(conn, run_id, comp.key, [skip.row() for skip in stats.skips])


def stage(
    engine: Engine,
    source: Engine | DuckFile,
    config: Config,
    run_id: int,
    comps: Sequence[Computation],
    progress: Progress,
    stop: threading.Event | None = None,
    as_of: dt.datetime | None = None,
    adbc: AdbcSource | None = None,
) -> dict[str, SourceFigures]:
    """Stage ``comps`` for run ``run_id`` and return per computation its source figures (rows, members, null
    user ids, null values, skipped). ``source``: a SQLAlchemy engine, or the run's DuckDB file (``sources/duck.py``);
    ``adbc``: the run's ADBC connection to that engine's database, which lands its queries' Arrow batches
    (``sources/arrow_read.py``). Raises SourceError (culprit named) or RunStopped when ``stop`` is set."""
    stats: dict[str, SourceFigures] = {}
    push = use_pushdown(config)
    # another database: rows landed in the state database in bulk, then pushed down, where that can be done
    landing = config.source_pushdown is not False and not push
    connect: Connect = engine.connect
    source_file = pushdown.attachable_file(config.state_url, config.source_url) if push else None
    if source_file is not None:
        push = _attachable(engine, source_file)
        connect = lambda: attach.attached(engine, source_file)  # noqa: E731 (a connection factory)
    # a DuckDB file has no engine: builder computations never read one (check_source), its queries land or stream
    sqla, duckdb = (source, None) if isinstance(source, Engine) else (None, source)
    # builder computations: every table and column they name is checked before anything is staged
    builder = BuilderSource(config, sqla or engine, comps, as_of or dt.datetime.now(dt.UTC))
    if builder.comps:
        builder.check()
    for comp in comps:
        task = f"reading {comp.key}"
        progress.begin(task)
        st = SourceStats()
        if stop is not None and stop.is_set():
            raise land.stopped(run_id, comp)
        if comp.builder is not None:
            pushed = push and _push_down(connect, run_id, comp, st, builder.plan)
        else:
            pushed = push and comp.sql is not None and _reads_source(sqla, source_file, comp)
            pushed = pushed and _push_down(connect, run_id, comp, st)
            move = land.lander(sqla, duckdb, comp, config.source_chunk_size, stop, adbc) if landing else None
            pushed = pushed or (move is not None and land.land(engine, run_id, comp, move, st, stop))
        if pushed:
            progress.advance(task, st.rows)
        else:
            _stream(
                engine, source, config, run_id, comp, st, lambda n, task=task: progress.advance(task, n), stop, builder
            )
        progress.end(task)
        with engine.connect() as conn:
            # an audience's value is always true: only a trait can have two values for one user
            conflict = staging.first_conflict(conn, run_id, comp.key) if comp.computation_class == "trait" else None
            members = st.members if st.members is not None else staging.count_members(conn, run_id, comp.key)
        if conflict is not None:
            user, first, second = conflict
            raise SourceError(
                f"{comp.label}: user {user!r} has two different values "
                f"({first} and {second}); a trait needs one value per user",
                computation=comp.key,
                user_id=user,
            )
        if st.null_user_ids:
            log.warning("%s: dropped %d rows with a null user_id", comp.key, st.null_user_ids)
        for skip in st.skips[:SKIPS_LOGGED]:
            log.warning("%s", skip.reason, extra={"run_id": run_id, "computation": comp.key})
        if len(st.skips) > SKIPS_LOGGED:
            log.warning(
                "%s: %d more users skipped (see `audience-sync diff --status skipped`)",
                comp.key,
                len(st.skips) - SKIPS_LOGGED,
            )
        log.debug("run %d: staged %s (%d rows)", run_id, comp.key, st.rows)
        stats[comp.key] = {
            "rows": st.rows,
            "members": members,
            "null_user_ids": st.null_user_ids,
            "null_values": st.null_values,
            "skipped": len(st.skips),
        }
    return stats


def _reads_source(source: Engine | None, source_file: Path | None, comp: Computation) -> bool:
    """Whether ``comp``'s query, pushed down with ``source_file`` attached, reads the tables streaming would: those
    of the source file, not a state table of a name the file lacks (SQLite would look that up in the state)."""
    if source_file is None or source is None or comp.sql is None:
        return True
    with source.connect() as conn:
        alone = attach.compiles_alone(conn, pushdown.query_text(comp.sql))
    if not alone:
        log.info("%s: streaming (its query does not compile on the source file alone)", comp.key)
    return alone


def _attachable(engine: Engine, source_file: Path) -> bool:
    """Whether ``source_file`` can be attached to the state and read there as the source would be read."""
    try:
        with attach.attached(engine, source_file) as conn:
            hidden = attach.shadowed(conn)
    except FileNotFoundError:
        log.info("streaming: the source file %s does not exist", source_file)
        return False
    except SQLAlchemyError as exc:  # not a SQLite database, unreadable: the streamed path reports it
        log.info("streaming: the source file cannot be attached (%s)", " ".join(str(exc).split())[:200])
        return False
    if hidden:
        log.info("streaming: the state database has tables named like the source's (%s)", ", ".join(sorted(hidden)))
        return False
    return True


def check_source(config: Config, comps: Sequence[Computation]) -> None:
    """ConfigError when builder computations (which reflect the source's tables) are to read a DuckDB file."""
    if duckdb_file(config.source_url) is not None and any(comp.builder is not None for comp in comps):
        raise ConfigError(
            f"{config.path}: builder computations (condition, compute) need a SQLAlchemy source, not the DuckDB "
            f"file of source.url {redact_url(config.source_url)!r}",
            path=config.path,
        )


def use_pushdown(config: Config) -> bool:
    """Whether the run stages its SQL computations inside the state database (see ``sources/pushdown.py``).

    ``[source] pushdown = false`` always streams; otherwise queries are pushed down when the source is the
    state database, or another SQLite file while the state is SQLite (attached to the state's connection).
    ConfigError when ``pushdown = true`` but the source is neither.
    """
    reachable = pushdown.same_database(config.state_url, config.source_url) or (
        pushdown.attachable_file(config.state_url, config.source_url) is not None
    )
    if config.source_pushdown and not reachable:
        raise ConfigError(
            f"{config.path}: source.pushdown = true needs the source to be the state database or, with SQLite "
            f"state, a SQLite file (source.url {redact_url(config.source_url)!r} is another database)",
            path=config.path,
        )
    return reachable and config.source_pushdown is not False
