"""A SQLite source file beside a PostgreSQL state (no ATTACH possible): read as Arrow batches with ADBC's SQLite
driver, or built from the SQLAlchemy dialect's rows when that driver is not installed, landed and pushed down;
the same state, messages and figures as streaming it. Columns mixing SQLite storage classes are streamed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from audience_sync.errors import SourceError
from audience_sync.run.sync import run_sync
from audience_sync.sources import arrow_read
from tests.sources.test_landing import _fallbacks, _landed, typed_traits, typed_views
from tests.sources.test_landing_duckdb import ROWS
from tests.sources.test_pushdown import BODY, SQLITE_ROWS, _compare, _config, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

pytestmark = pytest.mark.postgres


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "audience_sync.run.land"]


#: SQLite expressions of the value, typed the way a warehouse table's column would be (one storage class)
CASTS = {
    "text": "value",
    "integer": "CAST(length(value) AS INTEGER)",
    "big integer": "CAST(length(value) AS INTEGER) * 1000000000000",
    "real": "length(value) / 4.0",
    "nulls": "NULL",
}


def _source(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'warehouse.db'}"


def _views(casts: dict[str, str]) -> list[str]:
    return [view.replace("::" + t, "") for view, t in zip(typed_views(casts), casts, strict=True)]


def _load(url: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("CREATE TABLE raw (user_id TEXT, email TEXT, value TEXT)")
        db.executemany("INSERT INTO raw VALUES (?, ?, ?)", ROWS)
        for view in _views(CASTS):
            db.execute(view)
        # a column of every storage class at once, as SQLite allows: streamed
        db.execute("CREATE TABLE mixed (user_id, email, value)")
        db.executemany("INSERT INTO mixed VALUES (?, ?, ?)", SQLITE_ROWS)


def _change(url: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("DELETE FROM raw WHERE user_id = 'u1'")
        db.execute("UPDATE raw SET value = 'changed' WHERE user_id = 'u5'")
        db.execute("INSERT INTO raw VALUES ('u11', 'new@x.io', 'hello')")
        db.execute("UPDATE mixed SET value = 2.5 WHERE user_id = 'u2'")


BODY_ALL = (
    typed_traits(CASTS) + '[[computed_traits]]\nname = "Mixed"\nsql = "SELECT user_id, email, value FROM mixed"\n'
)


@pytest.mark.parametrize("reader", ["adbc", "dialect"])
def test_a_sqlite_file_beside_postgres_state_is_landed_as_it_streams(
    pg_schema_url: Any, tmp_path: Path, reader: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    if reader == "dialect":  # as without the adbc extra: the dialect's rows, built into Arrow batches
        monkeypatch.setattr(arrow_read, "ADBC_DRIVERS", {})
    caplog.set_level("INFO", "audience_sync.run")
    _compare(pg_schema_url, tmp_path, _load, _change, _source, BODY_ALL)
    assert _landed(caplog) == {"members"} | {f"score_{i}" for i in range(len(CASTS))}
    used = {m.split("(read with ")[1].split(")")[0] for m in _messages(caplog) if ": landed " in m}
    assert used == ({"adbc_driver_sqlite"} if reader == "adbc" else {"the sqlite dialect's rows"})
    mixed = "holds SQLite values of types" if reader == "adbc" else "mixes value types"
    assert any(m.startswith("mixed: streaming (column") and mixed in m for m in _fallbacks(caplog))


def test_the_adbc_reader_falls_back_with_the_streamed_errors(pg_schema_url: Any, tmp_path: Path, caplog: Any) -> None:
    """A BLOB value (no JSON form), a failing query and a missing file stream, and fail as streaming does."""
    caplog.set_level("INFO", "audience_sync.run")
    state, source = pg_schema_url(tmp_path), _source(tmp_path)
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        db.execute("CREATE TABLE src (user_id TEXT, email TEXT, value BLOB)")
        db.execute("INSERT INTO src VALUES ('u1', NULL, x'00ff')")
    for push in (None, False):
        with pytest.raises(SourceError, match="user 'u1' has a value of unusable type: unsupported value type bytes"):
            run_sync(_config(state, tmp_path, BODY, push, source))
    assert any("score: streaming (column 'value' has Arrow type binary" in m for m in _fallbacks(caplog))
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT nope AS user_id FROM src"\n'
    errors = []
    for push in (None, False):
        with pytest.raises(
            SourceError, match=r"audience 'Members' \(members\): query failed: .*no such column"
        ) as info:
            run_sync(_config(state, tmp_path, body, push, source))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert any(m.startswith("members: landing failed") for m in _fallbacks(caplog))
    (tmp_path / "warehouse.db").unlink()
    with pytest.raises(SourceError, match=r"query failed: the source file .*warehouse\.db does not exist"):
        run_sync(_config(state, tmp_path, BODY, None, source))
    assert not (tmp_path / "warehouse.db").exists()
    # read-only: ADBC does not create the missing file (nor does the streamed path, which then names it); the
    # landing's failed connect names the source
    failed = f"landing failed (adbc_driver_sqlite could not connect to the source {source}: "
    assert any(failed in m for m in _fallbacks(caplog))


def test_adbc_drivers_for_urls(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    assert arrow_read.adbc_driver(make_url(f"sqlite:///{tmp_path / 'w.db'}")) == "adbc_driver_sqlite"
    assert arrow_read.adbc_driver(make_url("sqlite://")) is None
    assert arrow_read.adbc_driver(make_url("postgresql+psycopg://u@h/db")) == "adbc_driver_postgresql"
    assert arrow_read.adbc_driver(make_url("mysql://u@h/db")) is None


def test_a_postgres_url_is_read_by_its_adbc_driver_in_its_schema(pg_schema_url: Any, tmp_path: Path) -> None:
    """The URL as libpq reads it (driver name dropped, ``options`` kept): the query sees the URL's schema.
    (The lander keeps ``COPY`` for PostgreSQL sources; this is the reader others may use.)"""
    import pyarrow as pa
    from sqlalchemy.engine import make_url

    from tests.sources.test_pushdown import _pg_exec

    url = pg_schema_url(tmp_path)
    _pg_exec(url, "CREATE TABLE src AS SELECT 'u1'::text AS user_id, NULL::text AS email, 5::bigint AS value")
    comp = next(c for c in _config(url, tmp_path, BODY, None, url).computations if c.key == "score")
    source = arrow_read.AdbcSource(make_url(url), "adbc_driver_postgresql")
    try:
        with arrow_read.adbc_batches(source, comp, 100) as (names, batches):
            assert names == ["user_id", "email", "value"]
            assert pa.Table.from_batches(list(batches)).to_pylist() == [{"user_id": "u1", "email": None, "value": 5}]
    finally:
        source.close()
