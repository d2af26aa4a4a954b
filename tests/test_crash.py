"""Crash safety, proven: runs of the real CLI are killed with SIGKILL at many seeded moments against a slow
destination, the source changing in between; a final run without faults must leave the destination holding
exactly the truth, with nothing lost and re-sends bounded by what was in flight. SIGTERM must stop a run
cleanly and mark it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import Harness
from tests.fakes.segment import FakeSegment

CHUNK = 20  # changes per chunk: with concurrency 1 this is what can be in flight when the process dies
KILLS = 24


@pytest.fixture
def slow_segment() -> Iterator[FakeSegment]:
    server = FakeSegment(delay=0.02).start()
    try:
        yield server
    finally:
        server.stop()


def write_config(harness: Harness, segment: FakeSegment) -> Path:
    path = harness.tmp_path / "crash.toml"
    path.write_text(
        f'[state]\nurl = "{harness.state_url}"\n[source]\nurl = "{harness.warehouse.url}"\n'
        f"[guard]\nmax_exit_share = 1.0\n"
        f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
        f'endpoint = "{segment.url}"\nconcurrency = 1\nchunk_size = {CHUNK}\nmax_batch_messages = 5\n'
        + Harness.audience("VIP")
        + Harness.trait("Score")
    )
    return path


def start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "run", "--json", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SEGMENT_WRITE_KEY": "segment-write-key"},
    )


def test_sigkill_at_many_moments_loses_nothing(harness: Harness, slow_segment: FakeSegment) -> None:
    rng = random.Random(20261129)
    users = [f"u{i:03d}" for i in range(150)]
    config = write_config(harness, slow_segment)
    killed_at: list[float] = []
    for kill in range(KILLS):
        members = {u: f"{u}@x.io" for u in users if rng.random() < 0.6}
        harness.warehouse.set_members("VIP", members)
        harness.warehouse.set_trait("Score", {u: (f"{u}@x.io", rng.randint(0, 4)) for u in users if rng.random() < 0.7})
        proc = start(config)
        delay = rng.uniform(0.2, 2.5)  # from interpreter start-up to the end of delivery
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed_at.append(delay if proc.returncode == -signal.SIGKILL else -1.0)
        assert kill >= 0

    proc = start(config)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["status"] == "succeeded"

    # the destination holds exactly the truth of the last source state
    with harness.warehouse._db() as db:
        members = {r[0] for r in db.execute("SELECT user_id FROM members WHERE audience = 'VIP'")}
        scores = dict(db.execute("SELECT user_id, value FROM trait_values WHERE trait = 'Score'").fetchall())
    for user in users:
        profile = slow_segment.profiles.get(user, {})
        assert profile.get("vip", False) is (user in members), user
        assert profile.get("score") == scores.get(user), user

    # nothing recorded as delivered that Segment did not take, and no run left running
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        sent_ids = {r[0] for r in conn.execute(text("SELECT message_id FROM diffs WHERE status = 'sent'"))}
        running = conn.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'running'")).scalar_one()
        abandoned = conn.execute(text("SELECT count(*) FROM sync_runs WHERE error LIKE 'abandoned%'")).scalar_one()
        mid_delivery = conn.execute(
            text("SELECT count(DISTINCT run_id) FROM diffs WHERE error LIKE 'in flight%'")
        ).scalar_one()
    engine.dispose()
    assert sent_ids <= set(slow_segment.messages)
    assert running == 0
    # the kills landed all over a run: before the run row, during staging or the diff, and mid-delivery
    assert abandoned >= 10 and mid_delivery >= 3, (abandoned, mid_delivery)

    # re-sends stay within what was in flight: one chunk per killed run
    really_killed = [k for k in killed_at if k > 0]
    assert len(really_killed) >= 20, killed_at
    assert slow_segment.duplicates <= CHUNK * len(really_killed)


def test_sigterm_finishes_the_chunk_in_flight_and_marks_the_run(harness: Harness, slow_segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {f"u{i:03d}": f"{i}@x.io" for i in range(200)})
    config = write_config(harness, slow_segment)
    proc = start(config)
    deadline = time.monotonic() + 30
    while not slow_segment.requests and time.monotonic() < deadline:  # wait until delivery has begun
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    summary = json.loads(out)
    assert summary["status"] == "partial" and 0 < summary["counts"]["sent"] < 200
    assert "SIGTERM" in err and "Traceback" not in err
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        pending_errors = {r[0] for r in conn.execute(text("SELECT error FROM diffs WHERE status = 'pending'"))}
        running = conn.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'running'")).scalar_one()
        locks = conn.execute(text("SELECT count(*) FROM run_locks")).scalar_one()
    engine.dispose()
    assert running == 0 and locks == 0
    assert len(pending_errors) == 1 and "asked to stop" in pending_errors.pop()
    assert len(slow_segment.messages) == summary["counts"]["sent"]  # recorded exactly what was delivered

    proc = start(config)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(slow_segment.profiles) == 200
