"""Failure paths of a real run, driven through ``run_sync(destination_factory=...)`` by the in-process dummy
destination (destinations/dummy.py), on SQLite and on PostgreSQL: what is marked sent, failed and pending, how the
run closes, and what the snapshot holds afterwards."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from audience_sync.commands import list_diffs, list_runs
from audience_sync.config import Config
from audience_sync.destinations.dummy import DummyDestination, DummyMessageDestination, Fault
from audience_sync.run.sync import RunResult, run_sync
from audience_sync.store import history, runs
from audience_sync.store.engine import create_state_engine
from tests.harness import Harness

USERS = ("u1", "u2", "u3", "u4", "u5")
#: both delivery paths: changes as objects (Gist's), messages built by the database (Segment's, the JSONL sink's)
PATHS = [DummyDestination, DummyMessageDestination]


def five_vips(harness: Harness) -> Config:
    """Five VIPs to one destination ``file``, two changes a chunk (chunks: u1 u2 | u3 u4 | u5)."""
    harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in USERS})
    return harness.config(harness.jsonl_destination() + "chunk_size = 2\n" + harness.audience("VIP"))


def statuses(config: Config, run_id: int) -> dict[str, tuple[str, str | None]]:
    """user id -> (status, error) of the run's changes."""
    _, rows = list_diffs(config, run_id=run_id)
    return {r["user_id"]: (r["status"], r["error"]) for r in rows}


def with_status(config: Config, run_id: int, status: str) -> set[str]:
    return {u for u, (s, _) in statuses(config, run_id).items() if s == status}


def acknowledged(config: Config) -> set[str]:
    """The users the snapshot says ``file`` holds in VIP."""
    engine = create_state_engine(config.state_url)
    try:
        with engine.connect() as conn:
            return {r["user_id"] for r in history.members(conn, "vip", ["file"])}
    finally:
        engine.dispose()


def only_run(config: Config) -> dict[str, Any]:
    rows = list_runs(config)
    assert [r["status"] for r in rows].count("running") == 0
    return rows[0]


def dummy_run(config: Config, dummy: DummyDestination, **kwargs: Any) -> RunResult:
    return run_sync(config, destination_factory=dummy.build, **kwargs)


@pytest.mark.parametrize("kind", PATHS)
def test_a_permanent_refusal_fails_that_change_and_the_others_are_sent(
    harness: Harness, kind: type[DummyDestination]
) -> None:
    config = five_vips(harness)
    dummy = kind("file", by_user={"u3": Fault.refuse("no such contact")})
    result = dummy_run(config, dummy)

    assert (result.status, result.exit_code) == ("partial", 3)
    assert (result.counts["sent"], result.counts["failed"], result.counts["pending"]) == (4, 1, 0)
    assert statuses(config, result.run_id)["u3"] == ("failed", "no such contact")
    assert with_status(config, result.run_id, "sent") == {"u1", "u2", "u4", "u5"}
    assert acknowledged(config) == {"u1", "u2", "u4", "u5"}  # the snapshot advanced for the sent ones only
    assert [a.user_id for a in dummy.answers] == list(USERS) and dummy.calls == 3 and dummy.closed
    assert harness.new_calls() == []  # the configured sink was never built


@pytest.mark.parametrize("kind", PATHS)
def test_a_transient_failure_stays_pending_and_the_next_run_sends_exactly_those(
    harness: Harness, kind: type[DummyDestination]
) -> None:
    config = five_vips(harness)
    dummy = kind("file", by_user={u: Fault.transient("try later") for u in ("u2", "u4")})
    first = dummy_run(config, dummy)

    assert (first.status, first.exit_code) == ("partial", 3)
    assert with_status(config, first.run_id, "pending") == {"u2", "u4"}
    assert statuses(config, first.run_id)["u2"][1] == "try later"
    assert acknowledged(config) == {"u1", "u3", "u5"}

    second = run_sync(config)  # the configured JSONL sink this time
    assert (second.status, second.counts["sent"], second.counts["entered"]) == ("succeeded", 2, 2)
    assert {c["userId"] for c in harness.new_calls()} == {"u2", "u4"}
    assert with_status(config, first.run_id, "superseded") == {"u2", "u4"}
    assert acknowledged(config) == set(USERS)


def test_credentials_rejected_mid_chunk_stops_the_destination_and_leaves_the_rest_pending(harness: Harness) -> None:
    config = five_vips(harness)
    dummy = DummyDestination("file", by_user={"u4": Fault.stop()})
    result = dummy_run(config, dummy)

    assert (result.status, result.exit_code) == ("failed", 1)
    assert "credentials refused" in (result.destinations["file"]["error"] or "")
    # u3 was acknowledged in the chunk u4 stopped: it counts; nothing after u4 was even offered
    assert dummy.acknowledged() == {"u1", "u2", "u3"} and dummy.calls == 2
    assert with_status(config, result.run_id, "sent") == {"u1", "u2", "u3"} == acknowledged(config)
    pending = {u: e for u, (s, e) in statuses(config, result.run_id).items() if s == "pending"}
    assert set(pending) == {"u4", "u5"}
    assert all(e and "credentials refused" in e for e in pending.values())


def test_a_bug_mid_chunk_fails_the_run_and_marks_nothing_sent_that_was_not_acknowledged(harness: Harness) -> None:
    config = five_vips(harness)
    dummy = DummyDestination("file", by_user={"u4": Fault.bug("adapter bug")})
    with pytest.raises(RuntimeError, match="adapter bug"):
        dummy_run(config, dummy)

    run = only_run(config)
    assert (run["status"], run["error"]) == ("failed", "RuntimeError: adapter bug")
    assert dummy.acknowledged() == {"u1", "u2", "u3"}
    sent = with_status(config, run["run_id"], "sent")
    # u3's chunk was never recorded: acknowledged by the dummy, but not known to be, so not marked sent
    assert sent == {"u1", "u2"} == acknowledged(config)
    assert with_status(config, run["run_id"], "pending") == {"u3", "u4", "u5"}

    again = run_sync(config)  # the chunk left in flight is in doubt: its users get their value again
    assert (again.status, again.counts["sent"]) == ("succeeded", 3)
    assert {c["userId"] for c in harness.new_calls()} == {"u3", "u4", "u5"}


def test_a_stop_while_a_request_hangs_finishes_it_and_leaves_the_rest_pending(harness: Harness) -> None:
    config = five_vips(harness)
    release, stop = threading.Event(), threading.Event()
    dummy = DummyMessageDestination("file", by_user={"u3": Fault.block(release)})
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(dummy_run(config, dummy, stop=stop)))
    runner.start()
    try:
        assert dummy.blocked.wait(30)
        stop.set()  # as the SIGTERM handler does
    finally:
        release.set()
        runner.join(30)
    [result] = results
    assert (result.status, result.exit_code) == ("partial", 3)
    # the request under way (u3) finished and counts; no other started
    assert [a.user_id for a in dummy.answers] == ["u1", "u2", "u3", "u4"]
    assert isinstance(dummy.answers[-1].answer, Exception)
    assert with_status(config, result.run_id, "sent") == {"u1", "u2", "u3"} == acknowledged(config)
    assert with_status(config, result.run_id, "pending") == {"u4", "u5"}


def test_the_callers_engine_is_used_and_left_open(harness: Harness) -> None:
    config = five_vips(harness)
    engine = create_state_engine(config.state_url)
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *args: checkouts.append(args))
    pool = engine.pool
    try:
        result = run_sync(config, engine=engine, destination_factory=DummyDestination("file").build)
        assert result.status == "succeeded" and checkouts
        assert engine.pool is pool  # dispose() would have replaced the pool, closing its connections
        assert isinstance(pool, QueuePool) and pool.checkedin() > 0
        with engine.connect() as conn:  # still the caller's to use: the run's rows are there
            assert [(r["run_id"], r["status"]) for r in runs.list_runs(conn, limit=1)] == [(result.run_id, "succeeded")]
            assert {r["user_id"] for r in history.members(conn, "vip", ["file"])} == set(USERS)
    finally:
        engine.dispose()
