"""Two upgrades of one state database at once: the second waits for the first and both succeed.

Cron starting two destinations' runs in the same minute on a new install migrates one database twice at once;
without the migration lock one of them failed ("database is locked" on SQLite; a duplicate ``alembic_version``
type, or "expected to match one row", on PostgreSQL).

Before either lock, a SQLite file in rollback-journal mode (made by another program) is switched to WAL mode, which
waits for any lock another program holds on it, reading or writing: the command says so once it has waited a
moment (not of a file already in WAL mode, busy for a moment), and fails clearly when the wait ends first.
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event

from audience_sync.errors import StoreError
from audience_sync.store.engine import _wal, create_state_engine
from audience_sync.store.migrate import HEAD, alembic_config, current_revision, upgrade
from tests.harness import Harness, Warehouse
from tests.processes import Cli
from tests.schema_clone import real_migrations
from tests.store.test_schema_clone import _postgres_schema, _rows, _sqlite_schema, new_schema

# the migrations themselves are under test: every new database here is migrated, never cloned
pytestmark = pytest.mark.real_migrations

WAIT = 60.0  # seconds: only ever reached when something is broken
READS = ("SELECT", "PRAGMA", "BEGIN", "SHOW")


class _Hold:
    """Holds the first statement that writes on ``engine`` (the upgrade is then inside its lock, the version read)
    until :attr:`release` is set."""

    def __init__(self, engine: Engine) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if self.inside.is_set() or statement.lstrip().split(None, 1)[0].upper() in READS:
            return
        self.inside.set()
        assert self.release.wait(WAIT), "the held upgrade was never released"


@pytest.fixture
def reference_url(request: pytest.FixtureRequest, state_url: str) -> Iterator[str]:
    """A second database on the same backend, to migrate once, alone."""
    if state_url.startswith("sqlite"):
        yield state_url.replace("state.db", "reference.db")
        return
    with new_schema(str(request.getfixturevalue("pg_server"))) as url:
        yield url


def _same_as_migrated_alone(url: str, reference_url: str) -> None:
    raced, alone = create_state_engine(url), create_state_engine(reference_url)
    try:
        assert upgrade(alone) == HEAD
        with raced.connect() as a, alone.connect() as b:
            schema = _sqlite_schema if a.dialect.name == "sqlite" else _postgres_schema
            assert schema(a) == schema(b) and schema(a)
            rows_a, rows_b = _rows(a), _rows(b)
            assert len(rows_a.pop("install")) == len(rows_b.pop("install")) == 1
            assert rows_a == rows_b
            assert rows_a["alembic_version"] == [(HEAD,)]
    finally:
        raced.dispose()
        alone.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("start", [None, "0005"], ids=["new", "older-revision"])
def test_an_upgrade_waits_for_the_one_under_way_and_both_succeed(
    tmp_path: Path, state_url: str, reference_url: str, warehouse: Warehouse, start: str | None
) -> None:
    """The first upgrade, in this process, is held inside its lock at its first write; a real ``db upgrade`` in a
    process of its own then says it waits, and once the first goes on, finds the database at head."""
    (tmp_path / "audience_sync.toml").write_text(
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{warehouse.url}"\n'
        + Harness(tmp_path, state_url, warehouse).jsonl_destination()
        + Harness.audience("VIP")
    )
    engine = create_state_engine(state_url)
    if start is not None:
        command.upgrade(alembic_config(engine), start)
    hold = _Hold(engine)
    results: dict[str, object] = {}

    def first() -> None:
        try:
            results["first"] = upgrade(engine)
        except BaseException as exc:
            results["first"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    args = ["db", "upgrade", "--log-level", "info", "--config", "audience_sync.toml"]
    try:
        assert hold.inside.wait(WAIT), results
        with Cli(args, cwd=tmp_path) as second:
            second.wait_for_line("waiting for it to finish")  # without a lock it goes on, and ends or fails
            assert second.proc.poll() is None
            hold.release.set()
            thread.join(WAIT)
            assert second.wait() == 0, second.stderr
    finally:
        hold.release.set()
        thread.join(WAIT)
    assert results == {"first": HEAD}
    assert f"at schema revision {HEAD}" in second.stdout
    assert current_revision(engine) == HEAD
    engine.dispose()
    _same_as_migrated_alone(state_url, reference_url)


class _Watch(logging.Handler):
    """Sets :attr:`changed` when an upgrade says it waits (and :attr:`waiting`), or when :meth:`ended` is called."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.changed = threading.Event()
        self.waiting = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for it to finish" in record.getMessage():
            self.waiting.set()
            self.changed.set()


@pytest.fixture
def watch() -> Iterator[_Watch]:
    logger = logging.getLogger("audience_sync.store")
    handler, level = _Watch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_two_threads_upgrading_at_once_take_turns(state_url: str, watch: _Watch) -> None:
    """Alembic's environment is one per process: a second thread's upgrade waits for the first one's (it failed
    with ``KeyError: 'script'``, or on the database), then finds the database at head."""
    first, second = create_state_engine(state_url), create_state_engine(state_url)
    hold = _Hold(first)
    results: dict[str, object] = {}

    def run(name: str, engine: Engine) -> None:
        try:
            results[name] = upgrade(engine)
        except BaseException as exc:
            results[name] = exc
        finally:
            if name == "second":
                watch.changed.set()  # it ended: without waiting, when it did not wait

    threads = {name: threading.Thread(target=run, args=(name, e)) for name, e in (("first", first), ("second", second))}
    try:
        threads["first"].start()
        assert hold.inside.wait(WAIT), results
        threads["second"].start()
        assert watch.changed.wait(WAIT)
        assert watch.waiting.is_set() and "second" not in results, f"the second upgrade did not wait: {results}"
    finally:
        hold.release.set()
        for thread in threads.values():
            if thread.ident is not None:
                thread.join(WAIT)
    assert results == {"first": HEAD, "second": HEAD}
    first.dispose()
    second.dispose()


def test_a_database_at_head_is_upgraded_without_waiting_for_the_lock(state_url: str) -> None:
    """The one query that recognises a database at head comes first: an upgrade under way elsewhere (here, the
    lock held on another connection) does not hold up the runs of an up-to-date database."""
    from audience_sync.store.migration_lock import migration_lock

    engine, other = create_state_engine(state_url), create_state_engine(state_url)
    assert upgrade(engine) == HEAD
    results: list[str] = []
    with other.connect() as conn, migration_lock(conn):
        thread = threading.Thread(target=lambda: results.append(upgrade(engine)), daemon=True)
        thread.start()
        thread.join(WAIT)
        assert results == [HEAD]
    engine.dispose()
    other.dispose()


def test_the_lock_of_one_database_or_schema_does_not_hold_up_another(state_url: str, reference_url: str) -> None:
    """On PostgreSQL the key is the schema's: two deployments' states in two schemas of one database migrate at
    once."""
    from audience_sync.store.migration_lock import migration_lock

    held, other = create_state_engine(state_url), create_state_engine(reference_url)
    results: list[str] = []
    with held.connect() as conn, migration_lock(conn):
        thread = threading.Thread(target=lambda: results.append(upgrade(other)), daemon=True)
        thread.start()
        thread.join(WAIT)
        assert results == [HEAD]
    held.dispose()
    other.dispose()


def _upgrade_at_once(url: str, start: Any, answers: Any) -> None:
    """In a process of its own: connect and upgrade once every process is ready (migrating for real: this process
    imported the suite's harness, which would clone a new database)."""
    engine = create_state_engine(url)
    start.wait(WAIT)
    try:
        with real_migrations():
            answers.put(upgrade(engine))
    except BaseException as exc:
        answers.put(repr(exc))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_processes_upgrading_a_new_database_at_once_all_succeed(state_url: str, reference_url: str) -> None:
    """The command lines' case, raced for real (the held tests above decide the order): three processes released at
    once on one new database. Before the lock nearly every race failed one of them; on SQLite even the first
    connection could ("database is locked" while two processes switched the new file to WAL at once)."""
    spawn = multiprocessing.get_context("spawn")
    start, answers = spawn.Barrier(3), spawn.Queue()
    procs = [spawn.Process(target=_upgrade_at_once, args=(state_url, start, answers)) for _ in range(3)]
    for proc in procs:
        proc.start()
    results = [answers.get(timeout=WAIT) for _ in procs]
    for proc in procs:
        proc.join(WAIT)
    assert results == [HEAD] * 3
    _same_as_migrated_alone(state_url, reference_url)


#: a process of its own holding a lock on a SQLite file from "locked" until a line on its stdin: its write lock
#: (``BEGIN IMMEDIATE``: readers still read, in rollback-journal mode; ``BEGIN EXCLUSIVE``: nobody reads), or
#: (``READ``) the shared lock of a read transaction, which in rollback-journal mode keeps a writer from committing
_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "READ":
    db.execute("BEGIN")
    db.execute("SELECT * FROM foreign_rows").fetchall()
else:
    db.execute("BEGIN " + sys.argv[2])
    db.execute("INSERT INTO foreign_rows VALUES (1)")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


class _Writer:
    """Another program's write lock on a SQLite file, held by a process of its own until :meth:`release`."""

    def __init__(self, path: Path, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        assert self.proc.wait(WAIT) == 0


@contextmanager
def _foreign_writer(path: Path, kind: str = "IMMEDIATE") -> Iterator[_Writer]:
    writer = _Writer(path, kind)
    try:
        yield writer
    finally:
        if writer.proc.poll() is None:
            writer.proc.kill()
            writer.proc.wait(WAIT)


def _foreign_file(path: Path, *, wal: bool = False) -> None:
    """A state database file another program made: in rollback-journal mode (SQLite's default), or in WAL mode."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE foreign_rows (x)")
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
    db.close()


def _journal_mode_and_tables(path: Path) -> tuple[str, list[str]]:
    with sqlite3.connect(path) as db:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    db.close()
    return mode, tables


#: what ``db upgrade`` and a run log while waiting for a foreign reader or writer to let the file be switched to
#: WAL mode
WAL_WAITING = (
    r"another process holds a lock on .*state\.db \(it is reading or writing it\), which is in rollback-journal mode"
)


def _commands(tmp_path: Path, warehouse: Warehouse, state_url: str) -> dict[str, list[str]]:
    harness = Harness(tmp_path, state_url, warehouse)
    warehouse.set_members("VIP", {"u1": "u1@x.io"})
    harness.config_file(harness.jsonl_destination() + Harness.audience("VIP"))
    common = ["--log-level", "info", "--config", "audience_sync.toml"]
    return {"db upgrade": ["db", "upgrade", *common], "run": ["run", *common]}


@pytest.mark.parametrize("command_name", ["db upgrade", "run"])
@pytest.mark.parametrize("kind", ["IMMEDIATE", "EXCLUSIVE", "READ"])
def test_a_command_waits_for_a_foreign_writer_to_let_a_rollback_journal_file_go_saying_so(
    tmp_path: Path, warehouse: Warehouse, command_name: str, kind: str
) -> None:
    """A state file in rollback-journal mode that another program holds a lock on, writing or only reading it (the
    line blamed "a write lock" on a reader too): the command says that it waits (it was silent for the 30 s busy
    timeout, then failed "database is locked"), and once the other program lets go it goes on as usual, the file
    switched to WAL mode."""
    path = tmp_path / "state.db"
    _foreign_file(path)
    args = _commands(tmp_path, warehouse, f"sqlite:///{path}")[command_name]
    with _foreign_writer(path, kind) as writer, Cli(args, cwd=tmp_path) as cli:
        line = cli.wait_for_line(WAL_WAITING)
        assert "switches it to WAL mode first and waits up to 30 s" in line
        assert cli.proc.poll() is None
        writer.release()
        assert cli.wait() == 0, cli.stderr
    mode, tables = _journal_mode_and_tables(path)
    assert mode == "wal" and {"alembic_version", "foreign_rows", "sync_runs"} <= set(tables)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        runs = db.execute("SELECT status FROM sync_runs").fetchall()
    db.close()
    assert runs == ([("succeeded",)] if command_name == "run" else [])


@pytest.mark.parametrize("command_name", ["db upgrade", "run"])
@pytest.mark.parametrize("kind", ["IMMEDIATE", "EXCLUSIVE", "READ"])
def test_a_foreign_writer_that_keeps_its_lock_past_the_busy_timeout_is_a_clear_error(
    tmp_path: Path, warehouse: Warehouse, command_name: str, kind: str
) -> None:
    """Held past the busy timeout (the URL's ``?timeout=``, SQLAlchemy's own parameter for SQLite): a StoreError
    naming the file and what to do, exit 1, and nothing written (no table, no run row), the file as it was."""
    path = tmp_path / "state.db"
    _foreign_file(path)
    args = _commands(tmp_path, warehouse, f"sqlite:///{path}?timeout=0.3")[command_name]
    with _foreign_writer(path, kind) as writer, Cli(args, cwd=tmp_path) as cli:
        assert "waits up to 0.3 s" in cli.wait_for_line(WAL_WAITING)
        assert cli.wait() == 1
        writer.release()
    assert (
        f"error: the state database {path} is in rollback-journal mode and another process held a lock on it (it is "
        "reading or writing it) for 0.3 s: "
    ) in " ".join(cli.stderr.split())
    assert "Stop the other process (or let it finish) and try again" in " ".join(cli.stderr.split())
    assert "Traceback" not in cli.stderr
    assert _journal_mode_and_tables(path) == ("delete", ["foreign_rows"])


def _exclusive_holder(path: Path) -> sqlite3.Connection:
    """A connection holding a WAL file in exclusive locking mode: every other connection is answered "busy" until
    it closes, as while the last connection to a WAL file checkpoints it closing (the same answer, for a moment)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("INSERT INTO foreign_rows VALUES (1)")
    return holder


def test_a_wal_file_busy_for_a_moment_is_no_news(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file already in WAL mode answering "busy" for a moment (its last connection checkpointing as it closes):
    the connection goes on without a word (the log said the file was in rollback-journal mode and waited)."""
    caplog.set_level("INFO", "audience_sync.store")
    path = tmp_path / "state.db"
    _foreign_file(path, wal=True)
    holder = _exclusive_holder(path)
    conn = sqlite3.connect(path, isolation_level=None)

    def release(statement: str) -> None:  # the first try was answered "busy": the holder closes as the wait begins
        if statement.startswith("PRAGMA busy_timeout=") and statement != "PRAGMA busy_timeout=0":
            holder.close()

    conn.set_trace_callback(release)
    try:
        _wal(conn.cursor(), 30, "state database")
        conn.set_trace_callback(None)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
        holder.close()
    assert [r.getMessage() for r in caplog.records if r.name == "audience_sync.store.engine"] == []


def test_a_wal_file_held_past_the_timeout_is_not_called_a_rollback_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.store")
    path = tmp_path / "state.db"
    _foreign_file(path, wal=True)
    holder = _exclusive_holder(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(StoreError) as info:
            _wal(conn.cursor(), 0.3, "state database")
    finally:
        conn.close()
        holder.close()
    assert str(info.value) == (
        f"another process held a lock on the state database {path} (it is reading or writing it) for 0.3 s. Stop the "
        "other process (or let it finish) and try again"
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "audience_sync.store.engine"]
    assert lines == [
        f"another process holds a lock on {path} (it is reading or writing it): audience-sync waits up to 0.3 s"
    ]


def test_the_migration_lock_names_a_writer_for_what_it_is(tmp_path: Path, warehouse: Warehouse) -> None:
    """On SQLite the migration lock is the file's write lock, which any writer may hold: the waiting line says so
    (it said "another process is upgrading" of a run or another program holding it), and the upgrade goes on
    once the writer lets go."""
    path = tmp_path / "state.db"
    _foreign_file(path, wal=True)
    args = _commands(tmp_path, warehouse, f"sqlite:///{path}")["db upgrade"]
    with _foreign_writer(path) as writer, Cli(args, cwd=tmp_path) as cli:
        line = cli.wait_for_line("waiting for it to finish")
        assert f"another process holds a write lock on the state database sqlite:///{path} (an upgrade, a run" in line
        assert cli.proc.poll() is None
        writer.release()
        assert cli.wait() == 0, cli.stderr
    assert f"at schema revision {HEAD}" in cli.stdout


def test_a_sqlite_url_sets_the_busy_timeout_with_timeout(tmp_path: Path) -> None:
    """``?timeout=SECONDS``, SQLAlchemy's own parameter for SQLite, is every connection's busy timeout (the
    switch to WAL mode's wait included); a value SQLite cannot wait is the URL's error."""
    from audience_sync.errors import ConfigError

    for query, busy_ms in (("", 30_000), ("?timeout=2.5", 2_500), ("?timeout=0", 0)):
        engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}{query}")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == busy_ms
        engine.dispose()
    for bad in ("soon", "-1", "inf", "1&timeout=2"):
        with pytest.raises(ConfigError, match=r"state database URL .* is not usable"):
            create_state_engine(f"sqlite:///{tmp_path / 'state.db'}?timeout={bad}")
