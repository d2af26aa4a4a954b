"""Pushdown (queries run inside the state database) stages exactly what streaming the same queries does."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audience_sync.config import parse_config
from audience_sync.errors import ConfigError, SourceError
from audience_sync.run.sync import run_sync
from audience_sync.sources import pushdown
from tests.harness import PG_URL

# (user_id, email, value): blanks of every kind, repeats (email only on a later row), odd values
SQLITE_ROWS: list[tuple[Any, Any, Any]] = [
    ("u1", "a@x.io", 1),
    ("u2", "  b@x.io ", 1.0),
    ("u3", None, 0.1),
    ("u3", "c@x.io", 0.1),
    (7, "seven@x.io", 'text with "quotes" and \n\t\x01 é 😀'),
    (8.0, None, 0),
    (9.5, None, -3),
    (None, "nobody@x.io", 1),
    ("", None, 1),
    ("\t\u00a0\u2003", None, 1),
    ("u4", "   ", None),
    ("u5", "e@x.io", 12345678901234567),
    ("u6", None, 1e16),
    ("u7", None, 1e15),
    ("u8", None, "[1, 2]"),
    ("u9", None, True),
    ("u10", "", ""),
    # padding only at one end, of every kind, and text that starts or ends outside printable ASCII
    (" u11", "f@x.io\u00a0", 1),
    ("u12\u3000", "\x1cg@x.io", 1),
    ("é13", "h i@x.io ", 1),
    ("u14~", "~@é", 1),
    ("u15\x85", "\u2028", 1),
]


def _rows(engine_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(engine_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _state(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "snapshot": _rows(
            url,
            "SELECT destination, computation_key, user_id, value, email, run_id FROM snapshot "
            "ORDER BY destination, computation_key, user_id",
        ),
        "diffs": _rows(
            url,
            "SELECT run_id, destination, computation_key, user_id, email, change, old_value, new_value, "
            "base_run_id, message_id, status FROM diffs ORDER BY run_id, computation_key, user_id, change",
        ),
    }


def _config(url: str, tmp: Path, body: str, push: bool | None, source: str | None = None) -> Any:
    """``push`` None: no ``pushdown`` setting (the default: pushed down, or landed, whenever that can be done)."""
    source_line = f'url = "{source}"\n' if source else ""
    push_line = "" if push is None else f"pushdown = {str(push).lower()}\n"
    return parse_config(
        f'[state]\nurl = "{url}"\n[source]\n{source_line}{push_line}'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp / "out.jsonl"}"\n' + body,
        path=str(tmp / "c.toml"),
        environ={},
    )


def _lines(tmp: Path) -> list[tuple[str, str]]:
    """The calls written, without their timestamps, sorted: a user's calls for several computations of one change
    class come in the order the diff numbered them, which follows the database's plan for that statement."""
    import json

    out = []
    for line in (tmp / "out.jsonl").read_text(encoding="utf-8").split("\n")[:-1]:  # lines end at \n only
        call = json.loads(line)
        call.pop("timestamp")
        out.append((str(call.get("userId")), json.dumps(call, sort_keys=True)))
    return sorted(out)


BODY = """
[[audiences]]
name = "Members"
sql = "SELECT user_id, email FROM src;"
[[computed_traits]]
name = "Score"
sql = "SELECT user_id AS USER_ID, email, value FROM src WHERE value IS NOT NULL OR email LIKE ' %'"
"""


def _streamed(caplog: pytest.LogCaptureFixture) -> set[str]:
    """Computations that fell back to streaming although pushdown was on."""
    return {
        r.getMessage().split(":")[0]
        for r in caplog.records
        if r.name == "audience_sync.run.stage" and "stream" in r.getMessage()
    }


def _same_install(url: str) -> None:
    """Give the state database the install id every state of these comparisons has, so message ids compare too."""
    from audience_sync.store.migrate import upgrade

    engine = create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE install SET install_id = 'pushdown-or-streaming'"))
    engine.dispose()


def _compare(
    make_url_for: Any, tmp_path: Path, load: Any, change: Any, source_for: Any = None, body: str | None = None
) -> None:
    """Run the same two syncs with pushdown and with streaming; everything they store and send must agree.
    ``source_for(tmp)`` gives the source's URL when it is not the state database (the default setting then
    pushes down what can be: ``pushdown = true`` is for the state database and attached files only). ``body``:
    the computations, :data:`BODY` by default."""
    results: dict[bool | None, Any] = {}
    for push in (None if source_for else True, False):
        tmp = tmp_path / str(push)
        tmp.mkdir()
        url = make_url_for(tmp)
        source = source_for(tmp) if source_for else url
        load(source)
        _same_install(url)
        config = _config(url, tmp, body or BODY, push, source if source_for else None)
        first = run_sync(config)
        change(source)
        second = run_sync(config)
        assert first.status == second.status == "succeeded", (first.error, second.error)
        results[push] = (
            _state(url),
            _lines(tmp),
            first.counts["sources"],
            second.counts["sources"],
        )
    assert results[None if source_for else True] == results[False]
    assert results[False][0]["snapshot"]  # the comparison compared something


def _sqlite_load(rows: list[tuple[Any, Any, Any]]) -> Any:
    def load(url: str) -> None:
        with sqlite3.connect(make_url(url).database or "") as db:
            db.execute("CREATE TABLE src (user_id, email, value)")
            db.executemany("INSERT INTO src VALUES (?, ?, ?)", rows)

    return load


def _sqlite_change(url: str) -> None:
    with sqlite3.connect(make_url(url).database or "") as db:
        db.execute("DELETE FROM src WHERE user_id IN ('u1', 'u5')")
        db.execute("UPDATE src SET value = 2.5 WHERE user_id = 'u2'")
        db.execute("INSERT INTO src VALUES ('u11', 'new@x.io', 'hello')")


def test_sqlite_pushdown_matches_streaming(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "audience_sync.run.stage")
    _compare(lambda tmp: f"sqlite:///{tmp / 'one.db'}", tmp_path, _sqlite_load(SQLITE_ROWS), _sqlite_change)
    assert not _streamed(caplog)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16be", "UTF-16le"])
def test_the_sqlite_pushdown_trims_as_python_does_in_every_text_encoding(tmp_path: Path, encoding: str) -> None:
    """In UTF-16 a text's last byte is not its last character's (U+2028 and U+205F end in the bytes of '(' and
    '_' in big-endian): the pushed-down ids and emails are what Python makes of them in every encoding."""
    from audience_sync.sources import SourceStats, normalize
    from audience_sync.store.engine import create_state_engine

    path = tmp_path / "one.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA encoding = '{encoding}'")
        db.execute("CREATE TABLE src (user_id, email, value)")  # the encoding is fixed by the first table
        rows = [*SQLITE_ROWS, ("u16\u205f", "p@x.io\u2028", 1), ("u17\u2028", "q@x.io\u205f", 1), ("u18", "r@x.io", 1)]
        db.executemany("INSERT INTO src VALUES (?, ?, ?)", rows)
    comp = _config(f"sqlite:///{path}", tmp_path, BODY, True).computations[0]
    engine = create_state_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA encoding").scalar_one() == encoding
            plan = pushdown.plan(conn, comp)
            assert plan is not None
            staged = [tuple(r) for r in conn.exec_driver_sql(plan.driver_sql(conn.dialect, plan.staged))]
    finally:
        engine.dispose()
    assert staged == normalize(comp, [(u, e, None) for u, e, _v in rows], SourceStats())


def test_a_row_without_a_user_id_is_left_out_whatever_its_email_and_value(tmp_path: Path) -> None:
    """SQLite stages the rows of a pushdown with their emails and values computed before the id is looked at: an
    email with a NUL byte, or a value with no JSON form, on a row without an id fails the pushdown, and streaming
    then stages what it stages of every other row."""
    rows = [(None, "a\x00b@x.io", 1), ("", None, float("nan")), ("u1", "u1@x.io", 2), (None, None, None)]
    _compare(lambda tmp: f"sqlite:///{tmp / 'one.db'}", tmp_path, _sqlite_load(rows), _sqlite_change)


def test_an_attached_sqlite_file_stages_what_streaming_stages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The source in a SQLite file of its own, attached to the SQLite state: pushed down, and the same state,
    messages and source figures as streaming it."""
    caplog.set_level("INFO", "audience_sync.run.stage")
    _compare(
        lambda tmp: f"sqlite:///{tmp / 'state.db'}",
        tmp_path,
        _sqlite_load(SQLITE_ROWS),
        _sqlite_change,
        lambda tmp: f"sqlite:///{tmp / 'warehouse.db'}",
    )
    assert not _streamed(caplog)


@pytest.mark.parametrize("push", [True, False])
def test_an_attached_file_reports_a_conflict_and_an_unusable_value_as_streaming_does(
    tmp_path: Path, push: bool
) -> None:
    state, source = f"sqlite:///{tmp_path / 'state.db'}", f"sqlite:///{tmp_path / 'warehouse.db'}"
    _sqlite_load([("u1", None, 1), ("u2", None, 5), ("u1", None, 2), ("u1", None, 3)])(source)
    with pytest.raises(SourceError, match=r"trait 'Score' \(score\): user 'u1' has two different values \(1 and 3\)"):
        run_sync(_config(state, tmp_path, BODY, push, source))
    (tmp_path / "warehouse.db").unlink()
    _sqlite_load([("u1", None, 1), ("u2", None, b"\x00blob")])(source)
    with pytest.raises(SourceError, match="user 'u2' has a value of unusable type: unsupported value type bytes"):
        run_sync(_config(state, tmp_path, BODY, push, source))


def test_a_source_file_whose_tables_the_state_hides_is_streamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite finds an unqualified name in the state before an attached file: a source with a table named like
    one of the state's (here ``snapshot``) would be read wrongly if pushed down, so it is streamed, and a
    missing source file is left to the streamed path to report."""
    caplog.set_level("INFO", "audience_sync.run.stage")
    state, source = f"sqlite:///{tmp_path / 'state.db'}", f"sqlite:///{tmp_path / 'warehouse.db'}"
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        db.execute("CREATE TABLE snapshot (user_id, email)")
        db.execute("INSERT INTO snapshot VALUES ('u1', 'a@x.io'), ('u2', NULL)")
    body = '[[audiences]]\nname = "Members"\nsql = "SELECT user_id, email FROM snapshot"\n'
    result = run_sync(_config(state, tmp_path, body, True, source))
    assert result.status == "succeeded" and result.counts["sources"]["members"]["members"] == 2
    assert any("tables named like the source's (snapshot)" in r.getMessage() for r in caplog.records)
    (tmp_path / "warehouse.db").unlink()
    with pytest.raises(SourceError, match=r"the source file .*warehouse\.db does not exist"):
        run_sync(_config(state, tmp_path, body, True, source))
    assert any("the source file" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


def test_the_attached_file_is_detached_before_the_connection_is_reused(tmp_path: Path) -> None:
    from audience_sync.store.attach import attached
    from audience_sync.store.engine import create_state_engine

    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        db.execute("CREATE TABLE t (x)")
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with pytest.raises(RuntimeError), attached(engine, tmp_path / "warehouse.db") as conn:
            conn.exec_driver_sql("CREATE TABLE main.u (x)")  # a transaction left open by an error
            assert {r[1] for r in conn.exec_driver_sql("PRAGMA database_list")} == {"main", "as_source"}
            raise RuntimeError
        for _ in range(3):  # whichever pooled connection comes back
            with engine.connect() as conn:
                assert {r[1] for r in conn.exec_driver_sql("PRAGMA database_list")} == {"main"}
        with pytest.raises(FileNotFoundError), attached(engine, tmp_path / "missing.db"):
            pass
        assert not (tmp_path / "missing.db").exists()
    finally:
        engine.dispose()


def test_sqlite_pushdown_is_used_and_counts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    _sqlite_load(SQLITE_ROWS)(url)
    config = _config(url, tmp_path, BODY, True)
    result = run_sync(config)
    members = result.counts["sources"]["members"]
    assert members == {"rows": 22, "members": 18, "null_user_ids": 3, "null_values": 0, "skipped": 0}
    assert result.counts["sources"]["score"]["null_values"] == 1


@pytest.mark.parametrize("push", [True, False])
def test_sqlite_trait_conflict_is_the_same_error(tmp_path: Path, push: bool) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    _sqlite_load([("u1", None, 1), ("u2", None, 5), ("u1", None, 2), ("u1", None, 3)])(url)
    config = _config(url, tmp_path, BODY, push)
    with pytest.raises(SourceError) as info:
        run_sync(config)
    assert "trait 'Score' (score): user 'u1' has two different values (1 and 3)" in str(info.value)


@pytest.mark.parametrize("push", [True, False])
def test_sqlite_unusable_value_is_the_same_error(tmp_path: Path, push: bool) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    _sqlite_load([("u1", None, 1), ("u2", None, b"\x00blob")])(url)
    with pytest.raises(SourceError, match="user 'u2' has a value of unusable type: unsupported value type bytes"):
        run_sync(_config(url, tmp_path, BODY, push))


@pytest.fixture
def pg_schema_url(pg_server: str) -> Iterator[Any]:
    """A factory of URLs on fresh PostgreSQL schemas, all dropped afterwards."""
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(_tmp: Path) -> str:
        schema = f"as_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        return make_url(pg_server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for schema in made:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _pg_exec(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.exec_driver_sql(s.replace("%", "%%"))
    finally:
        engine.dispose()


PG_ROWS = (
    "INSERT INTO src VALUES ('u1', 'a@x.io', '1'), ('  b ', ' b@x.io  ', 'x\"y\n\u00e9'), ('u3', NULL, '7'), "
    "('u3', 'c@x.io', '7'), (NULL, 'n@x.io', '1'), ('', NULL, '1'), (E'\\t', NULL, '1'), ('u4', '  ', NULL), "
    "('u5', 'e@x.io', '100%')"
)


#: value types of a PostgreSQL source (type -> the value cast from the raw text), and whether it is pushed down
PG_VALUES = {
    "text": ("value", True),
    "bigint": ("length(value)", True),
    "boolean": ("length(value) > 1", True),
    "double precision": ("length(value) / 4.0", False),  # SQL cannot render these exactly as Python does
    "numeric": ("length(value) / 4.0", False),
}


def per_value(count: int) -> str:
    """The audience of :data:`BODY` (on ``src_0``), and its trait once per view: ``score_<i>`` reads ``src_<i>``."""
    trait = BODY.index("[[computed_traits]]")
    return BODY[:trait].replace("FROM src", "FROM src_0") + "".join(
        BODY[trait:].replace("FROM src", f"FROM src_{i}").replace('name = "Score"', f'name = "Score {i}"')
        for i in range(count)
    )


@pytest.mark.postgres
def test_postgres_pushdown_matches_streaming(
    pg_schema_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trait of every value type of :data:`PG_VALUES` at once."""
    caplog.set_level("INFO", "audience_sync.run.stage")

    def load(url: str) -> None:
        _pg_exec(
            url,
            "CREATE TABLE raw (user_id text, email text, value text)",
            PG_ROWS.replace("INSERT INTO src", "INSERT INTO raw"),
            *(
                f"CREATE VIEW src_{i} AS SELECT user_id, email, ({cast})::{value_type} AS value FROM raw"
                for i, (value_type, (cast, _)) in enumerate(PG_VALUES.items())
            ),
        )

    def change(url: str) -> None:
        _pg_exec(
            url,
            "DELETE FROM raw WHERE user_id = 'u1'",
            "UPDATE raw SET value = 'changed' WHERE user_id = 'u5'",
            "INSERT INTO raw VALUES ('u11', 'new@x.io', 'hello')",
        )

    _compare(pg_schema_url, tmp_path, load, change, body=per_value(len(PG_VALUES)))
    # types SQL cannot render exactly as Python does are streamed, the rest pushed down
    assert _streamed(caplog) == {f"score_{i}" for i, (_, pushed) in enumerate(PG_VALUES.values()) if not pushed}


@pytest.mark.postgres
def test_postgres_repeated_users_and_conflict(pg_schema_url: Any, tmp_path: Path) -> None:
    url = pg_schema_url(tmp_path)
    _pg_exec(
        url,
        "CREATE TABLE src (user_id bigint, email text, value bigint)",
        "INSERT INTO src VALUES (1, NULL, 5), (2, 'two@x.io', 6), (1, 'one@x.io', 5), (1, 'late@x.io', 5)",
    )
    result = run_sync(_config(url, tmp_path, BODY, True))
    assert result.status == "succeeded"
    assert _rows(url, "SELECT user_id, email, value FROM snapshot WHERE computation_key = 'score' ORDER BY 1") == [
        ("1", "one@x.io", "5"),
        ("2", "two@x.io", "6"),
    ]
    _pg_exec(url, "INSERT INTO src VALUES (2, NULL, 7), (2, NULL, 8)")
    with pytest.raises(SourceError, match=r"user '2' has two different values \(6 and 8\)"):
        run_sync(_config(url, tmp_path, BODY, True))


def test_whitespace_is_what_python_strips() -> None:
    assert "".join(c for c in map(chr, range(0x110000)) if c.isspace()) == pushdown.WHITESPACE


def test_same_database() -> None:
    assert pushdown.same_database("sqlite:///a.db", f"sqlite:///{Path('a.db').resolve()}")
    assert not pushdown.same_database("sqlite:///a.db", "sqlite:///b.db")
    assert not pushdown.same_database("sqlite://", "sqlite://")
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert pushdown.same_database(pg, "postgresql://postgres@127.0.0.1/test")
    assert not pushdown.same_database(pg, pg + "?options=-csearch_path%3Dother")
    assert not pushdown.same_database(pg, "postgresql://postgres@127.0.0.1:5432/other")


def test_pushdown_true_needs_the_same_database(tmp_path: Path) -> None:
    assert (
        pushdown.attachable_file(f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'w.db'}")
        == (tmp_path / "w.db").resolve()
    )
    assert pushdown.attachable_file(f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 's.db'}") is None
    assert pushdown.attachable_file(PG_URL, f"sqlite:///{tmp_path / 'w.db'}") is None
    config = parse_config(
        f'[state]\nurl = "sqlite:///{tmp_path / "s.db"}"\n[source]\nurl = "postgresql://u@127.0.0.1:1/w"\n'
        f'pushdown = true\n[[destinations]]\nname = "f"\ntype = "jsonl"\n[[audiences]]\nname = "A"\nsql = "SELECT 1"\n',
        environ={},
    )
    with pytest.raises(
        ConfigError,
        match="needs the source to be the state database or, with SQLite state, a SQLite file",
    ):
        run_sync(config)


assert PG_URL  # the PostgreSQL tests use the server the suite is configured for


@pytest.mark.postgres
def test_copy_loading_stages_what_upserts_stage(pg_url: str) -> None:
    """COPY through a temporary table (PostgreSQL) keeps first value, first email and the last other value."""
    from audience_sync.store import loading, staging
    from audience_sync.store.engine import create_state_engine
    from audience_sync.store.migrate import upgrade

    chunks: list[list[tuple[str, str | None, str]]] = [
        [("u1", None, "1"), ("u2", "b@x.io", "2"), ("u1", "first@x.io", "1")],
        [("u1", "second@x.io", "3"), ("u3", None, "4"), ("u1", None, "5"), ("u1", None, "1")],
        [("u4", "d@x.io", '"x"')],
    ]
    engine = create_state_engine(pg_url)
    upgrade(engine)
    try:
        with engine.begin() as conn:
            loading.copy_rows(conn, 1, "k", chunks)
            for chunk in chunks:
                staging.insert_rows(conn, 2, "k", chunk)
        with engine.connect() as conn:
            staged = {
                run: conn.execute(
                    text(
                        "SELECT user_id, email, value, conflict_value FROM staging WHERE run_id = :r ORDER BY user_id"
                    ),
                    {"r": run},
                ).all()
                for run in (1, 2)
            }
    finally:
        engine.dispose()
    assert staged[1] == staged[2]
    assert staged[1][0] == ("u1", "first@x.io", "1", "5")
