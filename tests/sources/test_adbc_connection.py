"""A run reads its ADBC source through one connection: opened by its first landing, shared by every computation (a
cursor each), closed once the run has staged, before it delivers, and whatever ends the run (a failing query, a
stop, Ctrl-C). The configuration that takes this path here: a SQLite source file beside a PostgreSQL state, read
by ``adbc-driver-sqlite``; the session itself is also checked on PostgreSQL with ``adbc-driver-postgresql``."""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import adbc_driver_sqlite.dbapi
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from audience_sync.destinations import build_destination
from audience_sync.errors import RunStopped, SourceError
from audience_sync.run.sync import run_sync
from audience_sync.sources import arrow_read
from tests.sources.test_duckdb_connection import _StopAt
from tests.sources.test_landing import _fallbacks, _landed
from tests.sources.test_pushdown import _config, _lines, _same_install, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="open files are counted in /proc/self/fd"),
]

#: audiences reading the file, all landed, and a trait
AUDIENCES = 5


def _source(tmp: Path) -> tuple[str, Path]:
    path = tmp / "warehouse.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (i INTEGER, user_id TEXT, email TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"u{i}", f"u{i}@x.io") for i in range(1, 41)])
    db.close()
    return f"sqlite:///{path}", path


def _body(extra: str = "") -> str:
    audiences = "".join(
        f'[[audiences]]\nname = "A{a}"\nsql = "SELECT user_id, email FROM users WHERE i % {AUDIENCES + 1} <> {a}"\n'
        for a in range(AUDIENCES)
    )
    return audiences + extra + '[[computed_traits]]\nname = "Rank"\nsql = "SELECT user_id, i AS value FROM users"\n'


def _open(path: Path) -> int:
    """How many file descriptors of this process are open on ``path`` (a SQLite connection holds at least one)."""
    target, count = path.resolve(), 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += fd.readlink() == target
        except OSError:  # the listing's own descriptor, closed since
            continue
    return count


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection the SQLite ADBC driver made while the test ran (the real driver's, only counted)."""
    made: list[Any] = []
    real = adbc_driver_sqlite.dbapi.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(adbc_driver_sqlite.dbapi, "connect", connect)
    return made


def test_a_run_connects_once_and_closes_before_it_delivers(
    pg_schema_url: Any, tmp_path: Path, connects: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    url, path = _source(tmp_path)
    at_delivery = []

    def factory(config: Any) -> Any:  # called as the delivery starts
        at_delivery.append(_open(path))
        return build_destination(config)

    results = {}
    for push in (None, False):  # landed, then streamed: the same state for both
        (tmp_path / str(push)).mkdir()
        state = pg_schema_url(tmp_path)
        _same_install(state)
        config = _config(state, tmp_path / str(push), _body(), push, url)
        result = run_sync(config, destination_factory=factory)
        assert result.status == "succeeded"
        results[push] = result.counts["sources"], _lines(tmp_path / str(push))
        if push is None:
            assert _landed(caplog) == {f"a{a}" for a in range(AUDIENCES)} | {"rank"}
            assert len(connects) == 1 and arrow_read.OPENS[url] == 1  # a new file's URL
    assert len(connects) == 1  # streaming reads the file with the SQLAlchemy dialect
    assert results[None] == results[False] and results[None][0]["a0"]["members"] == 34
    assert at_delivery[0] == 0 and _open(path) == 0


def test_a_failing_query_fails_the_run_as_before_and_closes_the_connection(
    pg_schema_url: Any, tmp_path: Path, connects: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    url, path = _source(tmp_path)
    bad = '[[audiences]]\nname = "Bad"\nsql = "SELECT nope AS user_id FROM users"\n'
    config = _config(pg_schema_url(tmp_path), tmp_path, _body(bad), None, url)
    with pytest.raises(SourceError, match=r"^audience 'Bad' \(bad\): query failed: .*no such column: nope"):
        run_sync(config)
    assert any(m.startswith("bad: landing failed (INVALID_ARGUMENT") for m in _fallbacks(caplog))
    assert len(connects) == 1 and _open(path) == 0


def test_a_query_failing_while_its_rows_stream_fails_the_run_as_streaming_does(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The query fails after its first batches were read (the Arrow stream raises ``OSError``): the landing is
    rolled back and the streamed path runs the query again and reports its error, as for a query that fails at
    once, and the source file is closed."""
    caplog.set_level("INFO", "audience_sync.run")
    url, path = _source(tmp_path)
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO users VALUES (?, ?, NULL)", [(i, f"u{i}") for i in range(41, 5001)])
        db.execute("INSERT INTO users VALUES (-9223372036854775808, 'min', NULL)")
    db.close()
    bad = '[[audiences]]\nname = "Bad"\nsql = "SELECT user_id || abs(i) AS user_id FROM users"\n'
    # batches of 100 rows: the first ones read before the last row's overflow
    config = replace(_config(pg_schema_url(tmp_path), tmp_path, _body(bad), None, url), source_chunk_size=100)
    with pytest.raises(SourceError, match=r"^audience 'Bad' \(bad\): query failed: .*integer overflow"):
        run_sync(config)
    assert any(m.startswith("bad: landing failed (integer overflow") for m in _fallbacks(caplog))
    assert _open(path) == 0


@pytest.mark.parametrize("how", ["stop", "interrupt"])
def test_a_run_stopped_or_interrupted_while_reading_closes_the_connection(
    pg_schema_url: Any, tmp_path: Path, connects: list[Any], how: str
) -> None:
    url, path = _source(tmp_path)
    config = _config(pg_schema_url(tmp_path), tmp_path, _body(), None, url)
    stop = threading.Event()
    progress: Any = _StopAt(3, stop) if how == "stop" else _StopAt(3, interrupt=KeyboardInterrupt())
    with pytest.raises(RunStopped if how == "stop" else KeyboardInterrupt):
        run_sync(config, stop=stop, progress=progress)
    assert len(connects) == 1 and _open(path) == 0  # the first two computations read it


def test_a_connection_that_fails_to_close_neither_fails_the_run_nor_keeps_its_staging(
    pg_schema_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The driver failing to close the session (once the run has read everything): a warning naming the source,
    the run's outcome and its staging's deletion as if it had closed."""
    caplog.set_level("WARNING", "audience_sync.run")
    url, path = _source(tmp_path)
    real, failed = arrow_read.AdbcSource.close, list[str]()

    def close(self: arrow_read.AdbcSource) -> None:
        real(self)
        if not failed:
            failed.append(self.name)
            raise arrow_read.ConnectFailed("simulated: the driver failed to close the session")

    monkeypatch.setattr(arrow_read.AdbcSource, "close", close)
    state = pg_schema_url(tmp_path)
    config = _config(state, tmp_path, _body(), None, url)
    result = run_sync(config)
    assert result.status == "succeeded" and result.counts["sources"]["a0"]["members"] == 34
    assert failed == [url] and _open(path) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expected = f"could not close the source adbc_driver_sqlite {url}: simulated: the driver failed to close the session"
    assert expected in warned
    engine = create_engine(state)
    try:
        with engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT (SELECT count(*) FROM staging) + (SELECT count(*) FROM staging_skips)")
            assert left.scalar_one() == 0
    finally:
        engine.dispose()


def test_reads_share_the_connection_and_see_what_was_committed_before_them(tmp_path: Path) -> None:
    url, path = _source(tmp_path)
    source = arrow_read.AdbcSource(make_url(url), "adbc_driver_sqlite")
    opened = arrow_read.OPENS[url]
    with source.cursor() as cur:
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchone() == (40,)
    # autocommit: no read transaction is left open, so a write between two reads is seen by the second
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM users WHERE i = 1")
    db.close()
    with source.cursor() as cur:
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchone() == (39,)
    assert arrow_read.OPENS[url] == opened + 1 and source.is_open and _open(path) > 0
    source.close()
    assert not source.is_open and _open(path) == 0
    source.close()  # twice is harmless


def test_a_failed_connect_names_the_source_and_is_tried_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"
    source = arrow_read.AdbcSource(make_url(url), "adbc_driver_sqlite")
    with (
        pytest.raises(
            arrow_read.ConnectFailed,
            match=f"^adbc_driver_sqlite could not connect to the source {re.escape(url)}: IO: ",
        ),
        source.cursor(),
    ):
        pass
    assert not source.is_open and arrow_read.OPENS[url] == 0
    assert not (tmp_path / "late.db").exists()  # read-only: never created
    sqlite3.connect(tmp_path / "late.db").close()
    with source.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    assert arrow_read.OPENS[url] == 1
    source.close()
    # a password is never in the message (nothing listens on port 1 of this host)
    refused = arrow_read.AdbcSource(
        make_url("postgresql+psycopg://postgres:sekret-word@127.0.0.1:1/test"), "adbc_driver_postgresql"
    )
    with pytest.raises(arrow_read.ConnectFailed) as info, refused.cursor():
        pass
    assert str(info.value).startswith(
        "adbc_driver_postgresql could not connect to the source postgresql+psycopg://postgres:***@127.0.0.1:1/test: "
    )
    assert "sekret" not in str(info.value) and not refused.is_open


def test_one_postgres_session_for_every_read_on_every_thread_until_closed(pg_schema_url: Any, tmp_path: Path) -> None:
    url = pg_schema_url(tmp_path)
    source, threads, key = arrow_read.AdbcSource(make_url(url), "adbc_driver_postgresql"), 4, 741_852
    pids: list[int] = []
    failures: list[BaseException] = []

    def read() -> None:
        try:
            with source.cursor() as cur:
                cur.execute(f"SELECT pg_backend_pid(), pg_try_advisory_lock({key})")  # held by the session
                pid, _ = cur.fetchone()
                pids.append(pid)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    opened = arrow_read.OPENS[source.name]
    workers = [threading.Thread(target=read) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == [] and len(pids) == threads and len(set(pids)) == 1
    assert arrow_read.OPENS[source.name] == opened + 1
    admin = create_engine(url)
    try:
        with admin.connect() as conn:
            # autocommit: the session idles outside any transaction between two reads
            state = conn.exec_driver_sql(f"SELECT state FROM pg_stat_activity WHERE pid = {pids[0]}").scalar()
            assert state == "idle"
            assert conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar() is False
        source.close()
        with admin.connect() as conn:
            # the session's lock is freed when the session ends: waited for by the server, not by a sleep
            conn.exec_driver_sql("SET lock_timeout = '30s'")
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
    finally:
        source.close()
        admin.dispose()


def test_a_broken_postgres_session_is_dropped_and_the_next_read_connects_again(
    pg_schema_url: Any, tmp_path: Path
) -> None:
    """The source's session ends between two reads (terminated on the server): the read that finds it dead fails
    with the driver's error, and the next connects again and reads; a failing query keeps the session."""
    import adbc_driver_manager

    url = pg_schema_url(tmp_path)
    source = arrow_read.AdbcSource(make_url(url), "adbc_driver_postgresql")
    opened = arrow_read.OPENS[source.name]
    admin = create_engine(url)
    try:
        with source.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        with pytest.raises(adbc_driver_manager.ProgrammingError), source.cursor() as cur:
            cur.execute("SELECT no_such_column")
        assert source.is_open and arrow_read.OPENS[source.name] == opened + 1
        with admin.connect() as conn:  # waits until the session has ended (or 30 s): no sleep
            assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid}, 30000)").scalar() is True
        with pytest.raises(adbc_driver_manager.OperationalError), source.cursor() as cur:
            cur.execute("SELECT 1")
        assert not source.is_open
        with source.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (again,) = cur.fetchone()
        assert again != pid and arrow_read.OPENS[source.name] == opened + 2
        # the session ends while its result streams: the Arrow stream fails (OSError), and the session is dropped
        ends = f"CASE WHEN g = 300000 THEN pg_terminate_backend({again}) END"
        with pytest.raises(OSError, match="terminating connection"), source.cursor() as cur:
            cur.execute(f"SELECT g, {ends} FROM generate_series(1, 400000) AS g")
            for _ in cur.fetch_record_batch():
                pass
        assert not source.is_open
        with source.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert arrow_read.OPENS[source.name] == opened + 3
    finally:
        source.close()
        admin.dispose()
