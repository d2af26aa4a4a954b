"""A run reads its DuckDB source file through one read-only connection: opened by its first read, shared by every
computation (a cursor each, the landing and the streaming that may follow it alike), closed when the run is done
with it, whether it succeeded, failed or was interrupted; the file is then free for a writer again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import duckdb
import pytest

from audience_sync.errors import RunStopped, SourceError
from audience_sync.run.sync import run_sync
from audience_sync.sources import duck
from audience_sync.sources.duck import DuckFile, duckdb_file
from tests.sources.test_landing import _fallbacks, _landed
from tests.sources.test_pushdown import _config

#: audiences reading the file: several landed, and one (a UUID user id) whose landing refuses it and streams
AUDIENCES = 6


def _source(tmp: Path) -> tuple[str, Path]:
    url = f"duckdb:///{tmp / 'warehouse.duckdb'}"
    path = duckdb_file(url)
    assert path is not None
    with duckdb.connect(str(path)) as db:
        db.execute(
            "CREATE TABLE users AS SELECT i, printf('%08x-0000-4000-8000-%012d', i, i) AS uid, "
            "'u' || i AS user_id, 'u' || i || '@x.io' AS email FROM range(1, 41) AS r(i)"
        )
    return url, path


def _body(extra: str = "") -> str:
    audiences = "".join(
        f'[[audiences]]\nname = "A{a}"\nsql = "SELECT user_id, email FROM users WHERE i % {AUDIENCES} <> {a}"\n'
        for a in range(AUDIENCES - 1)
    )
    streamed = '[[audiences]]\nname = "Ids"\nsql = "SELECT uid::UUID AS user_id FROM users"\n'
    trait = '[[computed_traits]]\nname = "Rank"\nsql = "SELECT user_id, i AS value FROM users"\n'
    return audiences + streamed + trait + extra


def _writable(path: Path) -> bool:
    """Whether the file can be opened read-write: DuckDB refuses it while a read-only connection is open."""
    try:
        with duckdb.connect(str(path)) as db:
            db.execute("SELECT 1")
    except duckdb.ConnectionException:
        return False
    return True


@pytest.mark.parametrize("push", [None, False])
def test_a_run_opens_its_duckdb_file_once_and_closes_it(
    tmp_path: Path, push: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    url, path = _source(tmp_path)
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(), push, url)
    opened = duck.OPENS[path]
    result = run_sync(config)
    assert result.status == "succeeded"
    assert result.counts["sources"]["a0"]["members"] == 34 and result.counts["sources"]["ids"]["members"] == 40
    if push is None:  # every computation read the file, the one refused by its landing twice
        assert _landed(caplog) == {f"a{a}" for a in range(AUDIENCES - 1)} | {"rank"}
        assert any(m.startswith("ids: streaming (column 'user_id' has DuckDB type UUID") for m in _fallbacks(caplog))
    assert duck.OPENS[path] == opened + 1
    assert _writable(path)
    # what a writer changed between two runs is what the next run reads, through a connection of its own
    with duckdb.connect(str(path)) as db:
        db.execute("DELETE FROM users WHERE i = 1")
    result = run_sync(config)
    assert result.status == "succeeded" and result.counts["sources"]["ids"]["members"] == 39
    assert duck.OPENS[path] == opened + 2
    assert _writable(path)
    # and by another process (DuckDB's lock on the file, which a read-only connection holds, is gone)
    write = f"import duckdb\nwith duckdb.connect({str(path)!r}) as db: db.execute('DELETE FROM users WHERE i = 2')"
    subprocess.run([sys.executable, "-c", write], check=True, timeout=60)


@pytest.mark.parametrize("push", [None, False])
def test_a_failing_query_fails_the_run_as_before_and_closes_the_file(tmp_path: Path, push: bool | None) -> None:
    url, path = _source(tmp_path)
    bad = '[[audiences]]\nname = "Bad"\nsql = "SELECT nope AS user_id FROM users"\n'
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(bad), push, url)
    opened = duck.OPENS[path]
    with pytest.raises(SourceError, match=r"^audience 'Bad' \(bad\): query failed: Binder Error"):
        run_sync(config)
    assert duck.OPENS[path] == opened + 1
    assert _writable(path)


_LOCKER = """
import duckdb, sys
db = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("problem", ["missing", "not DuckDB", "locked by a writer"])
def test_a_file_that_cannot_be_opened_is_named_not_the_query_of_the_first_computation(
    tmp_path: Path, problem: str
) -> None:
    """The file's fault, not the first computation's query: the error names the file (it said "audience 'A0' (a0):
    query failed", as if A0's SQL were wrong), and still says which computation was to read it."""
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    path = tmp_path / "warehouse.duckdb"
    writer = None
    if problem == "not DuckDB":
        path.write_text("user_id\nu1\n" * 1000)
    elif problem == "locked by a writer":
        _source(tmp_path)
        writer = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None and writer.stdout.readline() == "locked\n"
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(), None, url)
    try:
        with pytest.raises(SourceError) as info:
            run_sync(config)
    finally:
        if writer is not None:
            writer.kill()
            writer.wait(60)
    message = str(info.value)
    assert message.startswith(f"the DuckDB source file {path} cannot be opened (read-only, for audience 'A0' (a0)): ")
    assert "query failed" not in message
    reason = {"missing": "read-only", "not DuckDB": "not a valid DuckDB database file", "locked by a writer": "lock"}
    assert reason[problem] in message
    assert info.value.computation == "a0"
    assert problem != "missing" or not path.exists()


class _StopAt:
    """Progress that, as the run begins reading its ``n``-th computation, sets ``stop`` or raises ``interrupt``."""

    def __init__(self, n: int, stop: threading.Event | None = None, interrupt: BaseException | None = None) -> None:
        self.n, self.stop, self.interrupt, self.begun = n, stop, interrupt, 0

    def begin(self, task: str, total: int | None = None) -> None:
        if task.startswith("reading "):
            self.begun += 1
            if self.begun == self.n:
                if self.stop is not None:
                    self.stop.set()
                if self.interrupt is not None:
                    raise self.interrupt

    def advance(self, task: str, amount: int) -> None:
        pass

    def end(self, task: str) -> None:
        pass


@pytest.mark.parametrize("how", ["stop", "interrupt"])
def test_a_run_stopped_or_interrupted_while_reading_closes_the_file(tmp_path: Path, how: str) -> None:
    url, path = _source(tmp_path)
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(), None, url)
    opened, stop = duck.OPENS[path], threading.Event()
    progress: Any = _StopAt(3, stop) if how == "stop" else _StopAt(3, interrupt=KeyboardInterrupt())
    with pytest.raises(RunStopped if how == "stop" else KeyboardInterrupt):
        run_sync(config, stop=stop, progress=progress)
    assert duck.OPENS[path] == opened + 1  # the first two computations read it
    assert _writable(path)


def test_reads_on_several_threads_share_one_connection(tmp_path: Path) -> None:
    _, path = _source(tmp_path)
    source, threads = DuckFile(path), 4
    together, counts, failures = threading.Barrier(threads), [0] * threads, []

    def read(k: int) -> None:
        try:
            with source.cursor() as cur:
                together.wait()  # every thread holds its cursor at once
                counts[k] = cur.execute("SELECT count(*) FROM users WHERE i % ? = 0", [k + 1]).fetchone()[0]
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    opened = duck.OPENS[path]
    workers = [threading.Thread(target=read, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == [] and counts == [40, 20, 13, 10]
    assert duck.OPENS[path] == opened + 1 and source.is_open and not _writable(path)
    source.close()
    assert not source.is_open and _writable(path)
    source.close()  # twice is harmless


@pytest.fixture
def failing_close(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """DuckFile.close closes the file, then raises as a driver might: every file it was called for."""
    real, called = DuckFile.close, []

    def close(self: DuckFile) -> None:
        called.append(self.path)
        real(self)
        raise duckdb.IOException("simulated: the file could not be closed")

    monkeypatch.setattr(DuckFile, "close", close)
    return called


def _staged(state: Path) -> int:
    with closing(sqlite3.connect(state)) as db:
        row = db.execute("SELECT (SELECT count(*) FROM staging) + (SELECT count(*) FROM staging_skips)").fetchone()
    return int(row[0])


def test_a_source_that_fails_to_close_neither_fails_the_run_nor_keeps_its_staging(
    tmp_path: Path, failing_close: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", "audience_sync.run")
    url, path = _source(tmp_path)
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(), None, url)
    result = run_sync(config)
    assert result.status == "succeeded" and result.counts["sources"]["ids"]["members"] == 40
    assert failing_close and set(failing_close) == {path}
    assert _staged(tmp_path / "state.db") == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"could not close the source {path}: simulated: the file could not be closed" in warned
    assert _writable(path)


def test_a_source_that_fails_to_close_does_not_hide_the_run_s_own_error(
    tmp_path: Path, failing_close: list[Path]
) -> None:
    url, _path = _source(tmp_path)
    bad = '[[audiences]]\nname = "Bad"\nsql = "SELECT nope AS user_id FROM users"\n'
    config = _config(f"sqlite:///{tmp_path / 'state.db'}", tmp_path, _body(bad), None, url)
    with pytest.raises(SourceError, match=r"^audience 'Bad' \(bad\): query failed: Binder Error"):
        run_sync(config)
    assert failing_close and _staged(tmp_path / "state.db") == 0
    with closing(sqlite3.connect(tmp_path / "state.db")) as db:
        ((status, error),) = db.execute("SELECT status, error FROM sync_runs").fetchall()
    assert status == "failed" and error.startswith("audience 'Bad' (bad): query failed: Binder Error")
