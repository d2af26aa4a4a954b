"""The command line as scripts and people use it: real processes, exit codes, JSON/CSV output, no tracebacks."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from audience_sync.config import parse_config
from audience_sync.run.sync import run_sync
from audience_sync.store.migrate import upgrade
from tests.harness import Harness, Warehouse
from tests.processes import run_cli
from tests.schema_clone import MIGRATE_FOR_REAL

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None, fresh: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m audience_sync ARGS`` in a process of its own (forked ready-imported unless ``fresh``)."""
    return run_cli(*args, cwd=cwd, env=env, input=stdin, fresh=fresh)


def migrated(state_url: str) -> None:
    """Bring a new state database to the newest schema in this process, where it is a clone (tests/schema_clone.py)
    instead of every migration run for real by the first command (0.1 s of CPU on SQLite, more on PostgreSQL).
    The tests on ``fresh_project`` (and the demo) keep the commands' own migration of a new database."""
    engine = create_engine(state_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture
def fresh_project(tmp_path: Path, state_url: str, warehouse: Warehouse) -> Path:
    """A project whose state database does not exist yet: its first command creates and migrates it."""
    warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    warehouse.set_trait("Score", {"u1": ("a@x.io", 3)})
    (tmp_path / "audience_sync.toml").write_text(
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{warehouse.url}"\n'
        + Harness(tmp_path, state_url, warehouse).jsonl_destination()
        + Harness.audience("VIP")
        + Harness.trait("Score")
    )
    return tmp_path


@pytest.fixture
def project(fresh_project: Path, state_url: str) -> Path:
    """A project whose state database is already at the newest schema."""
    migrated(state_url)
    return fresh_project


def run_json(project: Path, *args: str) -> tuple[int, Any]:
    proc = cli(*args, "--config", "audience_sync.toml", cwd=project)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.mark.slow
def test_run_diff_runs_in_json_and_csv(fresh_project: Path) -> None:
    project = fresh_project
    code, summary = run_json(project, "run", "--json")
    assert code == 0
    assert summary["status"] == "succeeded" and summary["counts"]["entered"] == 3 and summary["counts"]["sent"] == 3

    code, rows = run_json(project, "diff", "--format", "json")
    assert code == 0
    assert {
        "run_id",
        "destination",
        "computation_key",
        "user_id",
        "change",
        "old_value",
        "new_value",
        "status",
        "error",
    } <= set(rows[0])
    assert sorted((r["computation_key"], r["user_id"], r["new_value"]) for r in rows) == [
        ("score", "u1", 3),
        ("vip", "u1", True),
        ("vip", "u2", True),
    ]

    code, rows = run_json(project, "diff", "--audience", "score", "--format", "json")
    assert [r["user_id"] for r in rows] == ["u1"]

    proc = cli("diff", "--format", "csv", "--config", "audience_sync.toml", cwd=project)
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(table) == 3 and table[0]["new_value"] in ("3", "true")

    code, runs = run_json(project, "runs", "--format", "json")
    assert runs[0]["run_id"] == summary["run_id"] and runs[0]["mode"] == "incremental"
    assert {"started_at", "finished_at", "counts", "status"} <= set(runs[0])
    assert {"entered", "exited", "changed", "sent", "failed", "skipped"} <= set(runs[0]["counts"])

    code, again = run_json(project, "run", "--json")
    assert code == 0 and again["counts"]["sent"] == 0


def test_dry_run_resync_audiences_members(project: Path) -> None:
    code, dry = run_json(project, "run", "--dry-run", "--json")
    assert code == 0 and dry["mode"] == "dry_run" and dry["counts"]["sent"] == 0
    assert not (project / "file.jsonl").exists()

    proc = cli("resync", "--config", "audience_sync.toml", cwd=project, stdin="")
    assert proc.returncode == 2 and "--yes" in proc.stderr

    code, resync = run_json(project, "resync", "--yes", "--json")
    assert code == 0 and resync["mode"] == "resync" and resync["counts"]["sent"] == 3

    code, overview = run_json(project, "audiences", "--format", "json")
    assert [(a["key"], a["class"], a["status"], a["sizes"]) for a in overview] == [
        ("vip", "audience", "active", {"file": 2}),
        ("score", "trait", "active", {"file": 1}),
    ]

    code, members = run_json(project, "members", "vip", "--format", "json")
    assert [(m["user_id"], m["value"]) for m in members] == [("u1", True), ("u2", True)]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("run", "--destination", "nope"), 2, "no destination named 'nope' (configured: file)"),
        (("run", "--audience", "nope"), 2, "no audience or trait with key 'nope'"),
        (("diff", "--run", "99"), 2, "there is no run 99"),
        (("run", "--bogus"), 2, "No such option"),
    ],
)
def test_usage_errors_exit_2(project: Path, args: tuple[str, ...], code: int, message: str) -> None:
    proc = cli(*args, "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_config_error_exits_2_and_sends_nothing(project: Path) -> None:
    (project / "bad.toml").write_text(
        (project / "audience_sync.toml").read_text() + "\n[[destinations]]\n"
        'name = "g"\ntype = "gist"\napi_key_env = "NO_SUCH_VAR_FOR_TEST"\n'
    )
    proc = cli("run", "--config", "bad.toml", cwd=project)
    assert proc.returncode == 2
    assert "bad.toml: destinations[1] ('g').api_key_env: environment variable NO_SUCH_VAR_FOR_TEST" in proc.stderr
    assert "Traceback" not in proc.stderr and not (project / "file.jsonl").exists()
    proc = cli("run", cwd=project, env={"AUDIENCE_SYNC_CONFIG": str(project / "missing.toml")})
    assert proc.returncode == 2 and "missing.toml: config file not found" in proc.stderr


def test_source_error_exits_1_naming_the_audience(project: Path) -> None:
    text = (project / "audience_sync.toml").read_text()
    (project / "audience_sync.toml").write_text(
        text + '[[audiences]]\nname = "Broken"\nsql = "SELECT email FROM members"\n'
    )
    proc = cli("run", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 1
    assert "audience 'Broken' (broken): the query has no 'user_id' column (columns: email)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (project / "file.jsonl").exists()


def test_lock_held_exits_1_naming_the_holder(project: Path, state_url: str) -> None:
    from audience_sync.store.lock import run_lock

    engine = create_engine(state_url)
    with run_lock(engine, ["file"]):
        proc = cli("run", "--config", "audience_sync.toml", cwd=project)
    engine.dispose()
    assert proc.returncode == 1
    assert "another run holds the lock for destination:file" in proc.stderr and f"pid {os.getpid()}" in proc.stderr


def test_db_upgrade(fresh_project: Path) -> None:
    from alembic.script import ScriptDirectory

    from audience_sync.store.migrate import migrations_dir

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    # the command that applies the migrations applies them all, not a clone of what they make
    proc = cli("db", "upgrade", "--config", "audience_sync.toml", cwd=fresh_project, env=MIGRATE_FOR_REAL)
    assert proc.returncode == 0 and f"schema revision {head}" in proc.stdout


@pytest.mark.slow
def test_demo_from_a_fresh_directory(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    proc = cli("demo", cwd=tmp_path, fresh=True)  # a newcomer's first command: a fresh interpreter
    assert proc.returncode == 0, proc.stderr
    assert "First sync" in proc.stdout and "Incremental sync" in proc.stdout
    calls = [json.loads(line) for line in (tmp_path / "out" / "demo.jsonl").read_text().splitlines()]
    keys = {k for c in calls for k in c["traits"] if k != "email"}
    assert keys == {
        "order_completed_last_30days",
        "high_value_ltv_500",
        "cafe_vips",
        "newsletter_subscribers",
        "lifetime_value",
        "favorite_category",
        "repeat_buyers_last_30_days",
        "coffee_browsers_not_buying",
        "orders_last_90_days",
        "most_viewed_category",
        "categories_bought",
    }
    runs = json.loads(cli("runs", "--format", "json", cwd=tmp_path).stdout)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[0]["counts"]["sent"] < runs[1]["counts"]["sent"]  # the second run sends only changes


@pytest.mark.slow
def test_wait_takes_the_lock_once_the_other_run_releases_it(project: Path, state_url: str) -> None:
    import datetime as dt

    from audience_sync.store.lock import HeldLock
    from tests.processes import Cli

    engine = create_engine(state_url)
    other = HeldLock(engine, ["destination:file"], dt.timedelta(minutes=5)).start()
    args = ["run", "--wait", "--json", "--log-level", "info", "--config", "audience_sync.toml"]
    with Cli(args, cwd=project) as waiting:
        try:
            waiting.wait_for_line(r"waiting for the run lock")  # it found the lock held: now the other run finishes
        finally:
            other.stop()
        assert waiting.wait() == 0, waiting.stderr
    engine.dispose()
    assert json.loads(waiting.stdout)["counts"]["sent"] == 3

    proc = cli("run", "--wait", "0", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 0


MARKUP_IDS = ("[/]", "[bold]x", "[link=x]", "[red]")


def test_markup_in_ids_names_and_errors_is_shown_literally(tmp_path: Path, warehouse: Warehouse, gist: Any) -> None:
    """Ids, names and a destination's error text that look like rich markup never crash a table or line."""
    warehouse.set_members("VIP", {uid: f"{i}@x.io" for i, uid in enumerate(MARKUP_IDS)})
    state = f"sqlite:///{tmp_path / 'state.db'}"
    audience = Harness.audience("VIP").replace('name = "VIP"', 'name = "VIP [/]"\nkey = "vip"', 1)
    (tmp_path / "audience_sync.toml").write_text(
        f'[state]\nurl = "{state}"\n[source]\nurl = "{warehouse.url}"\n'
        + Harness(tmp_path, state, warehouse).jsonl_destination()
        + f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
        + audience
    )
    migrated(state)
    env = {"K": gist.api_key}
    # the destination refuses our key with a body that is markup: the run's summary quotes it
    gist.fail_next(1, 401, {"errors": [{"code": "unauthorized", "message": "bad token [/] [bold]"}]})
    proc = cli("run", "--config", "audience_sync.toml", cwd=tmp_path, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "refused our credentials (HTTP 401: bad token [/] [bold])" in proc.stdout

    for args in (("diff",), ("members", "vip"), ("audiences",), ("runs",), ("diff", "--status", "pending")):
        proc = cli(*args, "--config", "audience_sync.toml", cwd=tmp_path, env=env)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.returncode == 0, (args, proc.stderr)
        shown = proc.stdout
        # a long cell wraps onto continuation lines whose other cells are blank: read it as one line
        flat = " ".join(re.sub("[│┃]", " ", shown).split())
        if args == ("diff",) or args[0] == "members":
            assert all(f" {uid} " in shown for uid in MARKUP_IDS), (args, shown)
        if args[0] == "audiences":
            assert "VIP [/]" in shown
        if args[0] == "runs" or "pending" in args:
            assert "(HTTP 401: bad token [/] [bold])" in flat, (args, shown)


def test_resync_names_its_filters_and_reports_unknown_users(project: Path) -> None:
    assert run_sync(parse_config((project / "audience_sync.toml").read_text())).exit_code == 0  # in-process
    proc = cli(
        "resync", "--config", "audience_sync.toml", "--user", "u1", "--destination", "file", cwd=project, stdin=""
    )
    assert proc.returncode == 2 and "every audience and trait of user(s) u1 to file" in proc.stderr
    proc = cli("resync", "--config", "audience_sync.toml", "--user", "ghost", "--yes", cwd=project)
    assert proc.returncode == 2 and "unknown user id(s) 'ghost'" in proc.stderr


def test_secrets_are_needed_only_by_the_destinations_a_command_uses(project: Path) -> None:
    """Read-only commands need no API key; `run --destination X` needs X's secrets only."""
    (project / "two.toml").write_text(
        (project / "audience_sync.toml").read_text() + "\n[[destinations]]\n"
        'name = "g"\ntype = "gist"\napi_key_env = "NO_SUCH_VAR_FOR_TEST"\n'
    )
    proc = cli("run", "--destination", "file", "--json", "--config", "two.toml", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["sent"] == 3
    read_only: tuple[tuple[str, ...], ...] = (
        ("runs",),
        ("diff",),
        ("audiences",),
        ("members", "vip"),
        ("user", "u1"),
        ("report", "--out", "r.html"),
    )
    for args in read_only:
        proc = cli(*args, "--config", "two.toml", cwd=project)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "NO_SUCH_VAR_FOR_TEST" not in proc.stderr
    using_g: tuple[tuple[str, ...], ...] = (
        ("run",),
        ("run", "--destination", "g"),
        ("resync", "--destination", "g", "--yes"),
    )
    for args in using_g:
        proc = cli(*args, "--config", "two.toml", cwd=project)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "environment variable NO_SUCH_VAR_FOR_TEST (named by `api_key_env`) is not set" in proc.stderr


def test_pending_changes_say_why_per_destination(tmp_path: Path, warehouse: Warehouse, gist: Any) -> None:
    """Changes left pending come with each destination's last error, in the summary and in --json."""
    from tests.fakes.gist import Fault

    warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    state = f"sqlite:///{tmp_path / 'state.db'}"
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    closed_port = gone.getsockname()[1]
    gone.close()  # nothing listens there: every call is refused
    (tmp_path / "audience_sync.toml").write_text(
        f'[state]\nurl = "{state}"\n[source]\nurl = "{warehouse.url}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
        "max_retries = 2\n"
        f'[[destinations]]\nname = "down"\ntype = "gist"\napi_key_env = "K"\n'
        f'endpoint = "http://127.0.0.1:{closed_port}"\nmax_retries = 0\n' + Harness.audience("VIP")
    )
    gist.user_faults["u2"] = Fault(429, headers={"Retry-After": "0"})
    migrated(state)
    env = {"K": gist.api_key}
    proc = cli("run", "--json", "--config", "audience_sync.toml", cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["counts"]["destinations"]["gist"]["pending"] == 1
    gist_error = summary["destinations"]["gist"]["last_error"]
    assert "HTTP 429" in gist_error and "(after 2 retries)" in gist_error, gist_error
    assert "ConnectError" in summary["destinations"]["down"]["last_error"]

    gist.user_faults.clear()
    gist.user_faults["u2"] = Fault(429, headers={"Retry-After": "0"})
    proc = cli("run", "--config", "audience_sync.toml", cwd=tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "gist: 1 pending; last error: " in flat and "(after 2 retries)" in flat, proc.stdout
    assert "down: 2 pending; last error: " in flat and "ConnectError" in flat, proc.stdout


def test_json_logs_carry_the_summary_and_leave_stdout_to_terminals(project: Path) -> None:
    """The cron recipe (`--log-format json`, output appended to a file) writes JSON lines only: the run's summary
    is a record at the default level, and no table."""
    proc = cli("run", "--log-format", "json", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    (summary,) = [r for r in records if r["logger"] == "audience_sync.run.summary"]
    assert summary["level"] == "INFO" and summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert summary["counts"]["sent"] == 3 and summary["per_destination"]["file"]["sent"] == 3
    assert summary["run_id"] == 1

    proc = cli("run", "--quiet", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr
    proc = cli("run", "--config", "audience_sync.toml", cwd=project)
    assert "run 3 (incremental): succeeded" in proc.stdout
    proc = cli("run", "--json", "--log-format", "json", "--config", "audience_sync.toml", cwd=project)
    assert json.loads(proc.stdout)["run_id"] == 4


def test_a_hold_shows_in_the_held_column_and_its_message_once(tmp_path: Path, warehouse: Warehouse) -> None:
    """The guard holds an audience at two destinations: the summary has a `held` column, and the reason is said
    once, naming both destinations."""
    big = {f"u{i:03d}": f"{i}@x.io" for i in range(200)}
    warehouse.set_members("VIP", big)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    harness = Harness(tmp_path, state, warehouse)
    (tmp_path / "audience_sync.toml").write_text(
        f'[state]\nurl = "{state}"\n[source]\nurl = "{warehouse.url}"\n'
        + harness.jsonl_destination("a")
        + harness.jsonl_destination("b")
        + Harness.audience("VIP")
    )
    assert harness.run(parse_config((tmp_path / "audience_sync.toml").read_text())).exit_code == 0  # in-process
    warehouse.set_members("VIP", dict(list(big.items())[:50]))
    proc = cli("run", "--config", "audience_sync.toml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "destination" in line)
    assert header.split("┃")[-2].strip() == "held", header
    cells = [line.split("│") for line in proc.stdout.splitlines() if line.count("│") > 2]
    rows = {c[1].strip(): c[-2].strip() for c in cells}
    assert rows.get("a") == rows.get("b") == "150" and "300" in proc.stdout, proc.stdout
    flat = " ".join(proc.stdout.split())
    assert flat.count("nothing of it was sent") == 1 and flat.count("--force") == 1, proc.stdout
    assert "at destination 'a'" in flat and "at destination 'b'" in flat
    code, diffs = run_json(tmp_path, "diff", "--status", "held", "--format", "json")
    assert code == 0 and len(diffs) == 300 and len({d["error"] for d in diffs}) == 1


def test_shared_options_before_the_command_and_the_small_inspection_fixes(project: Path, warehouse: Warehouse) -> None:
    """`--config`/log options before the command; `diff --user/--change/--limit`; numeric ids in numeric order;
    times with their UTC offset; `members` of an unknown key exits 2; top-level help lines whole."""
    warehouse.set_members("VIP", {"10": "a@x.io", "9": "b@x.io", "100": "c@x.io", "x": "d@x.io"})
    proc = cli("--config", "audience_sync.toml", "--log-format", "json", "run", "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert all(json.loads(line) for line in proc.stderr.splitlines())  # the group's --log-format applied
    proc = cli("--config", "nope.toml", "runs", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 0, proc.stderr  # the command's own value wins

    code, rows = run_json(project, "diff", "--audience", "vip", "--format", "json")
    assert [r["user_id"] for r in rows] == ["9", "10", "100", "x"]
    assert rows[0]["created_at"].endswith("+00:00")
    code, rows = run_json(project, "diff", "--user", "10", "--user", "x", "--change", "entered", "--format", "json")
    assert code == 0 and sorted((r["user_id"], r["computation_key"]) for r in rows) == [("10", "vip"), ("x", "vip")]
    code, rows = run_json(project, "diff", "--limit", "2", "--format", "json")
    assert len(rows) == 2
    code, rows = run_json(project, "members", "vip", "--format", "json")
    assert [r["user_id"] for r in rows] == ["9", "10", "100", "x"]
    proc = cli("members", "vip", "--config", "audience_sync.toml", cwd=project)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", proc.stdout), proc.stdout

    proc = cli("members", "nope", "--config", "audience_sync.toml", cwd=project)
    assert proc.returncode == 2 and "unknown audience or trait key 'nope'" in proc.stderr, proc.stderr
    assert "(configured: " in proc.stderr, proc.stderr  # the keys it could have meant

    (project / "typo.toml").write_text((project / "audience_sync.toml").read_text() + "max_retrys = 3\n")
    proc = cli("runs", "--config", "typo.toml", cwd=project)
    assert proc.returncode == 2 and "unknown key (did you mean `max_retries`?)" in proc.stderr, proc.stderr

    proc = cli("--help", cwd=project, env={"COLUMNS": "80"})
    flat = " ".join(proc.stdout.split())
    assert "the latest failures, the pending outbox and the guard's holds." in flat, proc.stdout
    assert "..." not in proc.stdout.split("Commands:")[1]


def test_the_lock_names_its_run_from_the_moment_it_is_acquired(
    tmp_path: Path, state_url: str, warehouse: Warehouse, gist: Any
) -> None:
    """While run 1 waits on its first request (long before its lease is renewed), a second run is refused naming
    run 1."""
    import threading

    warehouse.set_members("VIP", {"u1": "a@x.io"})
    text = (
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{warehouse.url}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "K"\nendpoint = "{gist.url}"\n'
        + Harness.audience("VIP")
    )
    (tmp_path / "audience_sync.toml").write_text(text)
    trap = gist.trap(lambda _path, _body: True, hold=True)
    first = threading.Thread(target=run_sync, args=(parse_config(text, environ={"K": gist.api_key}),))
    first.start()
    try:
        trap.wait()
        proc = cli("run", "--config", "audience_sync.toml", cwd=tmp_path, env={"K": gist.api_key})
    finally:
        gist.release_all()
        first.join(60)
    assert proc.returncode == 1, proc.stderr
    assert "another run holds the lock for destination:gist" in proc.stderr and "run 1, pid" in proc.stderr
