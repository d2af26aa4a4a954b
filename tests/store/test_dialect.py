"""The state database's Backend: each capability checked against the real database it describes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from audience_sync.errors import StoreError
from audience_sync.store.dialect import POSTGRESQL, SQLITE, backend, known_backend
from audience_sync.store.engine import create_state_engine


@pytest.fixture
def state_engine(state_url: str) -> Iterator[Engine]:
    engine = create_state_engine(state_url)
    yield engine
    engine.dispose()


def test_the_backend_of_a_bind_and_of_a_name(state_engine: Engine, state_url: str) -> None:
    expected = SQLITE if state_url.startswith("sqlite") else POSTGRESQL
    with state_engine.connect() as conn:
        assert backend(conn) is backend(state_engine) is backend(state_engine.dialect) is expected
    assert backend(expected.name) is expected
    assert known_backend("mysql") is None
    with pytest.raises(StoreError, match="must be SQLite or PostgreSQL, not mysql"):
        backend("mysql")


def test_each_capability_is_what_the_database_does(state_engine: Engine) -> None:
    b = backend(state_engine)
    with state_engine.connect() as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE t (x text)")
        try:
            with conn.begin_nested():
                conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": "a\x00b"})
            held_nul = conn.exec_driver_sql("SELECT x FROM t").scalar_one() == "a\x00b"
        except (SQLAlchemyError, ValueError):
            held_nul = False
        assert b.text_holds_nul is held_nul
        # a declared length: enforced by PostgreSQL, only a name to SQLite
        conn.exec_driver_sql("CREATE TEMPORARY TABLE v (x varchar(2))")
        try:
            with conn.begin_nested():
                conn.exec_driver_sql("INSERT INTO v VALUES ('abc')")
            ignored = True
        except SQLAlchemyError:
            ignored = False
        assert b.text_lengths_ignored is ignored
        # JSON as a type: a cast that parses (PostgreSQL) or a numeric affinity that turns '{}' into 0 (SQLite)
        assert (conn.exec_driver_sql("SELECT CAST('{\"a\": 1}' AS JSON)").scalar_one() == {"a": 1}) is b.typed_json
        raw = conn.connection.driver_connection
        assert raw is not None and hasattr(raw.cursor(), "copy") is b.bulk_copy  # psycopg's COPY
        assert b.embedded is (state_engine.url.get_backend_name() == "sqlite")
        assert b.advisory_locks is (
            not b.embedded and conn.exec_driver_sql("SELECT pg_try_advisory_lock(42)").scalar_one() is True
        )
        if b.advisory_locks:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(42)")
        # an unfiltered DELETE: SQLite clears the table's b-tree in one step (the Clear opcode), rows unvisited
        steps = [str(r[1]) for r in conn.exec_driver_sql("EXPLAIN DELETE FROM t")] if b.embedded else []
        assert ("Clear" in steps) is b.truncating_delete
        conn.rollback()


def test_an_embedded_file_engine_gets_its_pragmas(tmp_path: Path) -> None:
    engine = create_state_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("SELECT as_user_id(' 7 ')").scalar_one() == " 7 "
    finally:
        engine.dispose()
