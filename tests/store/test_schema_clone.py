"""The tests' new state databases are clones of one migrated once (``tests/schema_clone.py``): a clone must be
the database the migrations make, table for table, index for index, row for row, with an install id of its own."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

from audience_sync.store import migrate
from audience_sync.store.engine import create_state_engine
from tests.schema_clone import ENABLED, migrate_for_real

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
