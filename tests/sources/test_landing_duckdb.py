"""A DuckDB file as the source (``duckdb:///path``, no SQLAlchemy dialect): its rows are read as Arrow batches and
landed in a SQLite or PostgreSQL state, then pushed down; the same state, messages and figures as streaming them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from audience_sync.errors import ConfigError, SourceError
from audience_sync.run.sync import run_sync
from audience_sync.sources.duck import DuckFile, duckdb_file
from tests.sources.test_landing import _fallbacks, _landed, per_id, typed_traits, typed_views
from tests.sources.test_pushdown import BODY, _compare, _config, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

# (user_id, email, value) as text: blanks of every kind, repeats, and what CSV must quote or escape
ROWS: list[tuple[Any, Any, Any]] = [
    ("u1", "a@x.io", "1"),
    ("  b ", " b@x.io  ", 'x"y\n\u00e9'),
    ("u3", None, "7"),
    ("u3", "c@x.io", "7"),
    (None, "n@x.io", "1"),
    ("", None, "1"),
    ("\t", None, "1"),
    ("\u3000", "\u00a0", "22"),
    ("u4", "  ", None),
    ("u5", "e@x.io", "100%"),
    ("c,1", 'q"e@x.io', 'a,b "c"\r\n\\.'),
    ("\\.", "\\N", ""),
    ("u6", "", "\\"),
    ("é7 😀", None, "NULL"),
]

CASTS = {
    "VARCHAR": "value",
    "BIGINT": "length(value)",
    "INTEGER": "length(value)",
    "UTINYINT": "length(value)",
    "BOOLEAN": "length(value) > 1",
    "DOUBLE": "length(value) / 4.0",
    "DECIMAL(10,2)": "length(value) / 4.0",
    "VARCHAR[]": "[value, value]",
    "TIMESTAMPTZ": "TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_days(length(value))",
}


def _source(tmp: Path) -> str:
    return f"duckdb:///{tmp / 'warehouse.duckdb'}"


def _path(url: str) -> str:
    return url.removeprefix("duckdb:///")


def _load(value_type: str, rows: list[tuple[Any, Any, Any]] = ROWS, uid: str = "user_id") -> Any:
    def load(url: str) -> None:
        with duckdb.connect(_path(url)) as db:
            db.execute("CREATE TABLE raw (user_id VARCHAR, email VARCHAR, value VARCHAR)")
            if rows:
                db.executemany("INSERT INTO raw VALUES (?, ?, ?)", rows)
            db.execute(
                f"CREATE VIEW src AS SELECT {uid} AS user_id, email, ({CASTS[value_type]})::{value_type} AS value "
                "FROM raw"
            )

    return load


def _change(url: str) -> None:
    with duckdb.connect(_path(url)) as db:
        db.execute("DELETE FROM raw WHERE user_id = 'u1'")
        db.execute("UPDATE raw SET value = 'changed' WHERE user_id = 'u5'")
        db.execute("INSERT INTO raw VALUES ('u11', 'new@x.io', 'hello')")


def _sqlite_state(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'state.db'}"


#: value types streamed rather than landed: none of these (``sources/arrow_ingest.py`` renders them all)
STREAMED: set[str] = set()


def _load_all(url: str) -> None:
    """The raw rows, and a view ``src_<i>`` with the value cast to each type of :data:`CASTS`."""
    with duckdb.connect(_path(url)) as db:
        db.execute("CREATE TABLE raw (user_id VARCHAR, email VARCHAR, value VARCHAR)")
        db.executemany("INSERT INTO raw VALUES (?, ?, ?)", ROWS)
        for view in typed_views(CASTS):
            db.execute(view)


def test_a_duckdb_file_landed_in_sqlite_stages_what_streaming_stages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trait of every value type at once: landed (values rendered as canonical JSON in Arrow, booleans too)."""
    caplog.set_level("INFO", "audience_sync.run")
    _compare(_sqlite_state, tmp_path, _load_all, _change, _source, typed_traits(CASTS))
    assert _landed(caplog) == {"members"} | {f"score_{i}" for i, t in enumerate(CASTS) if t not in STREAMED}


@pytest.mark.postgres
def test_a_duckdb_file_landed_in_postgres_stages_what_streaming_stages(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    _compare(pg_schema_url, tmp_path, _load_all, _change, _source, typed_traits(CASTS))
    assert _landed(caplog) == {"members"} | {f"score_{i}" for i, t in enumerate(CASTS) if t not in STREAMED}


def _uuid(i: int) -> str:
    return f"{i:08x}-0000-4000-8000-{i:012d}"


def _change_ids(url: str) -> None:
    with duckdb.connect(_path(url)) as db:
        db.execute(f"DELETE FROM raw WHERE user_id = '{_uuid(1)}'")
        db.execute(f"UPDATE raw SET value = 'changed' WHERE user_id = '{_uuid(5)}'")
        db.execute(f"INSERT INTO raw VALUES ('{_uuid(99)}', 'new@x.io', 'hello')")


#: user id expressions: integers of two widths (landed) and a UUID (streamed)
IDS = {"('x' || user_id)[-12:]::BIGINT": True, "('x' || user_id)[-4:]::SMALLINT": True, "user_id::UUID": False}


def test_integer_ids_are_landed_and_uuids_streamed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of user id of :data:`IDS` at once, an audience and a trait each."""
    caplog.set_level("INFO", "audience_sync.run")
    rows = [(_uuid(i), f"{i}@x.io", str(i % 3)) for i in range(1, 40)] + [(None, None, "1")]

    def load(url: str) -> None:
        with duckdb.connect(_path(url)) as db:
            db.execute("CREATE TABLE raw (user_id VARCHAR, email VARCHAR, value VARCHAR)")
            db.executemany("INSERT INTO raw VALUES (?, ?, ?)", rows)
            for i, uid in enumerate(IDS):
                db.execute(f"CREATE VIEW src_{i} AS SELECT {uid} AS user_id, email, value FROM raw")

    _compare(_sqlite_state, tmp_path, load, _change_ids, _source, per_id(list(IDS)))
    landed = [i for i, is_landed in enumerate(IDS.values()) if is_landed]
    assert _landed(caplog) == {f"{name}_{i}" for i in landed for name in ("members", "score")}


def _state_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return _sqlite_state(tmp_path)
    return str(request.getfixturevalue("pg_schema_url")(tmp_path))


STATES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("kind", STATES)
@pytest.mark.parametrize("push", [None, False])
def test_conflicts_and_rows_to_skip_are_reported_as_streaming_does(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, push: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state, source = _state_for(kind, request, tmp_path), _source(tmp_path)
    _load("BIGINT", [("u1", None, "1"), ("u2", None, "55555"), ("u1", None, "22"), ("u1", None, "333")])(source)
    config = _config(state, tmp_path, BODY, push, source)
    with pytest.raises(SourceError, match=r"trait 'Score' \(score\): user 'u1' has two different values \(1 and 3\)"):
        run_sync(config)
    assert _landed(caplog) == ({"members", "score"} if push is None else set())
    Path(_path(source)).unlink()
    # a NUL byte: SQLite's pushdown fails on it, PostgreSQL refuses it in COPY; both stream and skip the user
    _load("BIGINT", [("u\x00", None, "1"), ("u2", "b@x.io", "5"), ("x" * 2001, None, "1")])(source)
    result = run_sync(config)
    assert result.status == "succeeded"
    figures = {"rows": 3, "members": 1, "null_user_ids": 0, "null_values": 0, "skipped": 2}
    assert result.counts["sources"]["score"] == figures
    if push is None:
        assert any(m.startswith("score: landing failed") or "rows it cannot stage" in m for m in _fallbacks(caplog))


@pytest.mark.parametrize("kind", STATES)
def test_an_unusable_value_and_a_failing_query_fail_as_streaming_does(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state, source = _state_for(kind, request, tmp_path), _source(tmp_path)
    with duckdb.connect(_path(source)) as db:
        db.execute("CREATE TABLE src AS SELECT 'u1' AS user_id, NULL::VARCHAR AS email, '\\x00blob'::BLOB AS value")
    for push in (None, False):
        with pytest.raises(SourceError, match="user 'u1' has a value of unusable type: unsupported value type bytes"):
            run_sync(_config(state, tmp_path, BODY, push, source))
    assert any("score: streaming (column 'value' has DuckDB type BLOB" in m for m in _fallbacks(caplog))
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT nope AS user_id FROM src"\n'
    errors = []
    for push in (None, False):
        with pytest.raises(SourceError, match=r"audience 'Members' \(members\): query failed: Binder Error") as info:
            run_sync(_config(state, tmp_path, body, push, source))
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert any(m.startswith("members: landing failed") for m in _fallbacks(caplog))


def test_duckdb_urls_and_builder_computations(tmp_path: Path) -> None:
    assert duckdb_file(f"duckdb:///{tmp_path / 'w.duckdb'}") == tmp_path / "w.duckdb"
    assert duckdb_file("duckdb:///:memory:") is None
    assert duckdb_file(f"sqlite:///{tmp_path / 'w.db'}") is None
    body = (
        '[events]\ntable = "tracks"\n[profiles]\ntable = "users"\n'
        '[[audiences]]\nname = "Buyers"\ncondition = { performed = "Order", at_least = 2, within = "30d" }\n'
    )
    with pytest.raises(ConfigError, match=r"builder computations .* need a SQLAlchemy source"):
        run_sync(_config(_sqlite_state(tmp_path), tmp_path, body, None, _source(tmp_path)))


@pytest.mark.parametrize("kind", STATES)
def test_a_landing_that_falls_back_leaves_no_table_behind(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """SQLite's driver runs DDL outside the transaction it rolls back: the landed table is dropped all the same,
    so the connection goes back to the pool as it came and the next landing can create it again."""
    from audience_sync.run import land
    from audience_sync.sources import SourceStats
    from audience_sync.sources.landing import land_duckdb
    from audience_sync.store.engine import create_state_engine
    from audience_sync.store.migrate import upgrade

    state, source = _state_for(kind, request, tmp_path), _source(tmp_path)
    _load("BIGINT", [("u\x00", None, "1"), ("u2", None, "5")])(source)
    comp = _config(state, tmp_path, BODY, None, source).computations[0]
    path = duckdb_file(source)
    assert path is not None
    duck, engine = DuckFile(path), create_state_engine(state)
    upgrade(engine)
    try:
        for _ in range(2):
            assert not land.land(engine, 1, comp, lambda conn: land_duckdb(duck, comp, conn, 1), SourceStats())
            with engine.connect() as conn:
                kept = "SELECT count(*) FROM " + (
                    "temp.sqlite_master WHERE name = 'as_landed'"
                    if kind == "sqlite"
                    else "pg_class WHERE relname = 'as_landed' AND relpersistence = 't'"
                )
                assert conn.exec_driver_sql(kept).scalar_one() == 0
                assert conn.exec_driver_sql("SELECT count(*) FROM staging").scalar_one() == 0
    finally:
        duck.close()
        engine.dispose()


@pytest.mark.parametrize("kind", STATES)
def test_an_empty_result_is_landed_as_no_rows(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state, source = _state_for(kind, request, tmp_path), _source(tmp_path)
    _load("BIGINT", [])(source)
    result = run_sync(_config(state, tmp_path, BODY, None, source))
    assert result.status == "succeeded"
    assert result.counts["sources"]["score"] == dict.fromkeys(
        ["rows", "members", "null_user_ids", "null_values", "skipped"], 0
    )
    assert _landed(caplog) == {"members", "score"}


@pytest.mark.parametrize("kind", STATES)
def test_batches_of_a_few_rows_stage_what_one_batch_stages(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeated users across Arrow batches keep their first value and first email: the landed table holds the rows
    in the order of the batches."""
    import dataclasses

    from tests.sources.test_pushdown import _same_install, _state

    caplog.set_level("INFO", "audience_sync.run")
    outcomes = []
    for push, chunk in ((None, 2), (False, 10_000)):
        tmp = tmp_path / f"{push}-{chunk}"
        tmp.mkdir()
        state, source = _state_for(kind, request, tmp), _source(tmp)
        _load("VARCHAR")(source)
        _same_install(state)
        config = dataclasses.replace(_config(state, tmp, BODY, push, source), source_chunk_size=chunk)
        result = run_sync(config)
        assert result.status == "succeeded"
        outcomes.append((_state(state)["snapshot"], result.counts["sources"]))
    assert outcomes[0] == outcomes[1]
    assert _landed(caplog) == {"members", "score"}


#: (DuckDB type, value expression, landed): types the ingest renders, and values it cannot render exactly
MORE = [
    ("HUGEINT", "length(value) * 100000000000000000000000::HUGEINT", True),
    ("UBIGINT", "length(value) + 18446744073709551000::UBIGINT", True),
    ("DATE", "DATE '2026-01-01' + to_days(length(value)::INTEGER)", True),
    ("TIMESTAMP_NS", "TIMESTAMP_NS '2026-01-01 00:00:00.123456' + to_days(length(value))", True),
    ("DOUBLE", "CASE WHEN length(value) > 3 THEN 'nan'::DOUBLE ELSE 1.5 END", False),  # NaN: the user is skipped
    ("TIMESTAMP_NS", "TIMESTAMP_NS '2026-01-01 00:00:00.123456789' + to_days(length(value))", False),
]


@pytest.mark.parametrize("kind", STATES)
def test_more_duckdb_types_land_and_unrenderable_values_stream(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Integers beyond int64, dates and nanosecond timestamps land (other types: ``test_arrow_ingest.py``); a
    NaN (a user streaming skips) and a nanosecond a Python datetime cannot hold are streamed, with the streamed
    path's figures."""
    caplog.set_level("INFO", "audience_sync.run")

    def load(url: str) -> None:
        with duckdb.connect(_path(url)) as db:
            db.execute("CREATE TABLE raw (user_id VARCHAR, email VARCHAR, value VARCHAR)")
            db.executemany("INSERT INTO raw VALUES (?, ?, ?)", ROWS)
            for i, (value_type, cast, _) in enumerate(MORE):
                db.execute(f"CREATE VIEW src_{i} AS SELECT user_id, email, ({cast})::{value_type} AS value FROM raw")

    _compare(
        lambda tmp: _state_for(kind, request, tmp),
        tmp_path,
        load,
        _change,
        _source,
        typed_traits({f"{t} {i}": c for i, (t, c, _) in enumerate(MORE)}),  # one trait per entry of MORE
    )
    assert _landed(caplog) == {"members"} | {f"score_{i}" for i, (_, _, landed) in enumerate(MORE) if landed}
    fallbacks = _fallbacks(caplog)
    assert any("has a NaN or an infinity" in m for m in fallbacks)
    assert any("finer than a microsecond" in m for m in fallbacks)
