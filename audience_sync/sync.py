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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .config import Computation, Config
from .delivery import DeliveryReport, Fence, deliver_pending
from .destinations import build_destination
from .diff import note_missing, skip_unreachable, supersede_pending, write_changes
from .errors import AudienceSyncError, ConfigError, LockLost, RunStopped, SourceError
from .guard import Hold, find_mass_exits, hold
from .progress import NoProgress, Progress
from .redact import scrub
from .sources import RawRow, SourceStats, normalize, pushdown, read_rows
from .sources.builder import BuilderSource
from .sources.builder.windows import as_utc
from .store import loading, outbox, registry, runs, sizes, staging
from .store.dialect import analyze
from .store.engine import create_state_engine, redact_url, store_error
from .store.lock import HeldLock, run_lock
from .store.migrate import upgrade
from .store.staging import StagedRow

log = logging.getLogger(__name__)

Mode = Literal["incremental", "resync"]
#: refresh the snapshot's planner statistics after a run that delivered at least this many changes
ANALYZE_AFTER = 10_000
#: skipped source rows logged one by one per computation; the rest are counted (every one is a skipped change)
SKIPS_LOGGED = 10


@dataclass
class RunResult:
    """The outcome of a run, as ``run --json`` prints it."""

    run_id: int
    mode: str
    status: str
    counts: dict[str, Any]
    error: str | None = None
    duration_seconds: float = 0.0
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the instant builder computations were evaluated at (ISO 8601, UTC)
    as_of: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all delivered (or nothing to do), 3 some changes still pending or failed, 1 the run failed."""
        return {"succeeded": 0, "partial": 3}.get(self.status, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no secrets: only names, counts and the destinations' reasons)."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "status": self.status,
            "exit_code": self.exit_code,
            "counts": self.counts,
            "error": self.error,
            "duration_seconds": round(self.duration_seconds, 3),
            "destinations": self.destinations,
            "as_of": self.as_of,
        }


def select_targets(
    config: Config, destinations: Sequence[str] | None, audiences: Sequence[str] | None
) -> tuple[list[str], list[Computation]]:
    """The destination names and computations a run covers; ConfigError for an unknown name or key."""
    dest_names = (
        [config.destination(d).name for d in destinations] if destinations else [d.name for d in config.destinations]
    )
    comps = [config.computation(k) for k in audiences] if audiences else list(config.computations)
    comps = [c for c in comps if set(c.destinations) & set(dest_names)]
    if not dest_names:
        raise ConfigError(f"{config.path}: no destinations configured: add a [[destinations]] table")
    return dest_names, comps


def _push_down(
    engine: Engine,
    run_id: int,
    comp: Computation,
    stats: SourceStats,
    planner: Callable[[Any, Computation], pushdown.Pushdown | None] = pushdown.plan,
) -> bool:
    """Stage ``comp`` by running its query inside the state database; False when it must be streamed instead."""
    with engine.connect() as conn:
        plan = planner(conn, comp)
    if plan is None:
        log.info("%s: streaming (its query or its column types cannot be pushed down)", comp.key)
        return False
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            pushed = loading.push_down(conn, run_id, plan)
            if pushed.unusable:  # rows to skip: the streamed path says why, user by user
                transaction.rollback()
                log.info("%s: streaming, to report %d rows it cannot stage", comp.key, pushed.unusable)
                return False
    except SQLAlchemyError as exc:  # the streamed path reports the query's own error, or a value's
        log.info("%s: pushdown failed (%s); streaming instead", comp.key, " ".join(str(exc).split())[:200])
        return False
    stats.rows += pushed.rows
    stats.null_user_ids += pushed.null_user_ids
    stats.null_values += pushed.null_values
    stats.members = pushed.members
    return True


def _stopped(run_id: int, comp: Computation) -> RunStopped:
    return RunStopped(
        f"run {run_id} was asked to stop (SIGTERM/SIGINT) while reading {comp.key}; nothing was sent "
        f"and no diff stored: the next run starts over",
        run_id=run_id,
    )


def _stream(
    engine: Engine,
    source: Engine,
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
                raise _stopped(run_id, comp)
            yield normalize(comp, raw, stats)
            advance(len(raw))

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            loading.copy_rows(conn, run_id, comp.key, chunks())
        else:
            loading.insert_batches(conn, run_id, comp.key, chunks())
        staging.insert_skips(conn, run_id, comp.key, [skip.row() for skip in stats.skips])


def _stage(
    engine: Engine,
    source: Engine,
    config: Config,
    run_id: int,
    comps: Sequence[Computation],
    progress: Progress,
    stop: threading.Event | None = None,
    as_of: dt.datetime | None = None,
) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    push = use_pushdown(config)
    # builder computations: every table and column they name is checked before anything is staged
    builder = BuilderSource(config, source, comps, as_of or dt.datetime.now(dt.UTC))
    if builder.comps:
        builder.check()
    for comp in comps:
        task = f"reading {comp.key}"
        progress.begin(task)
        st = SourceStats()
        if stop is not None and stop.is_set():
            raise _stopped(run_id, comp)
        if comp.builder is not None:
            pushed = push and _push_down(engine, run_id, comp, st, builder.plan)
        else:
            pushed = push and comp.sql is not None and _push_down(engine, run_id, comp, st)
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
                f"trait {comp.name!r} ({comp.key}): user {user!r} has two different values "
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


def use_pushdown(config: Config) -> bool:
    """Whether the run stages its SQL computations inside the state database (see ``sources/pushdown.py``).

    ``[source] pushdown = false`` always streams; otherwise queries are pushed down when the source is the
    state database. ConfigError when ``pushdown = true`` but the source is another database.
    """
    same = pushdown.same_database(config.state_url, config.source_url)
    if config.source_pushdown and not same:
        raise ConfigError(
            f"{config.path}: source.pushdown = true needs the source to be the state database "
            f"(source.url {redact_url(config.source_url)!r} is another database)",
            path=config.path,
        )
    return same and config.source_pushdown is not False


def _diff(
    engine: Engine,
    config: Config,
    run_id: int,
    dest_names: Sequence[str],
    comps: Sequence[Computation],
    *,
    resync: bool,
    dry_run: bool,
    users: Sequence[str] | None,
    force: bool,
    staged: Mapping[str, int],
    fence: Fence,
) -> list[Hold]:
    """Write every change of the run in one transaction, with the guard's holds; return the holds. The transaction
    begins by confirming the run lock: a run that lost it writes no change (LockLost)."""
    holds: list[Hold] = []
    with engine.begin() as conn:
        fence.confirm(conn, dest_names)
        analyze(conn, "staging")
        for name in dest_names:
            dest = config.destination(name)
            targeted = [c for c in comps if name in c.destinations]
            if not dry_run:
                supersede_pending(conn, run_id, name, [c.key for c in targeted])
            written = write_changes(conn, run_id, name, targeted, resync=resync, users=users)
            for comp in targeted:
                if comp.exit_after is not None and not dry_run:
                    note_missing(conn, run_id, name, comp)
            required = dest.required_identifiers
            if required:
                skip_unreachable(
                    conn,
                    run_id,
                    name,
                    required,
                    f"no email: destination {name!r} ({dest.type}) requires {' and '.join(('user_id', *required))}",
                )
            if not force and written["exited"]:  # the guard has nothing to weigh without exits
                holds += find_mass_exits(conn, run_id, name, targeted, staged, min_size=config.guard.min_size)
        for held in holds:
            hold(conn, run_id, held.comp.key, held.message())
        if not dry_run:
            registry.register(conn, comps)
        analyze(conn, "diffs")
    return holds


def _deliver_one(
    engine: Engine,
    config: Config,
    run_id: int,
    name: str,
    progress: Progress,
    stop: threading.Event | None,
    fence: Fence,
) -> DeliveryReport:
    dest_config = config.destination(name)
    started = time.monotonic()
    with build_destination(dest_config) as adapter:
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


def _deliver_all(
    engine: Engine,
    config: Config,
    run_id: int,
    dest_names: Sequence[str],
    progress: Progress,
    stop: threading.Event | None,
    fence: Fence,
) -> dict[str, DeliveryReport]:
    """Deliver to every destination at once, each on its own thread: a slow or failing one holds up no other.
    When one raises (LockLost), the others finish first: a lost lock fences every destination of the run."""
    if len(dest_names) == 1:
        return {dest_names[0]: _deliver_one(engine, config, run_id, dest_names[0], progress, stop, fence)}
    with ThreadPoolExecutor(max_workers=len(dest_names), thread_name_prefix="deliver") as pool:
        futures = {
            name: pool.submit(_deliver_one, engine, config, run_id, name, progress, stop, fence) for name in dest_names
        }
        return {name: future.result() for name, future in futures.items()}


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
    ``force``. Setting ``stop`` (from a signal handler) finishes the chunks in flight, leaves the rest pending
    and ends the run as ``partial``. ``wait`` seconds: how long to wait for another run's lock. ``as_of``: the
    instant builder computations are evaluated at (default: the run's start); events after it never count.
    """
    started = time.monotonic()
    as_of = as_utc(as_of or dt.datetime.now(dt.UTC))  # a naive instant is UTC
    progress = progress or NoProgress()
    dest_names, comps = select_targets(config, destinations, audiences)
    use_pushdown(config)  # a contradictory pushdown setting stops the run before anything is written
    engine = create_state_engine(config.state_url)
    source = (
        engine
        if config.source_url == config.state_url
        else create_state_engine(config.source_url, what="source database")
    )
    try:
        upgrade(engine)
        with engine.connect() as conn:
            registry.check_keys(conn, comps)
        with run_lock(engine, dest_names, dt.timedelta(seconds=config.lock_lease), wait=wait) as lock:
            plan = _Plan(
                dest_names,
                comps,
                "dry_run" if dry_run else mode,
                users,
                trigger,
                force,
                full=not destinations and not audiences,
                stop=stop,
                as_of=as_of,
            )
            return _locked_run(engine, source, config, plan, held=lock, progress=progress, started=started)
    except SQLAlchemyError as exc:  # the state database itself; sources raise SourceError
        raise store_error(exc, config.state_url) from None
    finally:
        engine.dispose()
        if source is not engine:
            source.dispose()


@dataclass(frozen=True)
class _Plan:
    """What one run covers and how it behaves."""

    dest_names: list[str]
    comps: list[Computation]
    mode: str
    users: Sequence[str] | None
    trigger: str
    force: bool
    full: bool  # no filters: computations missing from the config are retired afterwards
    stop: threading.Event | None = None
    as_of: dt.datetime | None = None  # builder computations are evaluated at this instant


def _pairs(plan: _Plan) -> list[sizes.Pair]:
    """The destinations and computations of a run, as the size history records them."""
    return [
        sizes.Pair(name, comp.key, comp.computation_class)
        for name in plan.dest_names
        for comp in plan.comps
        if name in comp.destinations
    ]


def _locked_run(
    engine: Engine, source: Engine, config: Config, plan: _Plan, *, held: HeldLock, progress: Progress, started: float
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
        status, counts, error, reports = _steps(engine, source, config, plan, run_id, before, held, progress)
    except BaseException as exc:  # whatever escapes, ours or not: the run row says it failed, and why
        _close_failed(engine, config, run_id, exc, [] if plan.mode == "dry_run" else _pairs(plan))
        raise
    result = RunResult(
        run_id=run_id,
        mode=mode,
        status=status,
        counts=counts,
        error=error,
        duration_seconds=time.monotonic() - started,
        destinations={n: {"error": r.error, "changes_attempted": r.attempted} for n, r in reports.items()},
        as_of=plan.as_of.isoformat() if plan.as_of else None,
    )
    totals = {k: counts[k] for k in runs.COUNT_KEYS}
    log.log(
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
        },
    )
    return result


def _steps(
    engine: Engine,
    source: Engine,
    config: Config,
    plan: _Plan,
    run_id: int,
    before: int,
    held: HeldLock,
    progress: Progress,
) -> tuple[str, dict[str, Any], str | None, dict[str, DeliveryReport]]:
    """Stage, diff, deliver and close the open run ``run_id``; return its status, counts, error and reports."""
    dest_names, comps, mode = plan.dest_names, plan.comps, plan.mode
    dry_run = mode == "dry_run"
    try:
        source_stats = _stage(engine, source, config, run_id, comps, progress, plan.stop, plan.as_of)
        staged = {key: st["members"] for key, st in source_stats.items()}
        holds = _diff(
            engine,
            config,
            run_id,
            dest_names,
            comps,
            resync=mode == "resync",
            dry_run=dry_run,
            users=plan.users,
            force=plan.force,
            staged=staged,
            fence=held,
        )
    finally:
        with engine.begin() as conn:
            staging.clear(conn, run_id)
    log.debug("run %d: diff stored", run_id)

    reports = {} if dry_run else _deliver_all(engine, config, run_id, dest_names, progress, plan.stop, held)
    if sum(r.attempted for r in reports.values()) >= ANALYZE_AFTER:
        with engine.begin() as conn:  # the next diff joins the snapshot: plan it with its new size
            analyze(conn, "snapshot")
    with engine.begin() as conn:
        held.confirm(conn, dest_names)
        counts = runs.count_changes(conn, run_id, after_id=before)
        counts["sources"] = source_stats
        if plan.as_of is not None and any(c.builder is not None for c in comps):
            counts["as_of"] = plan.as_of.isoformat()  # kept with the run: the instant its builder computations saw
        if holds or any(r.credentials_rejected for r in reports.values()):
            status = "failed"
        elif counts["pending"] or counts["failed"] or any(r.error for r in reports.values()):
            status = "partial"
        else:
            status = "succeeded"
        if dry_run:
            status = "succeeded"
        errors = [h.message() for h in holds] + [f"{r.destination}: {r.error}" for r in reports.values() if r.error]
        error = "; ".join(errors) or None
        runs.close_run(conn, run_id, status=status, counts=counts, error=error)
        if not dry_run:  # the size each destination holds after the run, for `audiences --history`
            sizes.record(conn, run_id, _pairs(plan), after_id=before)
        if plan.full and not dry_run:
            retired = registry.retire_missing(conn, [c.key for c in config.computations])
            if retired:
                log.info("retired keys no longer configured: %s (nothing is sent for them)", ", ".join(retired))
    return status, counts, error, reports


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
            runs.close_run(conn, run_id, status="failed", counts=counts, error=failure_text(exc, config))
            if pairs and not isinstance(exc, LockLost):
                sizes.record(conn, run_id, pairs)
    except Exception:
        log.error("run %d: could not mark the run failed; the next run marks it abandoned", run_id, exc_info=True)


def failure_text(exc: BaseException, config: Config) -> str:
    """What a run row says about the error that stopped it: our own errors' messages as they are; anything else
    as its type and message, one line, with every secret of ``config`` (keys, tokens, URL passwords) masked."""
    if isinstance(exc, AudienceSyncError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (a second SIGINT/SIGTERM, or Ctrl-C)"
    if isinstance(exc, SQLAlchemyError):
        return str(store_error(exc, config.state_url))
    # the configuration's secrets are registered with the scrubber when it is parsed
    return scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000])
