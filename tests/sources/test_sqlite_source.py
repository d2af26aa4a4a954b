"""A SQLite source file is only ever read: whatever its queries say, a run neither creates, changes nor writes it,
and a query pushed down with the file attached to the state reads the file's tables, never the state's."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from audience_sync.errors import SourceError
from audience_sync.run.sync import run_sync
from audience_sync.store.attach import attached
from audience_sync.store.engine import create_state_engine
from tests.sources.test_pushdown import BODY, SQLITE_ROWS, _config, _sqlite_load

#: the files a run may add next to the source: the state database's and the sink's
STATE_FILES = {"state.db", "state.db-wal", "state.db-shm", "out.jsonl"}


def _urls(tmp: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp / 'state.db'}", f"sqlite:///{tmp / 'warehouse.db'}"


def _audience(sql: str) -> str:
    return f'[[audiences]]\nname = "Members"\nsql = "{sql}"\n'


def _source_rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "warehouse.db") as db:
        return int(db.execute("SELECT count(*) FROM src").fetchone()[0])


@pytest.mark.parametrize("push", [None, False])
def test_a_query_that_writes_fails_and_leaves_the_source_file_as_it_was(tmp_path: Path, push: bool | None) -> None:
    """Pushed down or streamed (``push``), a computation whose query writes (DDL runs outside any transaction in
    SQLite's driver, so it would stick) or attaches a file fails naming the computation; the source keeps every row,
    its journal mode, and no file appears."""
    state, source = _urls(tmp_path)
    _sqlite_load(SQLITE_ROWS)(source)
    before = _source_rows(tmp_path)
    files = set(tmp_path.iterdir())
    for sql, reason in [
        ("DROP TABLE src", "attempt to write a readonly database"),
        ("DELETE FROM src RETURNING user_id", "attempt to write a readonly database"),
        (f"ATTACH DATABASE '{tmp_path / 'new.db'}' AS other", "too many attached databases"),
    ]:
        with pytest.raises(SourceError, match=rf"audience 'Members' \(members\): query failed: {reason}"):
            run_sync(_config(state, tmp_path, _audience(sql), push, source))
    assert _source_rows(tmp_path) == before
    run_sync(_config(state, tmp_path, BODY, push, source))  # a run that succeeds leaves the journal mode alone
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert {p.name for p in set(tmp_path.iterdir()) - files} <= STATE_FILES


@pytest.mark.parametrize("push", [None, False])
def test_a_missing_source_file_is_named_and_not_created(tmp_path: Path, push: bool | None) -> None:
    state, source = _urls(tmp_path)
    missing = tmp_path / "warehouse.db"
    with pytest.raises(SourceError, match=rf"query failed: the source file {missing} does not exist"):
        run_sync(_config(state, tmp_path, BODY, push, source))
    assert not missing.exists()


def test_an_attached_query_never_reads_a_state_table_the_source_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite looks an unqualified name up in the state before the attached file: a query naming a table only the
    state has (``snapshot``, ``sync_runs``) would send the state's own rows. It fails as streaming it does."""
    caplog.set_level("INFO", "audience_sync.run.stage")
    state, source = _urls(tmp_path)
    _sqlite_load(SQLITE_ROWS)(source)
    assert run_sync(_config(state, tmp_path, BODY, None, source)).status == "succeeded"  # the snapshot has rows
    for table, column in [("snapshot", "user_id"), ("sync_runs", "id AS user_id")]:
        sql = f"SELECT {column} FROM {table}"
        with pytest.raises(SourceError, match=rf"audience 'Members' \(members\): query failed: no such table: {table}"):
            run_sync(_config(state, tmp_path, _audience(sql), None, source))
    assert any("does not compile on the source file alone" in r.getMessage() for r in caplog.records)


def test_the_attached_file_is_read_only(tmp_path: Path) -> None:
    _, source = _urls(tmp_path)
    _sqlite_load(SQLITE_ROWS)(source)
    before = _source_rows(tmp_path)
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with (
            attached(engine, tmp_path / "warehouse.db") as conn,
            pytest.raises(OperationalError, match="attempt to write a readonly database"),
        ):
            conn.exec_driver_sql("DELETE FROM as_source.src")
    finally:
        engine.dispose()
    assert _source_rows(tmp_path) == before


def test_a_query_ending_in_a_comment_is_still_pushed_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Wrapped as a subquery, a query's last-line comment would swallow the wrapping's closing parenthesis: the
    computation would silently be streamed (the slow path), as would every landed query on another database."""
    caplog.set_level("INFO", "audience_sync.run.stage")
    state, source = _urls(tmp_path)
    _sqlite_load(SQLITE_ROWS)(source)
    body = _audience("SELECT user_id, email FROM src -- the whole table\\n;\\n")
    streamed = run_sync(_config(f"sqlite:///{tmp_path / 'streamed.db'}", tmp_path, body, False, source))
    caplog.clear()
    pushed = run_sync(_config(state, tmp_path, body, None, source))
    assert pushed.status == streamed.status == "succeeded"
    assert pushed.counts["sources"] == streamed.counts["sources"]
    assert not [r.getMessage() for r in caplog.records if "streaming" in r.getMessage()]


@pytest.mark.parametrize("push", [None, False])
def test_a_hot_journal_left_by_a_crashed_writer_is_rolled_back_and_the_file_read(
    tmp_path: Path, push: bool | None
) -> None:
    """A writer killed in the middle of a transaction that spilled to the file leaves a hot journal: a read-only
    connection may not roll it back and would fail ("attempt to write a readonly database"). The run rolls it back
    as any SQLite reader would, then reads the rows as they were committed."""
    state, source = _urls(tmp_path)
    _sqlite_load([(f"u{i}", None, i) for i in range(2000)])(source)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(tmp_path / 'warehouse.db')!r}, isolation_level=None)\n"
            "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN')\n"
            "db.execute('UPDATE src SET value = hex(randomblob(100))')\n"
            "print('spilled', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline() == "spilled\n"
    writer.kill()
    writer.wait()
    assert (tmp_path / "warehouse.db-journal").exists()
    result = run_sync(_config(state, tmp_path, BODY, push, source))
    assert result.status == "succeeded" and result.counts["sources"]["members"]["members"] == 2000
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        assert db.execute("SELECT sum(value) FROM src").fetchone()[0] == sum(range(2000))
