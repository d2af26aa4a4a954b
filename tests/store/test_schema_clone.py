"""The tests' new state databases are clones of one migrated once (``tests/schema_clone.py``): a clone must be
the database the migrations make, table for table, index for index, row for row, with an install id of its own,
whether the test process makes it or a command forked from the fork server does, and two processes cloning one
new database at once both succeed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

from audience_sync.store import migrate
from audience_sync.store.engine import create_state_engine
from tests.processes import FRESH, Cli
from tests.schema_clone import ENABLED, POSTGRES_CLONE_LOCK, migrate_for_real, sqlite_clone_lock

pytestmark = pytest.mark.skipif(not ENABLED, reason="AUDIENCE_SYNC_TEST_MIGRATE=1: nothing is cloned")


def _sqlite_schema(conn: Connection) -> set[tuple[Any, ...]]:
    rows = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    return {tuple(r) for r in rows}


def _postgres_schema(conn: Connection) -> set[tuple[Any, ...]]:
    # every relation, column, constraint, index and trigger of the schema, with the schema's name left out
    queries = [
        "SELECT 'relation', relname, relkind::text FROM pg_class WHERE relnamespace = current_schema()::regnamespace",
        "SELECT 'column', table_name || '.' || column_name, concat_ws(' ', data_type, is_nullable, column_default) "
        "FROM information_schema.columns WHERE table_schema = current_schema()",
        "SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = current_schema()::regnamespace",
        "SELECT 'index', indexname, replace(indexdef, current_schema() || '.', '') FROM pg_indexes "
        "WHERE schemaname = current_schema()",
        "SELECT 'trigger', tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal",
    ]
    found: set[tuple[Any, ...]] = set()
    for query in queries:
        found |= {tuple(r) for r in conn.execute(text(query))}
    return found


def _rows(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = sorted(inspect(conn).get_table_names())
    return {t: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{t}"'))), key=repr) for t in tables}


def _compare(migrated_url: str, cloned_url: str) -> None:
    migrated, cloned = create_state_engine(migrated_url), create_state_engine(cloned_url)
    try:
        head = migrate_for_real(migrated)
        assert migrate.upgrade(cloned) == head  # cloned: the database was empty
        with migrated.connect() as a, cloned.connect() as b:
            schema = _sqlite_schema if a.dialect.name == "sqlite" else _postgres_schema
            assert schema(a) == schema(b)
            assert schema(a)  # the comparison compared something
            rows_a, rows_b = _rows(a), _rows(b)
            install_a, install_b = rows_a.pop("install"), rows_b.pop("install")
            assert rows_a == rows_b
            assert rows_a["alembic_version"] == [(head,)]
            assert len(install_a) == len(install_b) == 1
            assert install_a[0][0] != install_b[0][0]  # an install id of its own
    finally:
        migrated.dispose()
        cloned.dispose()


def test_a_cloned_sqlite_database_is_the_migrated_one(tmp_path: Path) -> None:
    _compare(f"sqlite:///{tmp_path / 'migrated.db'}", f"sqlite:///{tmp_path / 'cloned.db'}")
    with create_engine(f"sqlite:///{tmp_path / 'cloned.db'}").connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"


@pytest.mark.postgres
def test_a_cloned_postgres_schema_is_the_migrated_one(pg_server: str, pg_url: str) -> None:
    schema = f"as_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        other = make_url(pg_server).update_query_dict({"options": f"-csearch_path={schema}"})
        _compare(pg_url, other.render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


#: the tests of the commands' clones: a command started as a fresh interpreter migrates for real
forked = pytest.mark.skipif(FRESH, reason="AUDIENCE_SYNC_TEST_FRESH=1: a command is a fresh interpreter")


def _made_in_one_step(url: str) -> bool:
    """Whether the database was made at once (cloned), not migrated by one transaction per migration: SQLite's schema
    cookie counts the schema's changes (a backup makes one), and on PostgreSQL every catalogue row of the schema
    carries the transaction that wrote it last."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                return int(conn.execute(text("PRAGMA schema_version")).scalar_one()) == 1
            query = (
                "SELECT count(DISTINCT xmin::text) FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            )
            return int(conn.execute(text(query)).scalar_one()) == 1
    finally:
        engine.dispose()


def _upgrade_command(tmp_path: Path, state_url: str) -> Cli:
    """``audience-sync db upgrade`` on ``state_url``, forked from the fork server; it logs before it migrates."""
    config = tmp_path / "c.toml"
    config.write_text(f'[state]\nurl = "{state_url}"\n')
    return Cli(["db", "upgrade", "--log-level", "info", "--config", str(config)], cwd=tmp_path)


@contextmanager
def new_schema(pg_server: str) -> Iterator[str]:
    """The URL of a new, empty schema of its own on ``pg_server``, dropped on the way out."""
    schema = f"as_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(pg_server)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def other_url(tmp_path: Path, state_url: str, pg_server_if_postgres: str | None) -> Iterator[str]:
    """A second new state database on the backend of ``state_url``, to migrate for real."""
    if pg_server_if_postgres is None:
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    with new_schema(pg_server_if_postgres) as url:
        yield url


@pytest.fixture
def pg_server_if_postgres(request: pytest.FixtureRequest, state_url: str) -> str | None:
    return str(request.getfixturevalue("pg_server")) if state_url.startswith("postgresql") else None


@forked
def test_a_command_clones_a_new_database_into_the_migrated_one(tmp_path: Path, state_url: str, other_url: str) -> None:
    with _upgrade_command(tmp_path, state_url) as command:
        assert command.wait() == 0, command.stderr
    assert "state database at schema revision" in command.stdout
    assert _made_in_one_step(state_url)  # cloned in the command, not migrated
    _compare(other_url, state_url)
    assert not _made_in_one_step(other_url)  # and the check above tells the two apart


@contextmanager
def _clone_lock(state_url: str) -> Iterator[None]:
    """Hold the lock a clone of the database of ``state_url`` is made under."""
    if state_url.startswith("sqlite"):
        with sqlite_clone_lock(Path(make_url(state_url).database or "")):
            yield
        return
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(POSTGRES_CLONE_LOCK))
            yield
            conn.rollback()
    finally:
        engine.dispose()


@forked
def test_two_commands_cloning_one_new_database_at_once_both_succeed(
    tmp_path: Path, state_url: str, other_url: str
) -> None:
    """Both find the database empty; held at the clone's lock, they go on together: one clones, one finds it made."""
    with _clone_lock(state_url):
        first, second = _upgrade_command(tmp_path, state_url), _upgrade_command(tmp_path, state_url)
        for command in (first, second):
            command.wait_for_line(r"upgrading state database .* from None to")
    for command in (first, second):
        with command:
            assert command.wait() == 0, command.stderr
    assert _made_in_one_step(state_url)
    _compare(other_url, state_url)  # one install row among the rest


@forked
def test_a_command_that_finds_the_database_made_while_it_waited_leaves_it_as_made(
    tmp_path: Path, state_url: str
) -> None:
    """The command looks at the database again under the clone's lock: made meanwhile (here migrated for real by the
    test), it is left as it is, install id included, and Alembic finds it at head."""
    with _clone_lock(state_url):
        command = _upgrade_command(tmp_path, state_url)
        command.wait_for_line(r"upgrading state database .* from None to")
        engine = create_engine(state_url)
        try:
            migrate_for_real(engine)
            with engine.connect() as conn:
                made = conn.execute(text("SELECT install_id FROM install")).scalar_one()
        finally:
            engine.dispose()
    with command:
        assert command.wait() == 0, command.stderr
    assert not _made_in_one_step(state_url)
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT install_id FROM install")).scalars().all() == [made]
    finally:
        engine.dispose()
