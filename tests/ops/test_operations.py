"""Operations around runs: Prometheus metrics, alerts once per incident, retention, JSON logs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from audience_sync.commands import prune_history
from audience_sync.config import Config
from audience_sync.errors import AudienceSyncError, LockHeld
from audience_sync.ops.attempts import Attempt
from audience_sync.ops.postrun import after_run
from audience_sync.run.sync import RunResult, run_sync
from tests.fakes.capture import CaptureServer
from tests.fakes.gist import FakeGist
from tests.harness import Harness
from tests.processes import run_cli

BIG = {f"u{i:03d}": f"{i}@x.io" for i in range(200)}


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values[(f"audience_sync_{name}", tuple(sorted(labels.items())))]


def attempt_for(config: Config, result: RunResult | None = None, error: AudienceSyncError | None = None) -> Attempt:
    return Attempt(tuple(d.name for d in config.destinations), tuple(c.key for c in config.computations), result, error)


def sync_and_after(config: Config, metrics_file: Path | None = None, **kwargs: Any) -> RunResult:
    result = run_sync(config, **kwargs)
    after_run(config, attempt_for(config, result), metrics_file=metrics_file)
    return result


# ---- metrics ----


def test_metrics_file_tells_status_counts_pending_and_sizes(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": None})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5)})
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\nmax_retries = 0\n'
        + harness.jsonl_destination()
        + harness.audience("VIP")
        + harness.trait("Score")
    )
    config = harness.config(body, environ={"K": gist.api_key})
    path = harness.tmp_path / "metrics" / "audience_sync.prom"
    before = dt.datetime.now(dt.UTC).timestamp()
    sync_and_after(config, path)
    values = samples(path)
    assert metric(values, "last_attempt_exit_code") == 0
    assert metric(values, "last_attempt_timestamp_seconds") >= before
    for dest in ("gist", "file"):
        for key in ("vip", "score"):
            assert metric(values, "last_run_success", destination=dest, computation=key) == 1
            assert metric(values, "last_run_status", destination=dest, computation=key, status="succeeded") == 1
            assert metric(values, "last_success_timestamp_seconds", destination=dest, computation=key) >= before
        assert metric(values, "pending_changes", destination=dest) == 0
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="failed") == 0
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="entered") == 2
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="sent") == 2
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="skipped") == 1  # no email
    assert metric(values, "last_run_changes", destination="file", computation="vip", kind="sent") == 3
    assert metric(values, "audience_size", destination="gist", computation="vip") == 2
    assert metric(values, "audience_size", destination="file", computation="vip") == 3
    assert metric(values, "audience_size", destination="file", computation="score") == 1

    # the next run: Gist answers 500 to everything, so its change stays pending; the file sink takes it
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u4": "d@x.io"})
    gist.fail_next(10, 500)
    result = sync_and_after(config, path)
    assert result.exit_code == 3
    values = samples(path)
    assert metric(values, "last_attempt_exit_code") == 3
    assert metric(values, "last_run_success", destination="gist", computation="vip") == 0
    assert metric(values, "last_run_status", destination="gist", computation="vip", status="partial") == 1
    assert metric(values, "pending_changes", destination="gist") == 1
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="pending") == 1
    assert metric(values, "last_success_timestamp_seconds", destination="gist", computation="vip") < metric(
        values, "last_run_timestamp_seconds", destination="gist", computation="vip"
    )
    assert metric(values, "audience_size", destination="file", computation="vip") == 3  # u3 left, u4 joined


def test_run_writes_metrics_from_the_command_line(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config_file(
        harness.jsonl_destination() + harness.audience("VIP"),
        "c.toml",
    )
    prom = harness.tmp_path / "out.prom"
    proc = run_cli("run", "--config", str(config), "--metrics-file", str(prom), cwd=harness.tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert metric(samples(prom), "last_run_changes", destination="file", computation="vip", kind="sent") == 1


def test_per_audience_runs_keep_each_others_metrics_and_dry_runs_are_left_out(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5)})
    broken = harness.audience("VIP").replace("FROM members", "FROM no_such_table")
    config = harness.config(harness.jsonl_destination() + broken + harness.trait("Score"))
    path = harness.tmp_path / "m.prom"
    scope = tuple(c.key for c in config.computations)
    with pytest.raises(AudienceSyncError):
        run_sync(config, audiences=["vip"])
    after_run(config, Attempt(("file",), ("vip",), error=AudienceSyncError("vip failed")), metrics_file=path)
    sync_and_after(config, path, audiences=["score"])
    values = samples(path)
    assert metric(values, "last_run_success", destination="file", computation="vip") == 0  # not hidden by score
    assert metric(values, "last_run_success", destination="file", computation="score") == 1
    assert metric(values, "last_run_changes", destination="file", computation="score", kind="sent") == 1
    assert metric(values, "last_run_changes", destination="file", computation="vip", kind="sent") == 0

    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 6), "u2": ("b@x.io", 1)})
    dry = run_sync(config, audiences=["score"], dry_run=True)
    after_run(config, Attempt(("file",), scope, dry, dry_run=True), metrics_file=path)
    values = samples(path)
    assert metric(values, "pending_changes", destination="file") == 0  # a dry run's rows are not a backlog
    assert metric(values, "last_run_changes", destination="file", computation="score", kind="sent") == 1


# ---- alerts ----


def posts(receiver: CaptureServer) -> list[str]:
    return [json.loads(r["body"])["text"] for r in receiver.requests]


def test_a_guard_incident_is_alerted_once_and_its_recovery_once(harness: Harness, receiver: CaptureServer) -> None:
    harness.warehouse.set_members("VIP", BIG)
    body = '[alerts]\nwebhook_url_env = "HOOK"\n' + harness.jsonl_destination() + harness.audience("VIP")
    config = harness.config(body, environ={"HOOK": receiver.url + "/hooks/T0/B0/secret"})
    sync_and_after(config)
    assert posts(receiver) == []  # a healthy run says nothing

    harness.warehouse.set_members("VIP", dict(list(BIG.items())[:10]))  # 95 % would exit: held
    assert sync_and_after(config).status == "failed"
    assert sync_and_after(config).status == "failed"  # still held: the same incident, no second alert
    alerts = posts(receiver)
    assert len(alerts) == 1
    assert "vip held back for file (190 changes)" in alerts[0] and "would lose 190 of 200" in alerts[0]
    assert receiver.requests[0]["path"] == "/hooks/T0/B0/secret"
    assert receiver.requests[0]["headers"]["Content-Type"] == "application/json"

    assert sync_and_after(config, force=True).status == "succeeded"  # forced through: the guard recovered
    alerts = posts(receiver)
    assert len(alerts) == 2 and "recovered" in alerts[1] and "guard file (vip)" in alerts[1]
    sync_and_after(config)
    assert len(posts(receiver)) == 2  # nothing more to say


def test_failed_runs_and_failure_shares_open_incidents(harness: Harness, receiver: CaptureServer) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    gist = FakeGist().start()
    try:
        body = (
            '[alerts]\nwebhook_url_env = "HOOK"\nmax_failed_share = 0.4\n'
            f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
            "max_retries = 0\nconcurrency = 1\n" + harness.audience("VIP")
        )
        wrong = harness.config(body, environ={"HOOK": receiver.url, "K": "wrong"})
        assert sync_and_after(wrong).status == "failed"  # credentials refused
        assert len(posts(receiver)) == 1 and "run 1 failed" in posts(receiver)[0]
        assert "refused our credentials" in posts(receiver)[0]

        right = harness.config(body, environ={"HOOK": receiver.url, "K": gist.api_key})
        gist.fail_next(1, 500)  # one of two changes stays pending: 50 % > 40 %
        result = sync_and_after(right)
        assert result.status == "partial"
        assert len(posts(receiver)) == 3
        assert "1 of 2 changes to gist failed or stay pending" in posts(receiver)[1]
        assert "recovered" in posts(receiver)[2] and "run_failed gist (vip)" in posts(receiver)[2]

        assert sync_and_after(right).status == "succeeded"
        assert (
            len(posts(receiver)) == 4
            and "recovered" in posts(receiver)[3]
            and "failures gist (vip)" in posts(receiver)[3]
        )
    finally:
        gist.stop()


def test_an_alert_the_webhook_did_not_take_is_posted_after_the_next_run(harness: Harness) -> None:
    receiver = CaptureServer(status=503).start()
    try:
        harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
        config = harness.config(
            '[alerts]\nwebhook_url_env = "HOOK"\n' + harness.jsonl_destination() + harness.audience("VIP"),
            environ={"HOOK": receiver.url},
        )
        failure = AudienceSyncError("source query failed: no such table: members_v2")
        after_run(config, attempt_for(config, error=failure))
        assert len(receiver.requests) == 1  # tried, refused with 503
        receiver.status = 200
        after_run(config, attempt_for(config, error=failure))
        assert (
            len(receiver.requests) == 2
            and "no such table: members_v2" in json.loads(receiver.requests[1]["body"])["text"]
        )
        after_run(config, attempt_for(config, error=LockHeld("another run holds the lock", holder="h")))
        assert len(receiver.requests) == 2  # a held lock is not an incident, nor a recovery
    finally:
        receiver.stop()


def test_a_failing_audience_job_is_not_recovered_by_another_audience_job(
    harness: Harness, receiver: CaptureServer
) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5)})
    broken = harness.audience("VIP").replace("FROM members", "FROM no_such_table")
    config = harness.config(
        '[alerts]\nwebhook_url_env = "HOOK"\n' + harness.jsonl_destination() + broken + harness.trait("Score"),
        environ={"HOOK": receiver.url},
    )
    for _ in range(3):  # the vip job fails, the score job succeeds, cycle after cycle
        try:
            run_sync(config, audiences=["vip"])
        except AudienceSyncError as exc:
            after_run(config, Attempt(("file",), ("vip",), error=exc))
        result = run_sync(config, audiences=["score"])
        after_run(config, Attempt(("file",), ("score",), result=result))
    alerts = posts(receiver)
    assert len(alerts) == 1 and "no_such_table" in alerts[0]  # once, and never "recovered" by the score job


def test_the_webhook_url_never_reaches_the_logs(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    receiver = CaptureServer(status=404).start()
    try:
        config = harness.config(
            '[alerts]\nwebhook_url_env = "HOOK"\n' + harness.jsonl_destination() + harness.audience("VIP"),
            environ={"HOOK": receiver.url + "/services/T0/B0/SUPERSECRET"},
        )
        with caplog.at_level("DEBUG", logger="audience_sync"):
            after_run(config, attempt_for(config, error=AudienceSyncError("boom")))
        assert len(receiver.requests) == 1
        assert "HTTP 404" in caplog.text and "SUPERSECRET" not in caplog.text
    finally:
        receiver.stop()


# ---- retention ----


def age_runs(state_url: str, days: int) -> None:
    engine = create_engine(state_url)
    with engine.begin() as conn:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        if engine.dialect.name == "sqlite":
            old = old.replace(tzinfo=None)
        conn.execute(text("UPDATE sync_runs SET started_at = :t, finished_at = :t"), {"t": old})
    engine.dispose()


def table_counts(state_url: str) -> dict[str, Any]:
    engine = create_engine(state_url)
    with engine.connect() as conn:
        out: dict[str, Any] = {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("sync_runs", "diffs", "snapshot")
        }
        out["statuses"] = dict(conn.execute(text("SELECT status, count(*) FROM diffs GROUP BY status")).all())
    engine.dispose()
    return out


def test_prune_deletes_old_history_but_never_the_snapshot_or_pending_changes(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
        "max_retries = 0\nconcurrency = 1\n" + harness.audience("VIP")
    )
    config = harness.config(body, environ={"K": gist.api_key})
    run_sync(config)  # run 1: both sent
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u3": "c@x.io"})
    gist.fail_next(2, 500)
    assert run_sync(config).status == "partial"  # run 2: u2 exit and u3 enter stay pending
    age_runs(harness.state_url, days=100)
    before = table_counts(harness.state_url)
    assert before["statuses"] == {"sent": 2, "pending": 2}

    dry = prune_history(config, dt.timedelta(days=90), dry_run=True)
    assert (dry.diffs, dry.runs) == (2, 1)
    assert table_counts(harness.state_url) == before

    done = prune_history(config, dt.timedelta(days=90), batch_size=1)  # batches of one row
    assert (done.diffs, done.runs) == (2, 1)
    after = table_counts(harness.state_url)
    assert after["statuses"] == {"pending": 2} and after["sync_runs"] == 1 and after["snapshot"] == before["snapshot"]
    assert prune_history(config, dt.timedelta(days=90)).diffs == 0  # nothing left to prune

    result = run_sync(config)  # the pending changes still go out
    assert (
        result.status == "succeeded"
        and gist.properties("u3") == {"vip": True}
        and gist.properties("u2") == {"vip": False}
    )


def test_superseded_history_is_pruned_and_the_newest_run_always_kept(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
        "max_retries = 0\nconcurrency = 1\n" + harness.audience("VIP")
    )
    config = harness.config(body, environ={"K": gist.api_key})
    gist.fail_next(2, 500)
    assert run_sync(config).status == "partial"  # run 1: both pending
    assert run_sync(config).status == "succeeded"  # run 2: run 1's rows superseded, both sent
    age_runs(harness.state_url, days=100)
    done = prune_history(config, dt.timedelta(days=90))
    assert (done.diffs, done.runs) == (2, 1)  # run 1 whole; run 2 is the newest: its run row stays
    counts = table_counts(harness.state_url)
    assert counts["sync_runs"] == 1 and counts["snapshot"] == 2
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    assert run_sync(config).run_id == 3  # ids are never handed out again (SQLite would reuse a pruned max)


def test_recent_history_is_kept_and_retention_prunes_after_each_run(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config('[retention]\nkeep = "30d"\n' + harness.jsonl_destination() + harness.audience("VIP"))
    sync_and_after(config)
    assert prune_history(config, dt.timedelta(days=90)).diffs == 0
    age_runs(harness.state_url, days=31)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    sync_and_after(config)  # prunes run 1 after itself
    counts = table_counts(harness.state_url)
    assert counts["sync_runs"] == 1 and counts["statuses"] == {"sent": 1}


def test_a_stop_while_reading_sources_sends_nothing_and_marks_the_run(harness: Harness) -> None:
    import threading

    from audience_sync.errors import RunStopped

    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunStopped, match=r"asked to stop .* while reading vip; nothing was sent") as err:
        run_sync(config, stop=stop)
    assert err.value.exit_code == 3
    assert harness.new_calls() == []
    counts = table_counts(harness.state_url)
    assert counts["diffs"] == 0 and counts["snapshot"] == 0
    assert run_sync(config).counts["sent"] == 1  # the next run starts over


def test_prune_command_refuses_a_bad_duration(tmp_path: Path) -> None:
    proc = run_cli("prune", "--older-than", "ninety days", cwd=tmp_path)
    assert proc.returncode == 2 and "--older-than" in proc.stderr and "Traceback" not in proc.stderr


# ---- logs ----


def test_json_logs_carry_run_id_destination_counts_and_durations(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config_file(
        harness.jsonl_destination() + harness.audience("VIP"),
        "c.toml",
    )
    args = ["run", "--config", str(config), "--log-format", "json", "--log-level", "info"]
    proc = run_cli(*args, cwd=harness.tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON object
    delivered = next(line for line in lines if line.get("destination") == "file")
    assert delivered["run_id"] == 1 and delivered["attempted"] == 1 and delivered["duration_seconds"] >= 0
    finished = next(line for line in lines if "counts" in line)
    assert finished["status"] == "succeeded" and finished["counts"]["sent"] == 1 and "time" in finished
