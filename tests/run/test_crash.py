"""Crash safety, proven: runs of the real CLI are killed with SIGKILL at many seeded moments of a run, the source
changing in between; a final run without faults must leave the destination holding exactly the truth, with
nothing lost and re-sends bounded by what was in flight. SIGTERM must stop a run cleanly and mark it.

Every moment is reached through the run's own progress, never a wall-clock delay: before delivery, the log line
that starts a phase (the run's first request is held meanwhile, so the kill lands before anything is sent); during
delivery, the fake Segment holds a chosen request until the process is dead, so the kill lands exactly there.
"""

from __future__ import annotations

import json
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.fakes.segment import FakeSegment
from tests.harness import Harness
from tests.processes import Cli
from tests.schema_clone import MIGRATE_FOR_REAL

pytestmark = pytest.mark.slow  # two dozen real runs, each killed at its moment

CHUNK = 20  # changes per chunk: with concurrency 1 this is what can be in flight when the process dies
BATCH = 5  # messages per request: a chunk is BATCH_PER_CHUNK requests
BATCH_PER_CHUNK = CHUNK // BATCH
USERS = [f"u{i:03d}" for i in range(150)]

#: the log line (``--log-level debug``) that opens each phase before delivery
PHASES = {
    "staging the audience": r"run \d+ \(incremental\): ",  # the run row is open and its lock held
    "staging the trait": r"run \d+: staged vip ",
    "the diff": r"run \d+: staged score ",
    "before the first send": r"run \d+: diff stored",
}


@dataclass(frozen=True)
class Moment:
    """Where a run is killed: after a log line (``phase``), or at its ``request``-th request to Segment, held
    before (``accepted=False``) or after (``accepted=True``, the answer is lost) Segment took it."""

    phase: str | None = None
    request: int | None = None
    accepted: bool = False

    def describe(self) -> str:
        if self.phase is not None:
            return self.phase
        assert self.request is not None
        where = {0: "first of a chunk", BATCH_PER_CHUNK - 1: "last of a chunk"}.get(self.request % BATCH_PER_CHUNK, "")
        return f"request {self.request} ({where or 'mid-chunk'}, {'answer lost' if self.accepted else 'not taken'})"


def kill_plan(rng: random.Random) -> list[Moment]:
    """24 seeded moments spread over a run's phases: the first run dies migrating the new state database, then
    each phase before delivery three times, and delivery at chunk boundaries and in the middle of chunks."""
    later = [Moment(phase=phase) for phase in PHASES for _ in range(3)]
    for _ in range(3):
        chunk = rng.randrange(0, 4)
        # the whole chunk taken, but its last answer lost: all of it is in doubt
        later.append(Moment(request=chunk * BATCH_PER_CHUNK + BATCH_PER_CHUNK - 1, accepted=True))
        # the previous chunk recorded and this one marked in flight, nothing of it sent yet
        later.append(Moment(request=(chunk + 1) * BATCH_PER_CHUNK))
    for _ in range(5):
        later.append(Moment(request=rng.randrange(0, 5 * BATCH_PER_CHUNK), accepted=rng.random() < 0.5))
    rng.shuffle(later)
    return [Moment(phase="migrating"), *later]


def write_config(harness: Harness, segment: FakeSegment) -> Path:
    path = harness.tmp_path / "crash.toml"
    # a held request must never time out and be retried: the process is killed while it waits
    path.write_text(
        f'[state]\nurl = "{harness.state_url}"\n[source]\nurl = "{harness.warehouse.url}"\n'
        f"[guard]\nmax_exit_share = 1.0\n"
        f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
        f'endpoint = "{segment.url}"\nconcurrency = 1\nchunk_size = {CHUNK}\nmax_batch_messages = {BATCH}\n'
        f"timeout = 600\n" + Harness.audience("VIP") + Harness.trait("Score")
    )
    return path


def start(config: Path, *extra: str, env: dict[str, str] | None = None) -> Cli:
    return Cli(
        ["run", "--json", "--config", str(config), *extra],
        cwd=config.parent,
        env={"SEGMENT_WRITE_KEY": "segment-write-key", **(env or {})},
    )


def kill_at(moment: Moment, config: Path, segment: FakeSegment) -> None:
    """Start a run, kill it with SIGKILL at ``moment``, and check the kill, not an exit, ended it."""
    first = segment.gates.count  # the number the run's first request will get
    if moment.phase is not None:
        gate = segment.hold(first)  # nothing goes out before the kill lands
        line = r"upgrading state database" if moment.phase == "migrating" else PHASES[moment.phase]
        # killed while migrating, the new database is migrated for real: a clone would be made in one step
        env = MIGRATE_FOR_REAL if moment.phase == "migrating" else None
        with start(config, "--log-level", "debug", env=env) as cli:
            cli.wait_for_line(line)
            code = cli.kill()
    else:
        assert moment.request is not None
        gate = segment.hold(first + moment.request, accepted=moment.accepted)
        with start(config) as cli:
            cli.wait_for_gate(gate)
            code = cli.kill()
    segment.unhold(gate)
    assert code == -signal.SIGKILL, (moment.describe(), code, cli.stderr)


def test_sigkill_at_many_moments_loses_nothing(harness: Harness, segment: FakeSegment) -> None:
    rng = random.Random(20261129)
    config = write_config(harness, segment)
    plan = kill_plan(rng)
    for moment in plan:
        harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in USERS if rng.random() < 0.6})
        harness.warehouse.set_trait("Score", {u: (f"{u}@x.io", rng.randint(0, 4)) for u in USERS if rng.random() < 0.7})
        kill_at(moment, config, segment)

    cli = start(config)
    assert cli.wait() == 0, cli.stderr
    summary = json.loads(cli.stdout)
    assert summary["status"] == "succeeded"

    # the destination holds exactly the truth of the last source state
    with harness.warehouse._db() as db:
        members = {r[0] for r in db.execute("SELECT user_id FROM members WHERE audience = 'VIP'")}
        scores = dict(db.execute("SELECT user_id, value FROM trait_values WHERE trait = 'Score'").fetchall())
    for user in USERS:
        profile = segment.profiles.get(user, {})
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
    assert sent_ids <= set(segment.messages)
    assert running == 0
    # every kill after the run row was opened left a run the next one called abandoned, and every kill during
    # delivery left a chunk in flight that the next run put in doubt
    delivering = [m for m in plan if m.request is not None]
    assert abandoned == len(plan) - 1, [m.describe() for m in plan]
    assert mid_delivery == len(delivering), [m.describe() for m in plan]

    # re-sends stay within what was in flight: one chunk per run killed during delivery
    assert segment.duplicates <= CHUNK * len(delivering)


def test_sigterm_finishes_the_request_in_flight_and_marks_the_run(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {f"u{i:03d}": f"{i}@x.io" for i in range(200)})
    config = write_config(harness, segment)
    gate = segment.hold(1)  # the second request of the first chunk is in flight
    with start(config) as cli:
        cli.wait_for_gate(gate)
        cli.signal(signal.SIGTERM)
        cli.wait_for_line(r"SIGTERM: finishing")  # the handler ran: the run knows it must stop
        gate.release()
        assert cli.wait() == 3, cli.stderr
    summary = json.loads(cli.stdout)
    # the request before and the one in flight were finished and recorded, not the rest of their chunk
    assert summary["status"] == "partial" and summary["counts"]["sent"] == 2 * BATCH
    assert "Traceback" not in cli.stderr
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        pending_errors = {r[0] for r in conn.execute(text("SELECT error FROM diffs WHERE status = 'pending'"))}
        running = conn.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'running'")).scalar_one()
        locks = conn.execute(text("SELECT count(*) FROM run_locks")).scalar_one()
    engine.dispose()
    assert running == 0 and locks == 0
    assert len(pending_errors) == 1 and "asked to stop" in pending_errors.pop()
    assert len(segment.messages) == 2 * BATCH  # recorded exactly what was delivered

    cli = start(config)
    assert cli.wait() == 0, cli.stderr
    assert len(segment.profiles) == 200


def test_a_killed_run_s_staging_is_deleted_by_the_run_that_marks_it_abandoned(
    harness: Harness, segment: FakeSegment
) -> None:
    """Nothing else deletes a killed run's staged rows: left, they took space for good, and kept every later run
    from emptying staging whole."""
    config = write_config(harness, segment)
    harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in USERS[:40]})
    harness.warehouse.set_trait("Score", {u: (f"{u}@x.io", 1) for u in USERS[:30]})
    kill_at(Moment(phase="the diff"), config, segment)  # the audience and the trait staged, nothing diffed
    engine = create_engine(harness.state_url)
    staged = text("SELECT (SELECT count(*) FROM staging) + (SELECT count(*) FROM staging_skips)")
    try:
        with engine.connect() as conn:
            assert conn.execute(staged).scalar_one() > 0
        cli = start(config)
        assert cli.wait() == 0, cli.stderr
        assert json.loads(cli.stdout)["status"] == "succeeded"
        with engine.connect() as conn:
            assert conn.execute(staged).scalar_one() == 0
            killed = conn.execute(text("SELECT error FROM sync_runs ORDER BY id")).scalars().all()
    finally:
        engine.dispose()
    assert killed[0].startswith("abandoned") and len(killed) == 2
