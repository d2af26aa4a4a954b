"""``audience-sync schedule``: run syncs on a schedule, in the foreground, until told to stop.

APScheduler 3 drives the timing; every job calls the same :func:`~audience_sync.run.sync.run_sync` as ``run``.
Runs never overlap: jobs share one worker thread (``max_instances = 1``, misfires coalesced into one run), and
the database lock keeps two schedulers on two hosts apart (a run that finds the lock held is skipped and
logged). A failed run is logged and the schedule goes on. Setting the stop event (SIGTERM/SIGINT) lets the
run in progress finish its chunk in flight and end as ``partial``; then :meth:`SyncScheduler.serve` returns.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..config import Config, ScheduleConfig, parse_duration
from ..config.crontab import cron_trigger
from ..errors import AudienceSyncError, ConfigError, LockHeld
from ..run.sync import run_sync
from .attempts import Attempt, attempt_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledJob:
    """One schedule and the (destination, computation) pairs it syncs; ``None`` filters mean "all"."""

    name: str
    schedule: ScheduleConfig
    destinations: tuple[str, ...] | None
    audiences: tuple[str, ...] | None

    def describe(self) -> str:
        """A short human description of the trigger, e.g. ``every 3h`` or ``cron 0 */3 * * * (UTC)``."""
        what = f"every {self.schedule.every}" if self.schedule.every else f"cron {self.schedule.cron}"
        return f"{what} ({self.schedule.timezone})"


def plan_jobs(config: Config) -> list[ScheduledJob]:
    """The jobs a config asks for; every (destination, computation) pair is covered by exactly one job.

    An audience's own ``schedule`` wins (it goes to all its destinations on it); then a destination's own
    ``schedule`` (for the computations without one); the rest runs on ``[schedule]``. ConfigError when some
    pair has no schedule at all.
    """
    jobs: list[ScheduledJob] = []
    own_comps = [c for c in config.computations if c.schedule is not None]
    rest_comps = [c for c in config.computations if c.schedule is None]
    for comp in own_comps:
        assert comp.schedule is not None
        jobs.append(ScheduledJob(f"audience:{comp.key}", comp.schedule, comp.destinations, (comp.key,)))
    own_dests = [d for d in config.destinations if d.schedule is not None]
    for dest in own_dests:
        assert dest.schedule is not None
        keys = tuple(c.key for c in rest_comps if dest.name in c.destinations)
        if keys:
            jobs.append(ScheduledJob(f"destination:{dest.name}", dest.schedule, (dest.name,), keys))
    rest_dests = [d.name for d in config.destinations if d.schedule is None]
    uncovered = [(d, c.key) for c in rest_comps for d in c.destinations if d in rest_dests]
    if uncovered:
        if not config.schedule.is_set:
            d, key = uncovered[0]
            raise ConfigError(
                f"{config.path}: schedule: {key!r} to destination {d!r} has no schedule: set `every` or `cron` "
                f"in [schedule] (or a `schedule` on the audience or destination)",
                path=config.path,
            )
        everything = not own_comps and not own_dests
        jobs.append(
            ScheduledJob(
                "default",
                config.schedule,
                None if everything else tuple(rest_dests),
                None if everything else tuple(sorted({key for _, key in uncovered})),
            )
        )
    return jobs


def trigger_for(schedule: ScheduleConfig) -> BaseTrigger:
    """The APScheduler trigger of a schedule: an interval or a crontab expression, in its time zone, with jitter."""
    tz = zoneinfo.ZoneInfo(schedule.timezone)
    jitter = round(parse_duration(schedule.jitter)) if schedule.jitter else None
    if schedule.every is not None:
        return IntervalTrigger(seconds=parse_duration(schedule.every), timezone=tz, jitter=jitter)
    assert schedule.cron is not None
    return cron_trigger(schedule.cron, tz, jitter)


AfterRun = Callable[[Attempt], None]


class SyncScheduler:
    """The scheduling loop of ``audience-sync schedule``, built from a config's :func:`plan_jobs`."""

    def __init__(
        self,
        config: Config,
        *,
        stop: threading.Event,
        after_run: AfterRun | None = None,
        run_now: bool = False,
    ) -> None:
        self.config = config
        self.stop = stop
        self.after_run = after_run
        self.jobs = plan_jobs(config)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        now = dt.datetime.now(dt.UTC)
        for job in self.jobs:
            self._scheduler.add_job(
                self._run_job,
                trigger_for(job.schedule),
                args=[job],
                id=job.name,
                name=job.name,
                **({"next_run_time": now} if run_now else {}),
            )

    def next_fire_times(self) -> dict[str, dt.datetime | None]:
        """When each job fires next (None once the scheduler stopped)."""
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def _log_next(self, name: str | None = None) -> None:
        for job_id, when in self.next_fire_times().items():
            if name is None or job_id == name:
                log.info(
                    "next run of %s at %s",
                    job_id,
                    when.isoformat() if when else "never",
                    extra={"job": job_id, "next_run_time": when.isoformat() if when else None},
                )

    def _run_job(self, job: ScheduledJob) -> None:
        if self.stop.is_set():
            return
        scope = attempt_of(self.config, job.destinations, job.audiences)
        attempt: Attempt
        log.info("scheduled run of %s starting", job.name, extra={"job": job.name})
        try:
            result = run_sync(
                self.config,
                destinations=job.destinations,
                audiences=job.audiences,
                trigger="schedule",
                stop=self.stop,
            )
            attempt = scope(result=result)
        except LockHeld as exc:
            log.warning("scheduled run of %s skipped: %s", job.name, exc, extra={"job": job.name})
            attempt = scope(error=exc)
        except AudienceSyncError as exc:
            log.error("scheduled run of %s failed: %s", job.name, exc, extra={"job": job.name})
            attempt = scope(error=exc)
        except Exception as exc:  # the schedule must outlive any one run
            log.exception("scheduled run of %s crashed", job.name, extra={"job": job.name})
            attempt = scope(error=AudienceSyncError(repr(exc)))
        if self.after_run is not None:
            self.after_run(attempt)
        if not self.stop.is_set():
            self._log_next(job.name)

    def serve(self, *, poll: float = 0.5) -> None:
        """Run the schedule until the stop event is set, then wait for the run in progress and return."""
        self._scheduler.start()
        for job in self.jobs:
            log.info("scheduled %s: %s", job.name, job.describe(), extra={"job": job.name})
        self._log_next()
        try:
            while not self.stop.wait(poll):
                pass
        finally:
            log.info("stopping: no new runs; a run in progress finishes its chunk in flight first")
            self._scheduler.shutdown(wait=True)
            log.info("scheduler stopped")


def describe_jobs(jobs: Sequence[ScheduledJob], now: dt.datetime | None = None) -> list[str]:
    """One line per job: its name, trigger, what it covers and when it would fire next after ``now``."""
    now = now or dt.datetime.now(dt.UTC)
    lines = []
    for job in jobs:
        dests = ", ".join(job.destinations) if job.destinations else "all destinations"
        comps = ", ".join(job.audiences) if job.audiences else "all audiences and traits"
        fire = trigger_for(job.schedule).get_next_fire_time(None, now)
        when = fire.isoformat(timespec="seconds") if fire else "never"
        lines.append(f"{job.name}: {job.describe()}: {comps} -> {dests}; next at {when}")
    return lines
