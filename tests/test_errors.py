"""The bad-input catalogue (docs/ERRORS.md): inputs not covered elsewhere, each with its exit code, a message
naming the culprit, no traceback, nothing lost, and a corrected run that then delivers everything."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.harness import Harness, Warehouse
from tests.processes import run_cli


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", "c.toml", cwd=project, env={"GIST_API_KEY": "k"})


@pytest.fixture
def project(tmp_path: Path, warehouse: Warehouse) -> Path:
    warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    return tmp_path


def write(project: Path, state: str, source: str, extra: str = "", out: str = "out.jsonl") -> None:
    (project / "c.toml").write_text(
        f'[state]\nurl = "{state}"\n[source]\nurl = "{source}"\n'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{out}"\n' + Harness.audience("VIP") + extra
    )


def delivered(project: Path, out: str = "out.jsonl") -> set[str]:
    path = project / out
    return {json.loads(line)["userId"] for line in path.read_text().splitlines()} if path.exists() else set()


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, *culprits: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    for culprit in culprits:
        assert culprit in proc.stderr, proc.stderr


def test_bad_values_in_the_config(project: Path, warehouse: Warehouse) -> None:
    write(
        project,
        "sqlite:///state.db",
        warehouse.url,
        '[[destinations]]\nname = "g"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nconcurrency = 0\n'
        'timeout = "soon"\n',
    )
    proc = cli(project, "run")
    assert_clean_failure(proc, 2, "destinations[1] ('g').concurrency", "destinations[1] ('g').timeout")
    assert delivered(project) == set()
    write(project, "sqlite:///state.db", warehouse.url)
    assert cli(project, "run").returncode == 0 and delivered(project) == {"u1", "u2"}


def test_unusable_state_database_url(project: Path, warehouse: Warehouse) -> None:
    write(project, "nosuchdb://x/y", warehouse.url)
    assert_clean_failure(cli(project, "run"), 2, "state database URL 'nosuchdb://x/y' is not usable")
    write(project, "postgresql+psycopg://u:hunter2@127.0.0.1:1/none", warehouse.url)
    proc = cli(project, "run")
    assert_clean_failure(proc, 1, "opening the state database", "127.0.0.1:1")
    assert "hunter2" not in proc.stderr


def test_state_database_that_is_not_a_database(project: Path, warehouse: Warehouse) -> None:
    (project / "state.db").write_text("this is not sqlite")
    write(project, "sqlite:///state.db", warehouse.url)
    assert_clean_failure(cli(project, "run"), 1, "state database sqlite:///state.db failed", "not a database")
    (project / "state.db").unlink()
    assert cli(project, "run").returncode == 0 and delivered(project) == {"u1", "u2"}


def test_state_database_schema_changed_by_hand(project: Path, warehouse: Warehouse) -> None:
    write(project, "sqlite:///state.db", warehouse.url)
    assert cli(project, "run").returncode == 0
    with sqlite3.connect(project / "state.db") as db:
        db.execute("DROP TABLE snapshot")
    assert_clean_failure(cli(project, "run"), 1, "state database", "snapshot")


def test_unreachable_source_database(project: Path) -> None:
    write(project, "sqlite:///state.db", "postgresql+psycopg://reader:pw@127.0.0.1:1/warehouse")
    proc = cli(project, "run")
    assert_clean_failure(proc, 1, "audience 'VIP' (vip): query failed")
    assert "pw@" not in proc.stderr


def test_unreadable_parquet_file(project: Path, warehouse: Warehouse) -> None:
    (project / "vip.parquet").write_bytes(b"PAR1 definitely not parquet")
    write(project, "sqlite:///state.db", warehouse.url, '[[audiences]]\nname = "Pq"\nfile = "vip.parquet"\n')
    assert_clean_failure(cli(project, "run"), 1, "audience 'Pq' (pq): file 'vip.parquet': cannot be read")
    assert delivered(project) == set()  # the other audience was not sent either: no diff was stored
    (project / "vip.parquet").unlink()
    (project / "vip.csv").write_text("user_id,email\nu9,z@x.io\n")
    write(project, "sqlite:///state.db", warehouse.url, '[[audiences]]\nname = "Pq"\nfile = "vip.csv"\n')
    assert cli(project, "run").returncode == 0 and delivered(project) == {"u1", "u2", "u9"}


def test_trait_value_without_json_form(project: Path, warehouse: Warehouse) -> None:
    """Infinity has no JSON form: that user is skipped with the reason, the run delivers everyone else (exit 0)."""
    warehouse.set_trait("Score", {"u1": ("a@x.io", float("inf")), "u2": ("b@x.io", 2)})
    write(project, "sqlite:///state.db", warehouse.url, Harness.trait("Score"))
    reason = "trait 'Score' (score): user 'u1': its value: inf has no JSON form"
    assert_clean_failure(cli(project, "run"), 0, reason)
    skipped = json.loads(cli(project, "diff", "--status", "skipped", "--format", "json").stdout)
    assert [(r["user_id"], r["computation_key"]) for r in skipped] == [("u1", "score")]
    assert reason in skipped[0]["error"]
    runs = json.loads(cli(project, "runs", "--format", "json").stdout)
    assert runs[0]["counts"]["skipped"] == 1 and runs[0]["counts"]["sources"]["score"]["skipped"] == 1
    lines = [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]
    assert [c["userId"] for c in lines if "score" in c["traits"]] == ["u2"]
    warehouse.set_trait("Score", {"u1": ("a@x.io", 1), "u2": ("b@x.io", 2)})  # corrected: u1 gets its value
    assert cli(project, "run").returncode == 0
    last = json.loads((project / "out.jsonl").read_text().splitlines()[-1])
    assert (last["userId"], last["traits"]["score"]) == ("u1", 1)


def test_unwritable_jsonl_sink_keeps_changes_pending(project: Path, warehouse: Warehouse) -> None:
    (project / "blocked").write_text("a file where a directory should be")
    write(project, "sqlite:///state.db", warehouse.url, out="blocked/out.jsonl")
    proc = cli(project, "run")
    assert_clean_failure(proc, 3)
    runs = json.loads(cli(project, "runs", "--format", "json").stdout)
    assert runs[0]["counts"]["pending"] == 2 and "cannot open" in runs[0]["error"]
    write(project, "sqlite:///state.db", warehouse.url, out="ok.jsonl")
    assert cli(project, "run").returncode == 0 and delivered(project, "ok.jsonl") == {"u1", "u2"}


def test_secrets_never_reach_output_logs_or_the_state_database(project: Path, warehouse: Warehouse) -> None:
    from tests.fakes.gist import FakeGist

    gist = FakeGist(api_key="zz-secret-api-key-zz").start()
    try:
        (project / "c.toml").write_text(
            f'[state]\nurl = "sqlite:///state.db"\n[source]\nurl = "{warehouse.url}"\n'
            f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
            + Harness.audience("VIP")
        )
        env = {"GIST_API_KEY": "zz-secret-api-key-zz"}
        outputs = []
        for args in (
            ["run", "--json", "--log-level", "debug"],
            ["runs", "--format", "json"],
            ["diff", "--format", "json"],
            ["audiences", "--format", "json"],
        ):
            proc = run_cli(*args, "--config", "c.toml", cwd=project, env=env)
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
        env["GIST_API_KEY"] = "zz-wrong-key-zz"
        proc = run_cli("resync", "--yes", "--log-level", "debug", "--config", "c.toml", cwd=project, env=env)
        assert proc.returncode == 1
        outputs += [proc.stdout, proc.stderr]
    finally:
        gist.stop()
    dump = "\n".join(outputs) + (project / "state.db").read_bytes().decode("latin-1")
    for wal in project.glob("state.db-*"):
        dump += wal.read_bytes().decode("latin-1")
    assert "zz-secret-api-key-zz" not in dump and "zz-wrong-key-zz" not in dump
    assert set(gist.contacts) == {"u1", "u2"}


def test_sql_errors_drop_the_drivers_cursor_names(pg_url: str) -> None:
    """A query streamed through psycopg's server-side cursor fails with the database's reason, not the cursor's
    ``DECLARE "c_7f…_1" CURSOR FOR`` wrapper."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from audience_sync.sources.sql import _reason
    from audience_sync.store.engine import store_error

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            conn.execution_options(stream_results=True).execute(text("SELECT nope FROM pg_class")).fetchall()
    except SQLAlchemyError as exc:
        reason, stored = _reason(exc), str(store_error(exc, pg_url))
    finally:
        engine.dispose()
    for said in (reason, stored):
        assert 'column "nope" does not exist LINE 1: SELECT nope FROM pg_' in said, said
        assert "DECLARE" not in said and "CURSOR" not in said and "c_" not in said.split("LINE")[1], said
