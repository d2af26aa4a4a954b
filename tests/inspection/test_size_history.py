"""Sizes over time: every run records, per destination and key, the size the destination holds after it; checked
against the snapshot counted independently after every run of churn (failures, skips, holds, a filtered run, a
resync, a dry run, a run that dies mid-delivery), on SQLite and PostgreSQL, and across the upgrade of a database
that already holds runs."""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, event, text

from audience_sync.config import Config
from audience_sync.destinations.jsonl import JsonlSink
from audience_sync.errors import SourceError
from audience_sync.run import sync
from audience_sync.store import runs, sizes
from audience_sync.store.migrate import alembic_config, upgrade
from tests.cli.test_cli import cli
from tests.fakes.gist import FakeGist, Fault
from tests.harness import Harness

KEY_ENV = {"GIST_API_KEY": "gist-test-key"}
POOL = [f"u{i:02}" for i in range(40)]


class Died(BaseException):
    """Stands for the process dying mid-delivery (with ``sync._close_failed`` disabled: a dead process closes
    nothing on its way out)."""


def counted_sizes(engine: Engine) -> dict[tuple[str, str], int]:
    """What each destination holds, counted from the snapshot with SQL of the test's own."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT destination, computation_key, count(*) FROM snapshot WHERE "
                "(computation_key = 'vip' AND value = 'true') OR (computation_key = 'score' AND value IS NOT NULL) "
                "GROUP BY destination, computation_key"
            )
        ).all()
    return {(d, k): n for d, k, n in rows}


def changes_of(engine: Engine, run_id: int) -> dict[tuple[str, str], dict[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT destination, computation_key, change, status, count(*) FROM diffs WHERE run_id = :r "
                "GROUP BY destination, computation_key, change, status"
            ),
            {"r": run_id},
        ).all()
    out: dict[tuple[str, str], dict[str, int]] = {}
    for d, k, change, status, n in rows:
        tally = out.setdefault((d, k), {})
        if status != "skipped":  # a skipped change counts as skipped only
            tally[change] = tally.get(change, 0) + n
        tally[status] = tally.get(status, 0) + n
    return out


def recorded(engine: Engine, run_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    with engine.connect() as conn:
        return {(r["destination"], r["computation_key"]): r for r in sizes.history(conn) if r["run_id"] == run_id}


def churn(harness: Harness, rng: random.Random, *, vip: int = 20) -> None:
    """A new truth: ``vip`` members out of the pool (every seventh without an email), scores for half of them."""
    members = {u: (None if int(u[1:]) % 7 == 0 else f"{u}@x.io") for u in rng.sample(POOL, vip)}
    harness.warehouse.set_members("VIP", members)
    scored = rng.sample(POOL, 15)
    harness.warehouse.set_trait("Score", {u: (f"{u}@x.io", rng.choice([1, 2, 3, None])) for u in scored})


def two_destinations(harness: Harness, gist: FakeGist) -> Config:
    """VIP and Score to a JSONL file and to the fake Gist (no retries: a 503 stays pending)."""
    gist_dest = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        "max_retries = 0\n"
    )
    body = harness.jsonl_destination() + gist_dest + harness.audience("VIP") + harness.trait("Score")
    return harness.config(body, environ=KEY_ENV)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[set[tuple[str, str]]]]:
    """The pairs each recording counted from the snapshot (the rest were added up from the run's changes)."""
    calls: list[set[tuple[str, str]]] = []
    real = sizes._count

    def spy(conn: Any, pairs: Any) -> dict[tuple[str, str], int]:
        wanted = list(pairs)
        calls.append({(p.destination, p.key) for p in wanted})
        return real(conn, wanted)

    monkeypatch.setattr(sizes, "_count", spy)
    yield calls


def test_sizes_after_every_run_match_the_snapshot(
    harness: Harness, gist: FakeGist, counting: list[set[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = two_destinations(harness, gist)
    engine = create_engine(harness.state_url)
    gist.user_faults["u03"] = Fault(422, {"errors": [{"code": "invalid", "message": "refused"}]})  # failed for good
    gist.user_faults["u05"] = Fault(503)  # stays pending
    rng = random.Random(14)
    checked = 0

    def check(run_id: int, *, counted: bool = False) -> None:
        nonlocal checked
        truth = counted_sizes(engine)
        rows = recorded(engine, run_id)
        assert set(rows) == {(d, k) for d in ("file", "gist") for k in ("vip", "score")}
        assert {pair: r["size"] for pair, r in rows.items()} == {pair: truth.get(pair, 0) for pair in rows}
        for pair, tally in changes_of(engine, run_id).items():
            for name in sizes.TALLIES:
                assert rows[pair][name] == tally.get(name, 0), (run_id, pair, name)
        assert bool(counting[-1]) == counted, counting[-1]  # counted only after a run that recorded nothing
        checked += 1

    harness.run(config)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT max(id) FROM sync_runs")).scalar_one()
    check(first, counted=True)  # never recorded before: counted once
    for _ in range(2):
        churn(harness, rng)
        result = harness.run(config)
        assert result.status == "partial"  # u05 is pending at gist
        check(result.run_id)
    sizes_now = counted_sizes(engine)
    assert sizes_now[("file", "vip")] != sizes_now[("gist", "vip")]  # skips and failures make them differ

    harness.warehouse.set_members("VIP", {})  # an empty source: the guard holds VIP back
    held = harness.run(config)
    assert held.status == "failed" and held.counts["held"]
    check(held.run_id)
    assert recorded(engine, held.run_id)[("file", "vip")]["held"] == sizes_now[("file", "vip")]

    churn(harness, rng)
    with sqlite3.connect(harness.warehouse.path) as db:  # a second value for one user: the source fails
        db.execute("INSERT INTO trait_values VALUES ('Score', 'u00', 'u00@x.io', 99), ('Score', 'u00', 'u00@x.io', 98)")
    with pytest.raises(SourceError):
        harness.run(config)
    with engine.connect() as conn:
        failed = conn.execute(text("SELECT max(id) FROM sync_runs")).scalar_one()
    check(failed)  # recorded too (nothing changed), so the next run need not count
    churn(harness, rng)
    only_score = harness.run(config, audiences=["score"])
    rows = recorded(engine, only_score.run_id)
    assert set(rows) == {("file", "score"), ("gist", "score")}  # a filtered run records what it covered
    assert {p: r["size"] for p, r in rows.items()} == {p: counted_sizes(engine).get(p, 0) for p in rows}

    dry = harness.run(config, dry_run=True)
    assert recorded(engine, dry.run_id) == {}  # a dry run changes nothing and records nothing

    resync = harness.run(config, mode="resync")
    check(resync.run_id)

    churn(harness, rng)
    deliver = JsonlSink.deliver_messages
    calls = 0

    def dies_on_second_chunk(self: JsonlSink, messages: Any) -> Any:
        nonlocal calls
        calls += 1
        unacked = deliver(self, messages)
        if calls == 2:
            raise Died
        return unacked

    monkeypatch.setattr(JsonlSink, "deliver_messages", dies_on_second_chunk)
    close_failed = sync._close_failed
    monkeypatch.setattr(sync, "_close_failed", lambda *args, **kwargs: None)  # a killed process closes nothing
    small_chunks = harness.config(
        harness.jsonl_destination().rstrip("\n")
        + "\nchunk_size = 2\n"
        + harness.audience("VIP")
        + harness.trait("Score")
    )
    with pytest.raises(Died):
        harness.run(small_chunks)
    monkeypatch.setattr(JsonlSink, "deliver_messages", deliver)
    monkeypatch.setattr(sync, "_close_failed", close_failed)  # the next run closes as runs do
    with engine.connect() as conn:
        died = conn.execute(text("SELECT id, status FROM sync_runs ORDER BY id DESC")).first()
        assert died is not None and died.status == "running"
        assert conn.execute(
            text("SELECT count(*) FROM diffs WHERE run_id = :r AND status = 'sent'"), {"r": died.id}
        ).scalar_one()
    assert recorded(engine, died.id) == {}
    after = harness.run(config)
    check(after.run_id, counted=True)
    assert counting[-1] == {("file", "vip"), ("file", "score")}  # the pairs the dead run had been sending
    churn(harness, rng)
    check(harness.run(config).run_id)
    assert checked == 8
    engine.dispose()


def _history_rows(engine: Engine) -> dict[tuple[int, str, str], dict[str, Any]]:
    with engine.connect() as conn:
        return {(r["run_id"], r["destination"], r["computation_key"]): r for r in sizes.history(conn)}


def _comparable(row: dict[str, Any]) -> tuple[Any, ...]:
    # `pending` is what was still owed when the run closed; later runs supersede those rows, so an upgrade
    # rebuilding the history from today's rows sees them as superseded
    return (row["computation_class"], row["size"], *(row[k] for k in sizes.TALLIES if k != "pending"))


def test_upgrading_a_database_with_runs_rebuilds_their_history(harness: Harness, gist: FakeGist) -> None:
    """A database from before migration 0011 (here: real runs, then the table dropped by the downgrade) gets the
    size after each of its runs from the snapshot and the acknowledged changes, exactly as the runs would have
    recorded them, as far back as no run's changes were pruned."""
    config = two_destinations(harness, gist)
    gist.user_faults["u03"] = Fault(422)
    gist.user_faults["u05"] = Fault(503)  # pending when its run closes, superseded by the next
    rng = random.Random(11)
    engine = create_engine(harness.state_url)
    run_ids = []
    for round_ in range(6):
        churn(harness, rng, vip=12 + 3 * round_)
        run_ids.append(harness.run(config, dry_run=round_ == 4).run_id)
    live = _history_rows(engine)
    assert {r for r, _, _ in live} == set(run_ids) - {run_ids[4]}  # the dry run recorded nothing
    assert any(r["pending"] for r in live.values()) and any(r["failed"] for r in live.values())

    cfg = alembic_config(engine)
    command.downgrade(cfg, "0007")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sync_runs")).scalar_one() == 6
    upgrade(engine)
    rebuilt = _history_rows(engine)
    assert {k: _comparable(v) for k, v in rebuilt.items()} == {k: _comparable(v) for k, v in live.items()}
    with engine.connect() as conn:
        finished = {r["run_id"]: r["finished_at"] for r in runs.list_runs(conn)}
    assert all(abs((row["recorded_at"] - finished[run]).total_seconds()) < 1 for (run, _, _), row in rebuilt.items()), (
        "a rebuilt row is dated when its run finished"
    )

    # the acknowledged changes of run 3 were pruned (prune keeps a run while it has other changes)
    command.downgrade(cfg, "0007")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM diffs WHERE run_id = :r AND status = 'sent'"), {"r": run_ids[2]})
    upgrade(engine)
    rebuilt = _history_rows(engine)
    assert {r for r, _, _ in rebuilt} == {run_ids[3], run_ids[5]}  # newer than the pruned run, the dry run aside
    assert all(_comparable(row) == _comparable(live[key]) for key, row in rebuilt.items())

    # a deleted run (retention removes runs left without changes) ends the walk back the same way
    command.downgrade(cfg, "0007")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM diffs WHERE run_id = :r"), {"r": run_ids[4]})
        conn.execute(text("DELETE FROM sync_runs WHERE id = :r"), {"r": run_ids[4]})
    upgrade(engine)
    assert {r for r, _, _ in _history_rows(engine)} == {run_ids[5]}

    # and the next run adds up from the rebuilt size, without counting the snapshot
    churn(harness, rng)
    result = harness.run(config)
    with engine.connect() as conn:
        assert {r["run_id"] for r in sizes.history(conn)} == {run_ids[5], result.run_id}
    assert {p: r["size"] for p, r in recorded(engine, result.run_id).items()} == {
        p: counted_sizes(engine).get(p, 0) for p in recorded(engine, result.run_id)
    }
    engine.dispose()


def test_audiences_history_on_the_command_line(harness: Harness) -> None:
    """``audiences --history``: every key ``audiences`` lists (with its fields), retired keys too, each with its
    size per run; ``--audience`` keeps one, ``--limit`` the newest runs; a table, JSON and CSV."""
    harness.warehouse.set_members("VIP", {f"u{i}": f"u{i}@x.io" for i in range(5)})
    harness.warehouse.set_members("Old", {"u1": "u1@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("u1@x.io", 2)})
    base = harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score")
    # the runs in this process (the command line's `run` has tests of its own), the questions on the command line
    assert harness.run(harness.config(base + harness.audience("Old"))).status == "succeeded"
    harness.config_file(base)  # Old is removed: the next run retires its key
    project = harness.tmp_path
    for members in (range(3), range(1, 7)):
        harness.warehouse.set_members("VIP", {f"u{i}": f"u{i}@x.io" for i in members})
        assert harness.run(harness.config(base)).status == "succeeded"

    def run_json(*args: str) -> Any:
        proc = cli("audiences", *args, "--config", "audience_sync.toml", cwd=project)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return json.loads(proc.stdout)

    rows = run_json("--history", "--format", "json")
    assert [(r["key"], r["status"]) for r in rows] == [("vip", "active"), ("score", "active"), ("old", "retired")]
    assert {"name", "key", "class", "status", "first_synced_at", "destinations", "sizes", "history"} <= set(rows[0])
    vip = rows[0]["history"]
    assert [(p["run_id"], p["size"], p["entered"], p["exited"]) for p in vip] == [
        (1, 5, 5, 0),
        (2, 3, 0, 2),
        (3, 6, 4, 1),
    ]
    assert {"recorded_at", "started_at", "mode", "status", "destination", "changed", "sent", "held"} <= set(vip[0])
    assert [(p["run_id"], p["size"]) for p in rows[2]["history"]] == [(1, 1)]  # retired after run 1
    assert [r["key"] for r in run_json("--format", "json")] == ["vip", "score"]  # without --history: as before

    only = run_json("--history", "--audience", "VIP", "--limit", "2", "--format", "json")
    assert [r["key"] for r in only] == ["vip"] and [p["run_id"] for p in only[0]["history"]] == [2, 3]

    proc = cli("audiences", "--history", "--format", "csv", "--config", "audience_sync.toml", cwd=project)
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["run_id"], r["key"], r["size"]) for r in table if r["run_id"] == "3"] == [
        ("3", "score", "1"),
        ("3", "vip", "6"),
    ]
    proc = cli("audiences", "--history", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 0 and "sizes after each of the last 20 runs" in proc.stdout
    proc = cli("audiences", "--history", "--audience", "nope", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 2 and "no audience or trait with key 'nope'" in proc.stderr


def test_a_pair_named_twice_is_recorded_once(state_url: str) -> None:
    """``run --destination a --destination a`` covers each pair once; recording it twice would break the key."""
    engine = create_engine(state_url)
    upgrade(engine)
    pair = sizes.Pair("d", "k", "audience")
    with engine.begin() as conn:
        sizes.record(conn, 1, [pair, pair])
    with engine.connect() as conn:
        assert [(r["run_id"], r["destination"], r["computation_key"], r["size"]) for r in sizes.history(conn)] == [
            (1, "d", "k", 0)
        ]
    engine.dispose()


def test_a_run_reads_its_changes_once_as_it_closes(harness: Harness) -> None:
    """The run's counts and its sizes come from one grouped read of its diff rows (a second read of every change
    cost 0.3–1 s per million on an initial sync), and the two agree with the snapshot."""
    harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in POOL[:30]})
    harness.warehouse.set_trait("Score", {u: (f"{u}@x.io", i) for i, u in enumerate(POOL[:20])})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score"))
    grouped: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        flat = " ".join(statement.split())
        if flat.startswith("SELECT diffs.destination || ''") and "GROUP BY" in flat:  # the run's own reads
            grouped.append(flat)

    event.listen(Engine, "before_cursor_execute", note)
    try:
        result = harness.run(config)
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert result.status == "succeeded", result.error
    assert len(grouped) == 1, grouped
    assert (result.counts["entered"], result.counts["sent"]) == (50, 50)
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        recorded = {(r["destination"], r["computation_key"]): r for r in sizes.history(conn)}
    assert {k: r["size"] for k, r in recorded.items()} == counted_sizes(engine)
    assert {k: (r["entered"], r["sent"]) for k, r in recorded.items()} == {
        ("file", "vip"): (30, 30),
        ("file", "score"): (20, 20),
    }
    engine.dispose()
