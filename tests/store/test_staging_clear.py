"""Clearing a run's staging (store/staging.clear): its rows and skipped rows go, every other run's stay."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from audience_sync.store import staging
from audience_sync.store.engine import create_state_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.staging import SkippedUser


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = create_state_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _stage(engine: Engine, run_id: int, users: int = 3) -> None:
    with engine.begin() as conn:
        for key in ("a", "b"):
            staging.insert_rows(conn, run_id, key, [(f"u{i}", None, "true") for i in range(users)])
        staging.insert_skips(conn, run_id, "a", [SkippedUser("bad", True, "bad", None, "a reason")])


def _left(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            table: [
                tuple(r)
                for r in conn.execute(text(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id ORDER BY run_id"))
            ]
            for table in ("staging", "staging_skips")
        }


def test_a_run_s_clear_leaves_every_other_run_s_rows(engine: Engine) -> None:
    for run_id in (3, 5, 7):
        _stage(engine, run_id)
    with engine.begin() as conn:
        staging.clear(conn, 5)  # runs on both sides of it
    assert _left(engine) == {"staging": [(3, 6), (7, 6)], "staging_skips": [(3, 1), (7, 1)]}
    with engine.begin() as conn:
        staging.clear(conn, 7, "a")  # one computation
    assert _left(engine) == {"staging": [(3, 6), (7, 3)], "staging_skips": [(3, 1)]}
    with engine.begin() as conn:
        staging.clear(conn, 3)  # a run below every other
    assert _left(engine) == {"staging": [(7, 3)], "staging_skips": []}
    with engine.begin() as conn:
        staging.clear(conn, 7)  # the last run: alone in the table
    assert _left(engine) == {"staging": [], "staging_skips": []}


def test_a_run_alone_in_sqlite_staging_empties_it_whole_under_the_write_lock(tmp_path: Path) -> None:
    """The run's rows go with one unfiltered DELETE (SQLite frees the pages without visiting the rows), issued while
    the transaction holds the write lock: no other run can stage a row between the check and the delete."""
    path = tmp_path / "state.db"
    engine = create_state_engine(f"sqlite:///{path}")
    upgrade(engine)
    _stage(engine, 4, users=50)
    attempts: list[str] = []

    def another_run_stages(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if " ".join(statement.split()) != "DELETE FROM staging":
            return
        with sqlite3.connect(path, timeout=0) as other:
            try:
                other.execute("INSERT INTO staging (run_id, computation_key, user_id) VALUES (9, 'a', 'u1')")
                attempts.append("staged")
            except sqlite3.OperationalError as exc:
                attempts.append(str(exc))

    event.listen(engine, "before_cursor_execute", another_run_stages)
    try:
        with engine.begin() as conn:
            staging.clear(conn, 4)
    finally:
        event.remove(engine, "before_cursor_execute", another_run_stages)
    assert attempts == ["database is locked"]
    with engine.connect() as conn:  # and SQLite clears the table whole (no foreign key, no trigger stops it)
        assert "Clear" in [str(r[1]) for r in conn.exec_driver_sql("EXPLAIN DELETE FROM staging")]
    assert _left(engine) == {"staging": [], "staging_skips": []}
    _stage(engine, 9)  # and once it is done, another run stages as before
    assert _left(engine) == {"staging": [(9, 6)], "staging_skips": [(9, 1)]}
    engine.dispose()
