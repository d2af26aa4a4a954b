"""Landing (a source's raw rows moved in bulk into the state database, then pushed down) stages exactly what
streaming the same queries does, and falls back to streaming, with the streamed path's own errors, otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audience_sync.errors import SourceError
from audience_sync.run.sync import run_sync
from tests.sources.test_pushdown import BODY, PG_ROWS, _compare, _config, _pg_exec, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

LAND_LOG = "audience_sync.run.land"


def _landed(caplog: pytest.LogCaptureFixture) -> set[str]:
    """Computations that were landed in the state database and pushed down from there."""
    return {
        r.getMessage().split(":")[0] for r in caplog.records if r.name == LAND_LOG and ": landed " in r.getMessage()
    }


def _piped(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Computations staged straight into ``staging`` from the source's ``COPY`` (PostgreSQL to PostgreSQL), with
    how the rows were read."""
    return {
        m.split(":")[0]: m.split("read with ")[1].rstrip(")")
        for m in (r.getMessage() for r in caplog.records if r.name == LAND_LOG)
        if " rows straight into staging " in m
    }


def _fallbacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LAND_LOG and "stream" in r.getMessage()]


PG_CASTS = {
    "text": "value",
    "varchar": "value",
    "bigint": "length(value)",
    "smallint": "length(value)",
    "boolean": "length(value) > 1",
    "double precision": "length(value) / 4.0",
    "numeric": "length(value) / 4.0",
    "jsonb": "to_jsonb(value)",
}


def typed_views(casts: dict[str, str]) -> list[str]:
    """``CREATE VIEW src_<i>``: the raw rows with the value cast to each type of ``casts`` (type -> expression)."""
    return [
        f"CREATE VIEW src_{i} AS SELECT user_id, email, ({cast})::{value_type} AS value FROM raw"
        for i, (value_type, cast) in enumerate(casts.items())
    ]


def typed_traits(casts: dict[str, str]) -> str:
    """The audience of :data:`BODY` and one trait per type of ``casts``, ``score_<i>`` reading ``src_<i>``."""
    audience = BODY[: BODY.index("[[computed_traits]]")].replace("FROM src", "FROM src_0")
    return audience + "".join(
        f'[[computed_traits]]\nname = "Score {i}"\nsql = "SELECT user_id, email, value FROM src_{i}"\n'
        for i in range(len(casts))
    )


def _pg_load_all(url: str) -> None:
    _pg_exec(
        url,
        "CREATE TABLE raw (user_id text, email text, value text)",
        PG_ROWS.replace("INSERT INTO src", "INSERT INTO raw"),
        *typed_views(PG_CASTS),
    )


def _pg_change(url: str) -> None:
    _pg_exec(
        url,
        "DELETE FROM raw WHERE user_id = 'u1'",
        "UPDATE raw SET value = 'changed' WHERE user_id = 'u5'",
        "INSERT INTO raw VALUES ('u11', 'new@x.io', 'hello')",
    )


def _sqlite_state(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'state.db'}"


@pytest.mark.postgres
@pytest.mark.parametrize("state", ["postgres", "sqlite"])
def test_a_postgres_source_landed_by_copy_stages_what_streaming_stages(
    pg_schema_url: Any, tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL source in another schema (another URL): its rows are copied into the state (PostgreSQL: as
    COPY gives them; SQLite: read as CSV by Arrow) and pushed down; snapshot, outbox, lines and source figures are
    those of streaming, for a trait of every value type at once. Types the pushdown does not render as Python
    would are streamed."""
    caplog.set_level("INFO", "audience_sync.run")
    state_for = pg_schema_url if state == "postgres" else _sqlite_state
    _compare(state_for, tmp_path, _pg_load_all, _pg_change, pg_schema_url, typed_traits(PG_CASTS))
    types = list(PG_CASTS)
    streamed = {"double precision", "numeric", "jsonb"} | ({"boolean"} if state == "sqlite" else set())
    assert _landed(caplog) == {"members"} | {f"score_{i}" for i, t in enumerate(types) if t not in streamed}
    # PostgreSQL state: nothing landed in a table, the source's normalised COPY piped into staging; PG_ROWS
    # repeats u3, so each computation's rows were settled by the source's window
    assert _piped(caplog) == (
        dict.fromkeys(_landed(caplog), "COPY, repeated users settled on the source") if state == "postgres" else {}
    )
    fallbacks = _fallbacks(caplog)
    for i, value_type in enumerate(types):
        if value_type in streamed:
            assert any(f"score_{i}: streaming (column 'value' has PostgreSQL type" in m for m in fallbacks), value_type


@pytest.mark.postgres
def test_each_landing_is_planned_for_its_own_table(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every landing creates the landed table anew on the pooled connection, with its computation's columns. A
    statement psycopg prepared once its text had run five times (the pushdown's probe of the table) must not be
    used for a table of another shape: nine audiences, then a trait with a value column, are all landed."""
    caplog.set_level("INFO", "audience_sync.run")
    state, source = pg_schema_url(tmp_path), pg_schema_url(tmp_path)
    _pg_exec(
        source,
        "CREATE TABLE src AS SELECT 'u' || i AS user_id, 'e' || i || '@x.io' AS email, i::bigint AS value "
        "FROM generate_series(1, 20) AS i",
    )
    audiences = "".join(f'[[audiences]]\nname = "A{i}"\nsql = "SELECT user_id, email FROM src"\n' for i in range(9))
    body = audiences + '[[computed_traits]]\nname = "Score"\nsql = "SELECT user_id, email, value FROM src"\n'
    result = run_sync(_config(state, tmp_path, body, None, source))
    assert result.status == "succeeded" and result.counts["sent"] == 200
    assert _landed(caplog) == {f"a{i}" for i in range(9)} | {"score"}
    assert not _fallbacks(caplog)


#: user id expressions of every kind a PostgreSQL source can give: integers of each width, a UUID, a varchar
IDS = [
    "abs(hashtext(user_id))",
    "(abs(hashtext(user_id)) % 30000)::smallint",
    "abs(hashtext(user_id))::bigint * 1000000",
    "md5(coalesce(user_id, 'x'))::uuid",
    "user_id::varchar(40)",
]


def per_id(ids: list[str]) -> str:
    """The audience and the trait of :data:`BODY` once per entry of ``ids``: ``members_<i>`` and ``score_<i>``
    read the view ``src_<i>``, whose user ids are ``ids[i]``."""
    return "".join(
        BODY.replace("FROM src", f"FROM src_{i}")
        .replace('name = "Members"', f'name = "Members {i}"')
        .replace('name = "Score"', f'name = "Score {i}"')
        for i in range(len(ids))
    )


def _pg_load_ids(url: str) -> None:
    _pg_exec(
        url,
        "CREATE TABLE raw (user_id text, email text, value text)",
        PG_ROWS.replace("INSERT INTO src", "INSERT INTO raw"),
        *(
            f"CREATE VIEW src_{i} AS SELECT {uid} AS user_id, email, length(value)::bigint AS value FROM raw"
            for i, uid in enumerate(IDS)
        ),
    )


@pytest.mark.postgres
@pytest.mark.parametrize("state", ["postgres", "sqlite"])
def test_integer_and_uuid_ids_are_landed_as_streaming_reads_them(
    pg_schema_url: Any, tmp_path: Path, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of user id of :data:`IDS` at once, an audience and a trait each."""
    caplog.set_level("INFO", "audience_sync.run")
    state_for = pg_schema_url if state == "postgres" else _sqlite_state
    _compare(state_for, tmp_path, _pg_load_ids, _pg_change, pg_schema_url, per_id(IDS))
    assert _landed(caplog) == {f"{name}_{i}" for i in range(len(IDS)) for name in ("members", "score")}
    assert set(_piped(caplog)) == (_landed(caplog) if state == "postgres" else set())


@pytest.mark.postgres
def test_a_uuid_value_is_streamed_into_sqlite_and_fails_as_streaming_does(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    source = pg_schema_url(tmp_path)
    _pg_exec(
        source, "CREATE TABLE src AS SELECT 'u1'::text AS user_id, NULL::text AS email, gen_random_uuid() AS value"
    )
    for push in (None, False):
        with pytest.raises(SourceError, match="user 'u1' has a value of unusable type: unsupported value type UUID"):
            run_sync(_config(_sqlite_state(tmp_path), tmp_path, BODY, push, source))
    assert any("score: streaming (column 'value' has PostgreSQL type 2950" in m for m in _fallbacks(caplog))


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
@pytest.mark.parametrize("push", [None, False])
def test_a_landed_source_reports_a_conflict_and_a_long_id_as_streaming_does(
    pg_schema_url: Any, tmp_path: Path, push: bool | None, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state = pg_schema_url(tmp_path) if kind == "postgres" else _sqlite_state(tmp_path)
    source = pg_schema_url(tmp_path)
    _pg_exec(
        source,
        "CREATE TABLE src (user_id text, email text, value bigint)",
        "INSERT INTO src VALUES ('u1', NULL, 1), ('u2', NULL, 5), ('u1', NULL, 2), ('u1', NULL, 3)",
    )
    config = _config(state, tmp_path, BODY, push, source)
    with pytest.raises(SourceError, match=r"trait 'Score' \(score\): user 'u1' has two different values \(1 and 3\)"):
        run_sync(config)
    assert _landed(caplog) == ({"members", "score"} if push is None else set())
    long_id = "x" * 2001
    _pg_exec(source, "DELETE FROM src", f"INSERT INTO src VALUES ('{long_id}', NULL, 1), ('u2', 'b@x.io', 5)")
    result = run_sync(config)
    assert result.status == "succeeded"
    assert result.counts["sources"]["score"] == {
        "rows": 2,
        "members": 1,
        "null_user_ids": 0,
        "null_values": 0,
        "skipped": 1,
    }
    if push is None:  # landed, met a row to skip, rolled back: the streamed path reports the user
        met = "streaming, to report 1 rows it cannot stage" if kind == "postgres" else "score: landing failed"
        assert any(met in m for m in _fallbacks(caplog))


@pytest.mark.postgres
def test_a_failing_query_is_streamed_and_fails_with_the_streamed_error(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state, source = pg_schema_url(tmp_path), pg_schema_url(tmp_path)
    _pg_exec(source, "CREATE TABLE src (user_id text, email text, value bigint)")
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT nope AS user_id FROM src"\n'
    with pytest.raises(SourceError, match=r'audience \'Members\' \(members\): query failed: .*column "nope" does not'):
        run_sync(_config(state, tmp_path, body, False, source))
    with pytest.raises(SourceError, match=r'audience \'Members\' \(members\): query failed: .*column "nope" does not'):
        run_sync(_config(state, tmp_path, body, None, source))
    assert any("landing failed" in m and "nope" in m for m in _fallbacks(caplog))
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT email FROM src"\n'
    with pytest.raises(SourceError, match="the query has no 'user_id' column"):
        run_sync(_config(state, tmp_path, body, None, source))


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_an_empty_result_is_landed_as_no_rows(
    pg_schema_url: Any, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", "audience_sync.run")
    state = pg_schema_url(tmp_path) if kind == "postgres" else _sqlite_state(tmp_path)
    source = pg_schema_url(tmp_path)
    _pg_exec(source, "CREATE TABLE src (user_id text, email text, value bigint)")
    result = run_sync(_config(state, tmp_path, BODY, None, source))
    assert result.status == "succeeded"
    assert result.counts["sources"]["score"] == dict.fromkeys(
        ["rows", "members", "null_user_ids", "null_values", "skipped"], 0
    )
    assert _landed(caplog) == {"members", "score"}


def test_copy_blocks_read_as_one_file_whatever_the_buffer() -> None:
    """Arrow reads the COPY blocks (one row each) through buffers of its own size: a row may span two reads."""
    import io

    from audience_sync.sources.landing import _Blocks

    blocks = [b"u1,a\n", memoryview(b'"x\ny",\n'), b"", b"u3,\xc3\xa9\n"]
    for size in (1, 2, 3, 7, 1 << 16):
        assert io.BufferedReader(_Blocks(iter(blocks)), buffer_size=size).read() == b"".join(map(bytes, blocks))


#: a source that repeats users in every way (email first null, then given; values equal, then different, then
#: back to the first), with rows without an id or a value, and its order fixed by ``ord``
REPEATS = (
    "CREATE TABLE src (ord int, user_id text, email text, value bigint)",
    "INSERT INTO src VALUES (1, 'r1', NULL, 5), (2, 'r2', 'two@x.io', 6), (3, 'r1', 'one@x.io', 5), "
    "(4, 'r1', 'late@x.io', 5), (5, NULL, 'none@x.io', 1), (6, 'r3', NULL, NULL), (7, 'r3', 'three@x.io', 9), "
    "(8, '  ', NULL, 1), (9, 'r4', '  ', 4), (10, 'r4', 'four@x.io', 4), (11, 'r5', NULL, NULL)",
)
REPEATS_BODY = """
[[audiences]]
name = "Members"
sql = "SELECT user_id, email FROM src ORDER BY ord"
[[computed_traits]]
name = "Score"
sql = "SELECT user_id, email, value FROM src ORDER BY ord"
[[computed_traits]]
name = "Backwards"
sql = "SELECT user_id, email, value FROM src ORDER BY ord DESC"
"""


@pytest.mark.postgres
def test_repeated_users_piped_from_the_source_keep_what_streaming_keeps(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Users repeated in the query's order, forwards and backwards: the first value, the first email given, the
    rows without an id or a value counted, as streaming stores, sends and counts them; the second run repeats no
    user and is piped in one pass."""
    caplog.set_level("INFO", "audience_sync.run")

    def change(url: str) -> None:
        _pg_exec(
            url, "DELETE FROM src WHERE ord IN (1, 3, 4, 6, 10)", "INSERT INTO src VALUES (12, 'r6', 'six@x.io', 3)"
        )

    _compare(pg_schema_url, tmp_path, lambda url: _pg_exec(url, *REPEATS), change, pg_schema_url, REPEATS_BODY)
    settled = [r.getMessage() for r in caplog.records if "repeated users settled on the source" in r.getMessage()]
    once = [r.getMessage() for r in caplog.records if r.getMessage().endswith("read with COPY)")]
    assert {m.split(":")[0] for m in settled} == {m.split(":")[0] for m in once} == {"members", "score", "backwards"}
    assert len(settled) == len(once) == 3


@pytest.mark.postgres
def test_a_repeated_user_is_settled_on_the_source_as_a_pushdown_settles_it(pg_schema_url: Any, tmp_path: Path) -> None:
    """Which repeat wins: the first value and the first email given in the query's order, and the last value that
    differs from the first reported as the conflict."""
    state, source = pg_schema_url(tmp_path), pg_schema_url(tmp_path)
    _pg_exec(source, *REPEATS)
    body = REPEATS_BODY.replace("ORDER BY ord DESC", "WHERE ord <> 10 ORDER BY ord DESC")
    result = run_sync(_config(state, tmp_path, body, None, source))
    assert result.status == "succeeded", result.error
    snapshot = "SELECT user_id, email, value FROM snapshot WHERE computation_key = :key ORDER BY user_id"
    assert _snapshot(state, snapshot, "score") == [
        ("r1", "one@x.io", "5"),
        ("r2", "two@x.io", "6"),
        ("r3", "three@x.io", "9"),
        ("r4", "four@x.io", "4"),
    ]
    assert _snapshot(state, snapshot, "backwards") == [
        ("r1", "late@x.io", "5"),
        ("r2", "two@x.io", "6"),
        ("r3", "three@x.io", "9"),
        ("r4", None, "4"),
    ]
    assert result.counts["sources"]["score"] == {
        "rows": 11,
        "members": 4,
        "null_user_ids": 2,
        "null_values": 2,
        "skipped": 0,
    }
    _pg_exec(source, "INSERT INTO src VALUES (13, 'r2', NULL, 7), (14, 'r2', NULL, 6), (15, 'r2', NULL, 8)")
    with pytest.raises(SourceError, match=r"trait 'Score' \(score\): user 'r2' has two different values \(6 and 8\)"):
        run_sync(_config(state, tmp_path, body, None, source))
    assert _snapshot(state, "SELECT count(*) FROM staging", "") == [(0,)]


def _snapshot(url: str, sql: str, key: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), {"key": key} if key else {})]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_query_failing_in_the_middle_of_its_pipe_stages_nothing_and_fails_as_streaming_does(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The source's query fails after some of its rows were copied into staging: they are rolled back, and the
    streamed path runs it again and reports its error, naming the computation."""
    caplog.set_level("INFO", "audience_sync.run")
    state, source = pg_schema_url(tmp_path), pg_schema_url(tmp_path)
    _pg_exec(source, "CREATE TABLE src AS SELECT g, 'u' || g AS user_id FROM generate_series(1, 5000) AS g")
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT user_id || (0 * (1 / (4000 - g))) AS user_id FROM src"\n'
    with pytest.raises(SourceError, match=r"audience 'Members' \(members\): query failed: .*division by zero"):
        run_sync(_config(state, tmp_path, body, None, source))
    assert any("members: landing failed" in m and "division by zero" in m for m in _fallbacks(caplog))
    assert _snapshot(state, "SELECT count(*) FROM staging", "") == [(0,)]


@pytest.mark.postgres
@pytest.mark.parametrize("write_bytes", [1, 20, 1 << 16])
def test_copy_staging_writes_every_row_whatever_the_writes_and_counts_the_marked(
    pg_schema_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_bytes: int
) -> None:
    """The rows piped into staging are gathered into writes of the driver: a row may end a write or not, and the
    marked rows between them are counted, never written."""
    from sqlalchemy import create_engine

    from audience_sync.store import landing
    from audience_sync.store.migrate import upgrade

    monkeypatch.setattr(landing, "WRITE_BYTES", write_bytes)
    engine = create_engine(pg_schema_url(tmp_path))
    try:
        upgrade(engine)
        blocks: list[bytes | memoryview] = [
            b"-1\tk\t\\N\t\\N\t1\n",
            b"7\tk\tu1\ta@x.io\t1\n",
            memoryview(b'7\tk\tu2\t\\N\t"tab\\there"\n'),
            b"-2\tk\tu3\t\\N\t\\N\n",
            b"-1\tk\t\\N\te@x.io\t1\n",
            b"7\tk\tu4\t\\N\t2\n",
            b"-3\tk\txxx\t\\N\t1\n",
        ]
        with engine.begin() as conn:
            staged, marked = landing.copy_staging(
                conn, ["run_id", "computation_key", "user_id", "email", "value"], blocks
            )
            rows = conn.exec_driver_sql("SELECT user_id, email, value FROM staging ORDER BY user_id").all()
        assert (staged, dict(marked)) == (3, {1: 2, 2: 1, 3: 1})
        assert [tuple(r) for r in rows] == [("u1", "a@x.io", "1"), ("u2", None, '"tab\there"'), ("u4", None, "2")]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_stop_between_the_two_passes_of_a_pipe_stops_the_second(
    pg_schema_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run is asked to stop once the source has sent its last row of the first pass, before the state reports
    the repeated user: the source's query is cancelled while idle, yet the second pass (repeats settled) does not
    run, and the landing ends as a stopped one does, nothing staged."""
    import threading

    import psycopg
    from sqlalchemy import create_engine

    from audience_sync.errors import RunStopped
    from audience_sync.run import land
    from audience_sync.sources import SourceStats
    from audience_sync.store import landing
    from audience_sync.store.migrate import upgrade

    state, source = pg_schema_url(tmp_path), pg_schema_url(tmp_path)
    _pg_exec(source, *REPEATS)
    comp = next(c for c in _config(state, tmp_path, REPEATS_BODY, None, source).computations if c.key == "score")
    stop, cancelled = threading.Event(), threading.Event()
    cancel_safe = psycopg.Connection.cancel_safe

    def cancel(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> None:
        cancel_safe(self, *args, **kwargs)
        cancelled.set()

    copy_staging = landing.copy_staging

    def stopped_after_the_last_row(conn: Any, names: Any, blocks: Any) -> Any:
        def rows() -> Any:
            yield from blocks
            if not stop.is_set():  # the first pass only
                stop.set()
                assert cancelled.wait(10)  # the source, idle now, was cancelled

        return copy_staging(conn, names, rows())

    monkeypatch.setattr(psycopg.Connection, "cancel_safe", cancel)
    monkeypatch.setattr(landing, "copy_staging", stopped_after_the_last_row)
    state_engine, source_engine = create_engine(state), create_engine(source)
    try:
        upgrade(state_engine)
        move = land.lander(source_engine, None, comp, 1000, stop)
        assert move is not None
        with pytest.raises(RunStopped, match="asked to stop"):
            land.land(state_engine, 1, comp, move, SourceStats(), stop)
        with state_engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM staging").scalar() == 0
    finally:
        state_engine.dispose()
        source_engine.dispose()


@pytest.fixture
def latin1_source(pg_server: str) -> Any:
    """A URL on a new PostgreSQL database whose text is LATIN1, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"as_test_latin1_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )
        yield make_url(pg_server).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_user_id_too_long_in_utf8_is_skipped_from_a_latin1_source_as_streaming_skips_it(
    pg_schema_url: Any, latin1_source: str, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A user id of 1,500 'é' is 1,500 bytes in the source's LATIN1 but 3,000 in UTF-8, over the limit: it is
    skipped and reported, as streaming does, and the other rows, accented, are staged as they read. Such a source
    is streamed: its ``COPY`` would send LATIN1 bytes where UTF-8 is read, and the normalising SQL holds characters
    LATIN1 has not."""
    caplog.set_level("INFO", "audience_sync.run")
    long_id = "\u00e9" * 1500
    _pg_exec(
        latin1_source,
        "CREATE TABLE src (user_id text, email text, value bigint)",
        f"INSERT INTO src VALUES ('{long_id}', NULL, 1), ('u2', 'b@x.io', 5), ('\u00e9t\u00e9', NULL, 7)",
    )
    counts, snapshots = [], []
    for push in (None, False):
        tmp = tmp_path / str(push)
        tmp.mkdir()
        state = pg_schema_url(tmp) if kind == "postgres" else _sqlite_state(tmp)
        result = run_sync(_config(state, tmp, BODY, push, latin1_source))
        assert result.status == "succeeded", result.error
        counts.append(result.counts["sources"]["score"])
        snapshots.append(_snapshot(state, "SELECT user_id, value FROM snapshot WHERE computation_key = :key", "score"))
    assert any("score: streaming (the source's text is LATIN1" in m for m in _fallbacks(caplog))
    assert counts[0] == counts[1] == {"rows": 3, "members": 2, "null_user_ids": 0, "null_values": 0, "skipped": 1}
    assert sorted(snapshots[0]) == sorted(snapshots[1]) == [("u2", "5"), ("\u00e9t\u00e9", "7")]
