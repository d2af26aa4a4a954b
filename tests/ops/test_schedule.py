"""`audience-sync schedule` as a service: a real subprocess on a 1-second schedule against a fake Gist,
the source changing under it, stopped by SIGTERM; and the job planning behind it."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import ScheduleConfig
from audience_sync.errors import ConfigError
from audience_sync.ops.scheduler import plan_jobs, trigger_for
from tests.fakes.gist import FakeGist
from tests.fakes.segment import FakeSegment
from tests.harness import Harness
from tests.processes import Cli


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def start_schedule(config: Path, *extra: str, env: dict[str, str]) -> Cli:
    return Cli(["schedule", "--config", str(config), "--log-format", "json", *extra], cwd=config.parent, env=env)


def gist_schedule(harness: Harness, gist: FakeGist, *, every: str) -> Path:
    """A config file: the VIP audience to the fake Gist (key from $GIST_API_KEY) every ``every``."""
    return harness.config_file(
        f'[schedule]\nevery = "{every}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        + Harness.audience("VIP"),
        "schedule.toml",
    )


def state_counts(state_url: str) -> dict[str, int]:
    engine = create_engine(state_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM sync_runs GROUP BY status")).all()
        locks = conn.execute(text("SELECT count(*) FROM run_locks")).scalar_one()
    engine.dispose()
    return {**{str(status): int(n) for status, n in rows}, "locks": int(locks)}


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_schedule_delivers_source_changes_and_stops_cleanly_on_sigterm(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = gist_schedule(harness, gist, every="1s")
    with start_schedule(config, env={"GIST_API_KEY": gist.api_key}) as proc:
        wait_for(lambda: gist.properties("u1") == {"vip": True})  # the first scheduled run
        harness.warehouse.set_members("VIP", {"u2": "b@x.io"})  # u1 leaves, u2 joins
        wait_for(lambda: gist.properties("u2") == {"vip": True} and gist.properties("u1") == {"vip": False})
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0, proc.stderr
    err = proc.stderr
    assert "Traceback" not in err
    counts = state_counts(harness.state_url)
    assert counts.get("running", 0) == 0 and counts["locks"] == 0
    assert counts["succeeded"] >= 2
    logs = json_lines(err)
    assert logs, err
    nexts = [line for line in logs if line["message"].startswith("next run of default at")]
    assert len(nexts) >= 2  # at start, and after each run (the last may be cut short by SIGTERM)
    assert all(dt.datetime.fromisoformat(line["next_run_time"]) for line in nexts)
    finished = [line for line in logs if "run_id" in line and "counts" in line]
    assert finished and all(line["status"] == "succeeded" for line in finished)
    # only changes were sent: u1 once in, once out; u2 once in
    bodies = [json.loads(r["body"]) for r in gist.requests]
    assert [(b["user_id"], b["custom_properties"]["vip"]) for b in bodies] == [
        ("u1", True),
        ("u1", False),
        ("u2", True),
    ] or sorted((b["user_id"], b["custom_properties"]["vip"]) for b in bodies) == [
        ("u1", False),
        ("u1", True),
        ("u2", True),
    ]


@pytest.mark.slow
def test_sigterm_during_a_scheduled_run_ends_it_partial_and_exits_zero(harness: Harness) -> None:
    segment = FakeSegment().start()
    try:
        harness.warehouse.set_members("VIP", {f"u{i:03d}": f"{i}@x.io" for i in range(300)})
        config = harness.config_file(
            '[schedule]\nevery = "1h"\n'
            + '[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
            + f'endpoint = "{segment.url}"\nconcurrency = 1\nchunk_size = 10\nmax_batch_messages = 5\n'
            + Harness.audience("VIP"),
            "schedule.toml",
        )
        gate = segment.hold(2)  # the first chunk (two requests) recorded, the second's first request in flight
        with start_schedule(config, "--now", env={"SEGMENT_WRITE_KEY": segment.write_key}) as proc:
            proc.wait_for_gate(gate)  # mid-delivery of the run started by --now
            proc.signal(signal.SIGTERM)
            proc.wait_for_line(r"SIGTERM: finishing")  # the scheduler knows it must stop
            gate.release()
            assert proc.wait() == 0, proc.stderr
    finally:
        segment.stop()
    counts = state_counts(harness.state_url)
    assert counts == {"partial": 1, "locks": 0}, counts
    assert len(segment.profiles) == 15  # the request in flight was finished, the rest left for the next run


@pytest.mark.slow
def test_a_failed_run_is_logged_and_the_schedule_goes_on(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = gist_schedule(harness, gist, every="1s")
    with start_schedule(config, env={"GIST_API_KEY": "wrong-key"}) as proc:
        wait_for(lambda: len(gist.requests) >= 2)  # refused twice: two runs, the schedule went on
        proc.signal(signal.SIGINT)
        assert proc.wait() == 0, proc.stderr
    failed = [line for line in json_lines(proc.stderr) if line.get("status") == "failed"]
    assert len(failed) >= 2 and "refused our credentials" in failed[0]["message"]
    assert state_counts(harness.state_url)["failed"] >= 2


# ---- planning (no processes) ----


def test_every_pair_is_covered_by_exactly_one_job(harness: Harness) -> None:
    config = harness.config(
        '[schedule]\nevery = "3h"\n'
        + harness.jsonl_destination("a")
        + harness.jsonl_destination("b").replace('type = "jsonl"', 'type = "jsonl"\nschedule = { every = "15m" }')
        + harness.audience("VIP")
        + harness.audience("Churn Risk").replace("sql =", 'schedule = { cron = "0 * * * *" }\nsql =')
        + harness.trait("Score")
    )
    jobs = {j.name: j for j in plan_jobs(config)}
    assert set(jobs) == {"audience:churn_risk", "destination:b", "default"}
    assert jobs["audience:churn_risk"].destinations == ("a", "b")
    assert jobs["destination:b"].audiences == ("vip", "score")
    assert jobs["default"].destinations == ("a",) and jobs["default"].audiences == ("score", "vip")
    covered = [
        (d, k)
        for j in jobs.values()
        for k in j.audiences or ()
        for d in j.destinations or ()
        if d in config.computation(k).destinations
    ]
    assert sorted(covered) == sorted({(d, c.key) for c in config.computations for d in c.destinations})


def test_without_per_item_schedules_one_job_runs_everything(harness: Harness) -> None:
    config = harness.config('[schedule]\ncron = "0 */3 * * *"\n' + harness.jsonl_destination() + harness.audience("V"))
    (job,) = plan_jobs(config)
    assert job.destinations is None and job.audiences is None  # a full run: retires removed keys


def test_no_schedule_is_a_config_error_naming_the_pair(harness: Harness) -> None:
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    with pytest.raises(ConfigError, match="'vip' to destination 'file' has no schedule"):
        plan_jobs(config)


@pytest.mark.parametrize(
    ("expr", "weekdays"),
    [
        ("0 9 * * 1", {"Mon"}),
        ("0 9 * * 0", {"Sun"}),
        ("0 9 * * 7", {"Sun"}),
        ("0 9 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 9 * * 5-7", {"Fri", "Sat", "Sun"}),
        ("0 9 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
        ("0 9 * * sat,sun", {"Sat", "Sun"}),
    ],
)
def test_cron_weekdays_mean_what_they_mean_in_a_crontab(expr: str, weekdays: set[str]) -> None:
    trigger = trigger_for(ScheduleConfig(cron=expr))
    fire, seen = dt.datetime(2026, 11, 29, tzinfo=dt.UTC), set()  # a Sunday
    for _ in range(14):
        nxt = trigger.get_next_fire_time(None, fire + dt.timedelta(seconds=1))
        assert nxt is not None
        fire = nxt
        seen.add(fire.strftime("%a"))
    assert seen == weekdays


def test_a_cron_restricting_both_days_is_refused() -> None:
    from audience_sync.config import parse_config

    with pytest.raises(ConfigError, match="restricts both the day of month and the day of week"):
        parse_config('[schedule]\ncron = "0 9 1 * 1"\n', path="c.toml")


def test_a_per_destination_job_runs_in_process_and_stops(harness: Harness, gist: FakeGist) -> None:
    import threading

    from sqlalchemy import create_engine as make_engine

    from audience_sync.ops.scheduler import SyncScheduler

    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(
        f'[[destinations]]\nname = "gist-production-eu"\ntype = "gist"\napi_key_env = "K"\n'
        f'endpoint = "{gist.url}"\nschedule = {{ every = "1h" }}\n' + harness.audience("VIP"),
        environ={"K": gist.api_key},
    )
    stop = threading.Event()
    attempts: list[Any] = []
    service = SyncScheduler(config, stop=stop, after_run=attempts.append, run_now=True)
    assert [j.name for j in service.jobs] == ["destination:gist-production-eu"]
    thread = threading.Thread(target=service.serve, kwargs={"poll": 0.05})
    thread.start()
    try:
        wait_for(lambda: bool(attempts))
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert attempts[0].result is not None and attempts[0].result.status == "succeeded", attempts[0]
    assert gist.properties("u1") == {"vip": True}
    engine = make_engine(harness.state_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT trigger FROM sync_runs")).scalar_one() == "schedule"
    engine.dispose()


def test_cron_fires_in_its_time_zone_and_jitter_stays_within_bounds() -> None:
    berlin = trigger_for(ScheduleConfig(cron="0 3 * * *", timezone="Europe/Berlin"))
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    fire = berlin.get_next_fire_time(None, now)
    assert fire is not None and fire.astimezone(dt.UTC) == dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.UTC)
    jittered = trigger_for(ScheduleConfig(every="1h", jitter="5m"))
    fires = [jittered.get_next_fire_time(now, now) for _ in range(50)]
    offsets = {(f - now).total_seconds() for f in fires if f is not None}
    assert all(3600 <= o <= 3600 + 300 for o in offsets) and len(offsets) > 1  # a delay of 0 to 5 minutes


def fire_times(schedule: ScheduleConfig, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Every fire time in ``[start, end)``, asked as the scheduler asks: the next after the previous one."""
    trigger = trigger_for(schedule)
    fires: list[dt.datetime] = []
    previous, now = None, start
    while (fire := trigger.get_next_fire_time(previous, now)) is not None and fire < end:
        fires.append(fire)
        previous = now = fire
    return fires


def local(fires: list[dt.datetime]) -> list[str]:
    return [f.isoformat(timespec="minutes") for f in fires]


@pytest.mark.parametrize(
    ("cron", "zone", "day", "expected"),
    [
        # autumn: 02:30 happens twice in Berlin; a fixed-time job fires at the first only, as cron does
        ("30 2 * * *", "Europe/Berlin", "2026-10-25", ["2026-10-25T02:30+02:00"]),
        ("0,30 2 * * *", "Europe/Berlin", "2026-10-25", ["2026-10-25T02:00+02:00", "2026-10-25T02:30+02:00"]),
        ("30 1 * * *", "America/New_York", "2026-11-01", ["2026-11-01T01:30-04:00"]),
        # spring: 02:30 does not happen; a fixed-time job fires once, right after the jump
        ("30 2 * * *", "Europe/Berlin", "2026-03-29", ["2026-03-29T03:00+02:00"]),
        ("0,30 2 * * *", "Europe/Berlin", "2026-03-29", ["2026-03-29T03:00+02:00"]),
        ("30 2 * * *", "America/New_York", "2026-03-08", ["2026-03-08T03:00-04:00"]),
        # a job whose minute or hour is `*` fires by the clock: at both passes of a repeated hour, not in a gap
        (
            "*/30 2 * * *",
            "Europe/Berlin",
            "2026-10-25",
            ["2026-10-25T02:00+02:00", "2026-10-25T02:30+02:00", "2026-10-25T02:00+01:00", "2026-10-25T02:30+01:00"],
        ),
        ("*/30 2 * * *", "Europe/Berlin", "2026-03-29", []),
        # untouched hours of those days
        ("0 3 * * *", "Europe/Berlin", "2026-10-25", ["2026-10-25T03:00+01:00"]),
        ("15 1 * * *", "Europe/Berlin", "2026-03-29", ["2026-03-29T01:15+01:00"]),
    ],
)
def test_cron_fires_as_cron_does_on_daylight_saving_days(cron: str, zone: str, day: str, expected: list[str]) -> None:
    tz = ZoneInfo(zone)
    start = dt.datetime.fromisoformat(day).replace(tzinfo=tz)
    end = (dt.datetime.fromisoformat(day) + dt.timedelta(days=1)).replace(tzinfo=tz)
    assert local(fire_times(ScheduleConfig(cron=cron, timezone=zone), start, end)) == expected


def test_an_hourly_cron_fires_every_real_hour_across_both_clock_changes() -> None:
    berlin = ScheduleConfig(cron="0 * * * *", timezone="Europe/Berlin")
    for day, hours in (("2026-10-24T22:00:00+00:00", 25), ("2026-03-28T23:00:00+00:00", 23)):
        start = dt.datetime.fromisoformat(day)
        fires = fire_times(berlin, start, start + dt.timedelta(hours=hours))
        assert [f - start for f in fires] == [dt.timedelta(hours=h) for h in range(hours)]  # one per elapsed hour


@pytest.mark.parametrize("cron", ["30 2 * * *", "*/20 * * * *", "0 9 * * 1-5", "15 4 1 * *", "0 */3 * * *"])
def test_cron_away_from_clock_changes_fires_exactly_as_apscheduler(cron: str) -> None:
    from apscheduler.triggers.cron import CronTrigger

    tz = ZoneInfo("Europe/Berlin")
    start, end = dt.datetime(2026, 4, 1, tzinfo=tz), dt.datetime(2026, 6, 1, tzinfo=tz)  # summer time only
    minute, hour, day, month, weekday = cron.split()
    reference = CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=weekday.replace("1-5", "mon-fri"), timezone=tz
    )
    expected, previous, now = [], None, start
    while (fire := reference.get_next_fire_time(previous, now)) is not None and fire < end:
        expected.append(fire)
        previous = now = fire
    assert fire_times(ScheduleConfig(cron=cron, timezone="Europe/Berlin"), start, end) == expected
