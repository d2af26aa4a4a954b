"""The membership ledger: ``members KEY --at T`` answers exactly who held a key at every past instant (checked
against the snapshot as it was at that instant), across failures, skips, a resync, ``prune`` and the upgrade of
a database that already holds runs; ``user USER_ID`` tells one user's whole story. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

from alembic import command
from sqlalchemy import create_engine, text

from audience_sync.config import Config
from audience_sync.errors import ConfigError
from audience_sync.inspection import ledger as inspect
from audience_sync.store import retention
from audience_sync.store.migrate import alembic_config, upgrade
from audience_sync.store.schema import utcnow
from tests.cli.test_cli import cli
from tests.fakes.gist import FakeGist, Fault
from tests.harness import Harness

KEY_ENV = {"GIST_API_KEY": "gist-test-key"}
POOL = [f"u{i:02}" for i in range(30)]


def gist_config(harness: Harness, gist: FakeGist, extra: str = "") -> Config:
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        "max_retries = 0\n" + harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score") + extra
    )
    return harness.config(body, environ=KEY_ENV)


def churn(harness: Harness, rng: random.Random) -> None:
    harness.warehouse.set_members(
        "VIP", {u: (None if int(u[1:]) % 9 == 0 else f"{u}@x.io") for u in rng.sample(POOL, rng.randint(12, 20))}
    )
    harness.warehouse.set_trait(
        "Score", {u: (f"{u}@x.io", rng.choice([1, 2.5, "x", None])) for u in rng.sample(POOL, 12)}
    )


def now_members(config: Config, key: str) -> set[tuple[str, str, Any]]:
    return {(r["destination"], r["user_id"], json.dumps(r["value"])) for r in inspect.members(config, key)}


def at_members(config: Config, key: str, at: dt.datetime) -> set[tuple[str, str, Any]]:
    return {(r["destination"], r["user_id"], json.dumps(r["value"])) for r in inspect.members(config, key, at=at)}


def test_members_at_every_past_instant_match_the_snapshot_then(harness: Harness, gist: FakeGist) -> None:
    config = gist_config(harness, gist)
    rng = random.Random(14)
    gist.user_faults["u04"] = Fault(422)  # failed: never acknowledged, so never a member at gist
    seen: list[tuple[dt.datetime, set[Any], set[Any]]] = []
    for round_ in range(6):
        churn(harness, rng)
        if round_ == 3:
            gist.user_faults["u07"] = Fault(503)  # pending for this run only
        harness.run(config, mode="resync" if round_ == 4 else "incremental")
        gist.user_faults.pop("u07", None)
        seen.append((utcnow(), now_members(config, "vip"), now_members(config, "score")))
    assert any(d == "gist" for _, vip, _ in seen for d, _, _ in vip)
    before_first = seen[0][0] - dt.timedelta(hours=1)
    assert at_members(config, "vip", before_first) == set()
    for at, vip, score in seen:
        assert at_members(config, "vip", at) == vip
        assert at_members(config, "score", at) == score
    assert all(u != "u04" for _, vip, _ in seen for d, u, _ in vip if d == "gist")

    # prune at the third run's instant: from there on the ledger still answers exactly; before, it refuses
    engine = create_engine(harness.state_url)
    try:
        # a cut-off half way between the second and third runs' instants
        result = retention.prune(engine, utcnow() - seen[2][0] + (seen[2][0] - seen[1][0]) / 2)
    finally:
        engine.dispose()
    assert result.ledger > 0
    for at, vip, score in seen[2:]:
        assert at_members(config, "vip", at) == vip
        assert at_members(config, "score", at) == score
    try:
        inspect.members(config, "vip", at=seen[0][0])
    except ConfigError as exc:
        assert "answers from" in str(exc)
    else:
        raise AssertionError("an instant before the horizon was answered")


def test_members_at_and_user_on_the_command_line(harness: Harness, gist: FakeGist) -> None:
    big = {f"b{i:03}": f"b{i}@x.io" for i in range(200)}
    harness.warehouse.set_members("Big", big)
    harness.warehouse.set_members("VIP", {"u1": "u1@x.io", "u2": None, "u3": "u3@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("u1@x.io", 5)})
    body = (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        "max_retries = 0\n" + harness.audience("VIP") + harness.trait("Score") + harness.audience("Big")
    )
    path = harness.config_file(body)
    env = {**KEY_ENV}
    config = harness.config(body, environ=env)  # the runs in this process, the questions on the command line
    gist.user_faults["u3"] = Fault(422, {"errors": [{"code": "parameter_invalid", "message": "bad contact"}]})
    assert harness.run(config).status == "partial"  # u3 failed
    first = utcnow()
    gist.user_faults["u1"] = Fault(503)
    harness.warehouse.set_members("VIP", {"u2": None, "u3": "u3@x.io"})
    harness.warehouse.set_members("Big", {**dict(list(big.items())[:20]), "u1": "u1@x.io"})  # 180 of 200 leave
    harness.warehouse.set_trait("Score", {"u1": ("u1@x.io", 6)})
    held = harness.run(config)
    assert held.status == "failed" and held.counts["held"], held.error  # the guard held Big

    at = cli(
        "members",
        "vip",
        "--at",
        first.isoformat(),
        "--format",
        "json",
        "--config",
        str(path),
        cwd=harness.tmp_path,
        env=env,
    )
    assert at.returncode == 0, at.stderr
    rows = json.loads(at.stdout)
    assert [(r["user_id"], r["value"]) for r in rows] == [("u1", True)] and rows[0]["since"]
    now = json.loads(
        cli("members", "vip", "--format", "json", "--config", str(path), cwd=harness.tmp_path, env=env).stdout
    )
    assert [r["user_id"] for r in now] == ["u1"]  # the exit is still pending
    bad = cli("members", "nope", "--at", first.isoformat(), "--config", str(path), cwd=harness.tmp_path, env=env)
    assert bad.returncode == 2 and "unknown audience or trait key 'nope'" in bad.stderr

    story = cli("user", "u1", "--format", "json", "--config", str(path), cwd=harness.tmp_path, env=env)
    assert story.returncode == 0, story.stderr
    got = json.loads(story.stdout)
    assert {(c["computation_key"], json.dumps(c["value"])) for c in got["current"]} == {("vip", "true"), ("score", "5")}
    statuses = {(h["computation_key"], h["status"], json.dumps(h["new_value"])) for h in got["history"]}
    assert ("vip", "sent", "true") in statuses and ("vip", "pending", "false") in statuses
    assert ("score", "pending", "6") in statuses
    assert ("big", "held", "true") in statuses  # the guard holds the whole audience, entries too
    pending = [h for h in got["history"] if h["status"] == "pending"]
    assert all(h["reason"] for h in pending), pending
    skipped = json.loads(
        cli("user", "u2", "--format", "json", "--config", str(path), cwd=harness.tmp_path, env=env).stdout
    )
    # recorded once, when the user became unreachable, not again on every run
    assert [(h["status"], bool(h["reason"])) for h in skipped["history"]] == [("skipped", True)]
    assert skipped["current"] == []
    failed = json.loads(
        cli("user", "u3", "--format", "json", "--config", str(path), cwd=harness.tmp_path, env=env).stdout
    )
    assert failed["history"][0]["status"] == "failed" and "bad contact" in failed["history"][0]["reason"]
    held = json.loads(
        cli("user", "b150", "--format", "json", "--config", str(path), cwd=harness.tmp_path, env=env).stdout
    )
    assert [h["status"] for h in held["history"]] == ["sent", "held"]
    table = cli("user", "b150", "--config", str(path), cwd=harness.tmp_path, env=env)
    assert table.returncode == 0 and "held" in table.stdout


def test_upgrading_a_database_with_runs_fills_the_ledger(harness: Harness, gist: FakeGist) -> None:
    config = gist_config(harness, gist)
    rng = random.Random(3)
    gist.user_faults["u05"] = Fault(422)
    seen = []
    for _ in range(4):
        churn(harness, rng)
        harness.run(config)
        seen.append((utcnow(), now_members(config, "vip"), now_members(config, "score")))
    engine = create_engine(harness.state_url)
    columns = "destination, computation_key, user_id, old_value, new_value, run_id, diff_id, source"

    def rows() -> list[Any]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT {columns} FROM membership_ledger ORDER BY id"))]

    live = rows()
    assert live and all(r[-1] == "sent" for r in live)
    cfg = alembic_config(engine)
    try:
        command.downgrade(cfg, "0012")
        upgrade(engine)
        assert sorted(rows(), key=lambda r: r[6]) == sorted(live, key=lambda r: r[6])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ledger_horizon")).scalar_one() == 0
        for at, vip, score in seen:
            assert at_members(config, "vip", at) == vip and at_members(config, "score", at) == score

        # the acknowledged changes of the first two runs were pruned before the upgrade: the snapshot fills in
        command.downgrade(cfg, "0012")
        with engine.begin() as conn:
            first_runs = [r for (r,) in conn.execute(text("SELECT id FROM sync_runs ORDER BY id LIMIT 2"))]
            conn.execute(text(f"DELETE FROM diffs WHERE run_id IN ({first_runs[0]}, {first_runs[1]})"))
        upgrade(engine)
        assert at_members(config, "vip", seen[-1][0]) == seen[-1][1]
        assert at_members(config, "score", seen[-1][0]) == seen[-1][2]
        try:
            inspect.members(config, "vip", at=seen[0][0])
        except ConfigError as exc:
            assert "answers from" in str(exc)
        else:
            raise AssertionError("history lost before the upgrade was answered")
    finally:
        engine.dispose()
