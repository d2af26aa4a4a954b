"""One run, end to end: the function the CLI, the scheduler and the tests all call.

    config -> sources -> staging -> diff (outbox rows) -> destinations -> acknowledged rows advance the snapshot

Order of effects, and why it is safe to kill the process at any point:
1. migrations, key checks and the run lock come before anything is read or written;
2. sources are staged under the run's id; a source failure deletes the run's staging and stores no diff;
3. every change of the run is inserted in one transaction, so the outbox never holds half a diff;
4. delivery records outcomes and advances the snapshot chunk by chunk, after the destination acknowledged.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Config
from ..destinations import DestinationFactory, build_destination
from ..errors import LockLost
from ..model import RunCounts, RunStatus
from ..redact import scrub
from ..sources.arrow_read import AdbcSource, adbc_source
from ..sources.builder.windows import as_utc
from ..sources.duck import DuckFile, duckdb_file
from ..store import outbox, registry, runs, sizes, staging
from ..store.dialect import analyze
from ..store.engine import create_source_engine, create_state_engine, store_error
from ..store.lock import HeldLock, run_lock
from ..store.migrate import upgrade
from .deliver import DeliveryReport, deliver_all
from .diff import diff
from .guard import hold_messages
from .outcome import RunResult, decide_status, failure_text
from .plan import Mode, RunPlan, select_targets
from .progress import NoProgress, Progress
from .stage import check_source, stage, use_pushdown

__all__ = ["Mode", "RunPlan", "RunResult", "failure_text", "run_sync", "select_targets", "use_pushdown"]

log = logging.getLogger(__name__)
#: the run's closing record, its summary: a logger of its own, which JSON logs write at every level
summary_log = logging.getLogger("audience_sync.run.summary")

#: refresh the snapshot's planner statistics after a run that delivered at least this many changes
ANALYZE_AFTER = 10_000


def run_sync(
    config: Config,
    *,
    mode: Mode = "incremental",
    destinations: Sequence[str] | None = None,
    audiences: Sequence[str] | None = None,
    users: Sequence[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    trigger: str = "cli",
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    wait: float = 0.0,
    as_of: dt.datetime | None = None,
    engine: Engine | None = None,
    destination_factory: DestinationFactory | None = None,
) -> RunResult:
    """Run one sync and return its result; the run's row in ``sync_runs`` says the same.

    Guarantees: only changed users are sent (all current members on ``mode="resync"``); a change is marked
    sent and advances the snapshot only once its destination acknowledged it; a source failure stores no diff;
    ``dry_run`` stores the diff of a ``dry_run`` run and sends nothing. Raises ConfigError/KeyCollisionError
    before anything is written, LockHeld when another run holds a destination, SourceError after marking the
    run failed, LockLost when the run lost its lock while it ran (it then sent and recorded nothing more). Any
    exception escaping after the run's row was opened closes the row as failed with the error first.
    Destination failures do not raise: they are in the result (status ``partial`` or ``failed``).
    A computation that trips the mass-exit guard is held (nothing of it sent) and the run fails, unless
    ``force``. Setting ``stop`` (from a signal handler) finishes the requests in flight, leaves the rest pending
    and ends the run as ``partial``. ``wait`` seconds: how long to wait for another run's lock. ``as_of``: the
    instant builder computations are evaluated at (default: the run's start); events after it never count.

    ``engine``: the state database to use, an engine on ``config.state_url`` as
    :func:`~audience_sync.store.engine.create_state_engine` makes it (SQLite's pragmas and functions); the caller
    owns it and it is not disposed (without one, the run opens its own and disposes it). ``destination_factory``:
    what builds each destination's adapter from its config instead of the registry's ``build_destination`` (an
    in-process ``destinations.dummy.DummyDestination``, say); the run sets the adapter's ``before_attempt`` and
    closes it after delivering, as for any adapter. Neither changes what the run guarantees.
    """
    started = time.monotonic()
    as_of = as_utc(as_of or dt.datetime.now(dt.UTC))  # a naive instant is UTC
    progress = progress or NoProgress()
    dest_names, comps = select_targets(config, destinations, audiences)
    use_pushdown(config)  # a contradictory pushdown setting stops the run before anything is written
    check_source(config, comps)
    owned = engine is None  # the caller's engine outlives the run
    engine = create_state_engine(config.state_url) if engine is None else engine
    # the source: the state's own engine, a DuckDB file read with DuckDB's own API (one connection for the whole
    # run, opened by its first read), or an engine of its own, and then its ADBC driver's connection when one is
    # installed (also one for the whole run, opened by its first landing)
    source: Engine | DuckFile = engine
    adbc: AdbcSource | None = None
    if config.source_url != config.state_url:
        duck_path = duckdb_file(config.source_url)
        source = DuckFile(duck_path) if duck_path is not None else create_source_engine(config.source_url)
        adbc = adbc_source(source.url) if isinstance(source, Engine) else None
    try:
        upgrade(engine)
        with engine.connect() as conn:
            registry.check_keys(conn, comps)
        with run_lock(engine, dest_names, dt.timedelta(seconds=config.lock_lease), wait=wait) as lock:
            plan = RunPlan(
                dest_names,
                comps,
                "dry_run" if dry_run else mode,
                users,
                trigger,
                force,
                full=not destinations and not audiences,
                stop=stop,
                as_of=as_of,
                resync=mode == "resync",
                destination_factory=destination_factory or build_destination,
            )
            return _locked_run(engine, source, adbc, config, plan, held=lock, progress=progress, started=started)
    except SQLAlchemyError as exc:  # the state database itself; sources raise SourceError
        raise store_error(exc, config.state_url) from None
    finally:
        if owned:
            engine.dispose()
        if isinstance(source, Engine) and source is not engine:
            source.dispose()
        # closed after staging already, unless the run never got there; a failing close never hides the run's
        # outcome (nor the exception on its way out)
        _close_source(source, adbc)


def _locked_run(
    engine: Engine,
    source: Engine | DuckFile,
    adbc: AdbcSource | None,
    config: Config,
    plan: RunPlan,
    *,
    held: HeldLock,
    progress: Progress,
    started: float,
) -> RunResult:
    dest_names, comps, mode = plan.dest_names, plan.comps, plan.mode
    dry_run = mode == "dry_run"
    with engine.begin() as conn:
        # confirmed first: while this transaction runs, no run that it abandons or recovers can hold these locks
        held.confirm(conn, dest_names)
        runs.abandon_stale_runs(conn, dest_names, reason="abandoned: its process stopped before finishing")
        before = runs.last_change_id(conn)
        run_id = runs.open_run(
            conn, mode=mode, trigger=plan.trigger, destinations=dest_names, computations=[c.key for c in comps]
        )
        held.note_run(conn, run_id)  # the lock names its run from now on
        if not dry_run:
            in_doubt = outbox.recover_in_flight(conn, run_id, dest_names, held.destination_tokens())
            if in_doubt:
                log.warning(
                    "%d changes were in flight when an earlier run stopped; sending their current values", in_doubt
                )
    held.run_id = run_id
    log.info(
        "run %d (%s): %d computations to %s",
        run_id,
        mode,
        len(comps),
        ", ".join(dest_names),
        extra={
            "run_id": run_id,
            "mode": mode,
            "destinations": dest_names,
            "trigger": plan.trigger,
            "as_of": plan.as_of.isoformat() if plan.as_of else None,
        },
    )
    try:
        status, counts, error, reports = _steps(engine, source, adbc, config, plan, run_id, before, held, progress)
    except BaseException as exc:  # whatever escapes, ours or not: the run row says it failed, and why
        _close_failed(engine, config, run_id, exc, [] if plan.mode == "dry_run" else plan.pairs())
        raise
    last_errors: dict[str, str] = {}
    if counts.get("pending") or counts.get("failed"):
        with engine.connect() as conn:
            last_errors = runs.last_errors(conn, run_id, after_id=before)
    result = RunResult(
        run_id=run_id,
        mode=mode,
        status=status,
        counts=counts,
        error=error,
        duration_seconds=time.monotonic() - started,
        destinations={
            n: {"error": r.error, "last_error": r.error or last_errors.get(n), "changes_attempted": r.attempted}
            for n, r in reports.items()
        },
        as_of=plan.as_of.isoformat() if plan.as_of else None,
    )
    totals = {k: dict(counts)[k] for k in runs.COUNT_KEYS}
    summary_log.log(
        logging.INFO if status == "succeeded" else logging.WARNING,
        "run %d %s in %.1fs: %s%s",
        run_id,
        status,
        result.duration_seconds,
        totals,
        f" ({error})" if error else "",
        extra={
            "run_id": run_id,
            "mode": mode,
            "status": status,
            "counts": totals,
            "destinations": dest_names,
            "duration_seconds": round(result.duration_seconds, 3),
            "error": error,
            "exit_code": result.exit_code,
            "per_destination": {
                name: {
                    **{k: c.get(k, 0) for k in runs.COUNT_KEYS},
                    "last_error": result.destinations.get(name, {}).get("last_error"),
                }
                for name, c in sorted(counts.get("destinations", {}).items())
            },
        },
    )
    return result


def _steps(
    engine: Engine,
    source: Engine | DuckFile,
    adbc: AdbcSource | None,
    config: Config,
    plan: RunPlan,
    run_id: int,
    before: int,
    held: HeldLock,
    progress: Progress,
) -> tuple[RunStatus, RunCounts, str | None, dict[str, DeliveryReport]]:
    """Stage, diff, deliver and close the open run ``run_id``; return its status, counts, error and reports."""
    dest_names, comps, mode = plan.dest_names, plan.comps, plan.mode
    dry_run = mode == "dry_run"
    try:
        source_stats = stage(engine, source, config, run_id, comps, progress, plan.stop, plan.as_of, adbc)
        staged = {key: st["members"] for key, st in source_stats.items()}
        holds = diff(engine, config, plan, run_id, staged=staged, fence=held)
    finally:
        # staging first: a source that fails to close must not leave the run's rows behind
        with engine.begin() as conn:
            staging.clear(conn, run_id)
        # read for the last time: the file is free for a writer, and no warehouse session idles, while the run sends
        _close_source(source, adbc)
    log.debug("run %d: diff stored", run_id)

    reports = (
        {}
        if dry_run
        else deliver_all(engine, config, run_id, dest_names, progress, plan.stop, held, plan.destination_factory)
    )
    if sum(r.attempted for r in reports.values()) >= ANALYZE_AFTER:
        with engine.begin() as conn:  # the next diff joins the snapshot: plan it with its new size
            analyze(conn, "snapshot")
    with engine.begin() as conn:
        held.confirm(conn, dest_names)
        groups = runs.change_groups(conn, run_id, after_id=before)  # read once: the counts and the sizes
        counts = runs.count_changes(conn, run_id, groups=groups)
        counts["sources"] = source_stats
        if plan.as_of is not None and any(c.builder is not None for c in comps):
            counts["as_of"] = plan.as_of.isoformat()  # kept with the run: the instant its builder computations saw
        status = decide_status(holds, reports, counts, dry_run=dry_run)
        errors = [*hold_messages(holds).values()] + [f"{r.destination}: {r.error}" for r in reports.values() if r.error]
        error = "; ".join(errors) or None
        runs.close_run(conn, run_id, status=status, counts=counts, error=error)
        if not dry_run:  # the size each destination holds after the run, for `audiences --history`
            sizes.record(conn, run_id, plan.pairs(), groups=groups)
        if plan.full and not dry_run:
            retired = registry.retire_missing(conn, [c.key for c in config.computations])
            if retired:
                log.info("retired keys no longer configured: %s (nothing is sent for them)", ", ".join(retired))
    return status, counts, error, reports


def _close_source(source: Engine | DuckFile, adbc: AdbcSource | None) -> None:
    """Close the run's DuckDB file and ADBC connection, when it has them. Best effort: it never raises; an error
    closing one is logged as a warning naming its source, and the other is closed all the same."""
    closing: list[tuple[str, Callable[[], None]]] = []
    if isinstance(source, DuckFile):
        closing.append((str(source.path), source.close))
    if adbc is not None:
        closing.append((f"{adbc.module} {adbc.name}", adbc.close))
    for name, close in closing:
        try:
            close()
        except Exception as exc:  # the data was read already: the run's outcome does not depend on the close
            log.warning("could not close the source %s: %s", name, scrub(" ".join(str(exc).split())))


def _close_failed(
    engine: Engine, config: Config, run_id: int, exc: BaseException, pairs: Sequence[sizes.Pair] = ()
) -> None:
    """Close run ``run_id`` as ``failed`` with the error that stopped it (secrets scrubbed) and its counts, whatever
    its row says now (a run that took its lock over may have called it abandoned), and record the sizes of
    ``pairs`` after it unless it lost its lock (sizes are recorded under the lock). Best effort: the database may
    be what failed, and the original error must reach the caller."""
    try:
        with engine.begin() as conn:
            counts = runs.count_changes(conn, run_id)
            runs.close_run(conn, run_id, status=RunStatus.FAILED, counts=counts, error=failure_text(exc, config))
            if pairs and not isinstance(exc, LockLost):
                sizes.record(conn, run_id, pairs)
    except Exception:
        log.error("run %d: could not mark the run failed; the next run marks it abandoned", run_id, exc_info=True)
