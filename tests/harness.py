"""Shared fixtures: a state database on SQLite or on the real PostgreSQL, a SQLite warehouse to read audiences
from, a fake Gist server on loopback, and a harness that writes configs and runs syncs."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audience_sync.config import Config, parse_config
from audience_sync.run.sync import RunResult, run_sync
from tests.fakes.capture import CaptureServer
from tests.fakes.gist import FakeGist
from tests.fakes.segment import FakeSegment
from tests.schema_clone import expect_postgres, install_cloning, real_migrations

PG_URL = os.environ.get("AUDIENCE_SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Test files (SQLite state databases, JSONL sinks) on a RAM disk when there is one and TMPDIR does not say
# otherwise: a SQLite commit there costs 0.1 ms instead of about 6 ms of fsync, and a run makes dozens. A kill
# -9 loses nothing the page cache holds, so the crash tests prove the same on either.
if "TMPDIR" not in os.environ and os.access("/dev/shm", os.W_OK):
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None  # computed again from TMPDIR on next use (pytest's tmp_path among them)

# Wall time is not a property: Hypothesis's 200 ms deadline per example and its slow-generation health check
# would fail tests on a loaded machine. Tests that set their own settings keep the rest of these.
settings.register_profile("audience-sync", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("audience-sync")

# a new state database is a clone of one migrated once per test process (AUDIENCE_SYNC_TEST_MIGRATE=1: migrated)
install_cloning()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than the machine has cores. Much of the suite waits rather than computes (on
    real deadlines, lock leases, subprocesses, loopback servers), so one more worker fills the waits."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests marked ``slow`` first (in their usual order): a worker that is done steals from the other
    (``--dist worksteal``), so the run ends on short tests instead of one long test running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def migrations_as_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked ``real_migrations`` migrates every new state database for real instead of cloning it."""
    if request.node.get_closest_marker("real_migrations") is None:
        yield
        return
    with real_migrations():
        yield


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put our loggers back as they were after each test: a command run in-process configures them (its own handler,
    no propagation), which would hide the next test's records from ``caplog`` in the same worker."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("audience_sync", "apscheduler")
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL test server's URL; fails (not skips) when it is down: CI starts it."""
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc}); start it (see .ci/run)")
    finally:
        engine.dispose()
    expect_postgres(PG_URL)  # the commands the tests start clone their new schemas on it too
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL on a fresh PostgreSQL schema of its own, dropped afterwards."""
    schema = f"as_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(pg_server).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The state database, once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def receiver() -> Iterator[CaptureServer]:
    """A loopback server that records every request and answers 200 (webhooks, alert hooks)."""
    server = CaptureServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gist() -> Iterator[FakeGist]:
    server = FakeGist().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def segment() -> Iterator[FakeSegment]:
    """A loopback Segment Tracking API (batch endpoint) that records every message it accepts."""
    server = FakeSegment().start()
    try:
        yield server
    finally:
        server.stop()


def toml_value(value: Any) -> str:
    """A Python value as TOML (dicts become inline tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def toml_options(options: Mapping[str, Any]) -> str:
    """``key = value`` lines for a table's options."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in options.items())


class Warehouse:
    """A SQLite warehouse: ``members(audience, user_id, email)`` and ``trait_values(trait, user_id, email, value)``.

    ``value`` has no declared type, so SQLite keeps integers, floats, text and NULL as given.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS members (audience TEXT, user_id TEXT, email TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS trait_values (trait TEXT, user_id TEXT, email TEXT, value)")

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)

    def set_members(self, audience: str, members: Mapping[str, str | None]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM members WHERE audience = ?", (audience,))
            db.executemany("INSERT INTO members VALUES (?, ?, ?)", [(audience, u, e) for u, e in members.items()])

    def set_trait(self, trait: str, values: Mapping[str, tuple[str | None, Any]]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM trait_values WHERE trait = ?", (trait,))
            db.executemany(
                "INSERT INTO trait_values VALUES (?, ?, ?, ?)", [(trait, u, e, v) for u, (e, v) in values.items()]
            )

    @staticmethod
    def audience_sql(audience: str) -> str:
        return f"SELECT user_id, email FROM members WHERE audience = '{audience}'"

    @staticmethod
    def trait_sql(trait: str) -> str:
        return f"SELECT user_id, email, value FROM trait_values WHERE trait = '{trait}'"


class Harness:
    """Writes configs for a test and runs syncs, reading what the JSONL sink received."""

    def __init__(self, tmp_path: Path, state_url: str, warehouse: Warehouse) -> None:
        self.tmp_path = tmp_path
        self.state_url = state_url
        self.warehouse = warehouse
        self._read: dict[Path, int] = {}

    def config(self, body: str, *, environ: Mapping[str, str] | None = None) -> Config:
        text_ = f'[state]\nurl = "{self.state_url}"\n[source]\nurl = "{self.warehouse.url}"\n' + body
        return parse_config(text_, path=str(self.tmp_path / "test.toml"), environ=environ or {})

    def config_file(self, body: str, name: str = "audience_sync.toml") -> Path:
        """Write a config file with this test's state and warehouse and ``body``; return its path."""
        path = self.tmp_path / name
        path.write_text(f'[state]\nurl = "{self.state_url}"\n[source]\nurl = "{self.warehouse.url}"\n' + body)
        return path

    def jsonl_destination(self, name: str = "file") -> str:
        return f'[[destinations]]\nname = "{name}"\ntype = "jsonl"\npath = "{self.tmp_path / (name + ".jsonl")}"\n'

    @staticmethod
    def audience(name: str, *, key: str | None = None, destinations: list[str] | None = None) -> str:
        lines = [f'[[audiences]]\nname = "{name}"\nsql = "{Warehouse.audience_sql(name)}"']
        if key:
            lines.append(f'key = "{key}"')
        if destinations is not None:
            lines.append(f"destinations = {json.dumps(destinations)}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def trait(name: str, *, key: str | None = None) -> str:
        lines = [f'[[computed_traits]]\nname = "{name}"\nsql = "{Warehouse.trait_sql(name)}"']
        if key:
            lines.append(f'key = "{key}"')
        return "\n".join(lines) + "\n"

    def run(self, config: Config, **kwargs: Any) -> RunResult:
        return run_sync(config, **kwargs)

    def new_calls(self, name: str = "file") -> list[dict[str, Any]]:
        """The identify calls the JSONL destination ``name`` received since the last look."""
        path = self.tmp_path / f"{name}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        start = self._read.get(path, 0)
        self._read[path] = len(lines)
        return [json.loads(line) for line in lines[start:]]

    @staticmethod
    def sent(calls: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        """``{(user_id, key): value}`` of identify calls (one key each, plus email)."""
        out = {}
        for call in calls:
            for key, value in call["traits"].items():
                if key != "email":
                    out[(call["userId"], key)] = value
        return out


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse.db")


@pytest.fixture
def harness(tmp_path: Path, state_url: str, warehouse: Warehouse) -> Harness:
    return Harness(tmp_path, state_url, warehouse)
