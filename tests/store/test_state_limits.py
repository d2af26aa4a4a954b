"""The same data works on SQLite and PostgreSQL state, and what no state database can hold is that user's own
clear error: skipped with the reason, counted, the rest of the run delivered.

Long ids, emails and destination names work on both backends (text columns, migration 0010). A NUL byte in a
user id or email (PostgreSQL text cannot hold one), a user id too long for PostgreSQL's indexes, and a value with
no JSON form (NaN, infinities, from SQL or from a file) skip the user, on both backends and on both staging paths
(streamed, and pushed down into the state database), and never send that user an exit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from audience_sync.commands import list_diffs
from audience_sync.config import Config, parse_config
from audience_sync.errors import ConfigError, SourceError
from audience_sync.run.sync import RunResult, run_sync
from audience_sync.sources import rows as source_rows
from audience_sync.store.migrate import alembic_config, upgrade
from tests.processes import run_cli

LONG_ID = "u" + "x" * 299  # 300 characters
LONG_EMAIL = "a" * 310 + "@x.io" + "b" * 6  # 321 characters
LONG_DESTINATION = "d" * 101


def create_source(url: str, rows: list[tuple[Any, Any, Any]], value_type: str | None = None) -> None:
    """A table ``src(user_id, email, value)`` in the database at ``url`` holding ``rows``."""
    engine = create_engine(url)
    pg = engine.dialect.name == "postgresql"
    typed = value_type or ("text" if pg else "")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE src (user_id text, email text, value {typed})"))
        if rows:
            conn.execute(text("INSERT INTO src VALUES (:u, :e, :v)"), [{"u": u, "e": e, "v": v} for u, e, v in rows])
    engine.dispose()


def make_config(state_url: str, source_url: str, tmp_path: Path, body: str, dest: str = "file") -> Config:
    toml = (
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{source_url}"\n'
        f'[[destinations]]\nname = "{dest}"\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n' + body
    )
    return parse_config(toml, path=str(tmp_path / "c.toml"), environ={})


AUDIENCE = '[[audiences]]\nname = "VIP"\nsql = "SELECT user_id, email FROM src"\n'
TRAIT = '[[computed_traits]]\nname = "Score"\nsql = "SELECT user_id, email, value FROM src"\n'


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def sent(tmp_path: Path) -> dict[tuple[str, str], Any]:
    """``{(user_id, key): value}`` of every identify line so far (the last one wins)."""
    out: dict[tuple[str, str], Any] = {}
    for call in lines(tmp_path):
        for key, value in call["traits"].items():
            if key != "email":
                out[(call["userId"], key)] = value
    return out


def skipped(config: Config, result: RunResult) -> dict[str, str]:
    """``{user_id: reason}`` of the run's skipped changes."""
    _, rows = list_diffs(config, run_id=result.run_id, status="skipped")
    return {r["user_id"]: r["error"] for r in rows}


def source_url_for(state_url: str, tmp_path: Path, path: str) -> str:
    """The source: the state database itself (pushed down) or a SQLite warehouse of its own (streamed)."""
    return state_url if path == "pushdown" else f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.mark.parametrize("path", ["streamed", "pushdown"])
def test_long_ids_emails_and_destination_names_work_on_both_backends(state_url: str, tmp_path: Path, path: str) -> None:
    """A 300-character id, a 321-character email and a 101-character destination name: PostgreSQL state failed
    the whole run with "value too long" (VARCHAR 255, 320, 100); they are text now, as on SQLite."""
    source = source_url_for(state_url, tmp_path, path)
    create_source(source, [(LONG_ID, LONG_EMAIL, "7"), ("u2", "b@x.io", "8")])
    config = make_config(state_url, source, tmp_path, AUDIENCE + TRAIT, dest=LONG_DESTINATION)
    first = run_sync(config)
    assert first.exit_code == 0 and first.counts["sent"] == 4, first.error
    assert sent(tmp_path) == {
        (LONG_ID, "vip"): True,
        (LONG_ID, "score"): "7",
        ("u2", "vip"): True,
        ("u2", "score"): "8",
    }
    assert {c["traits"].get("email") for c in lines(tmp_path)} == {LONG_EMAIL, "b@x.io"}
    again = run_sync(config)
    assert again.exit_code == 0 and again.counts["entered"] + again.counts["changed"] == 0  # the snapshot held them
    engine = create_engine(state_url)
    with engine.connect() as conn:
        held = conn.execute(text("SELECT destination, user_id, email FROM snapshot WHERE user_id = :u"), {"u": LONG_ID})
        assert {tuple(r) for r in held} == {(LONG_DESTINATION, LONG_ID, LONG_EMAIL)}
    engine.dispose()


def test_a_destination_name_that_cannot_be_used_is_a_config_error(tmp_path: Path) -> None:
    """Destination names are in the state's keys, in lock names and in the JSONL sink's default file name: one
    over 200 characters (or with a character a file name cannot carry) is refused before anything runs."""
    for name, problem in (("d" * 201, "at most 200 characters"), ("a/b", "should match pattern")):
        (tmp_path / "c.toml").write_text(
            f'[state]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
            f'[[destinations]]\nname = "{name}"\ntype = "jsonl"\n'
            + AUDIENCE.replace("src", "(SELECT 1 AS user_id, NULL AS email)")
        )
        proc = run_cli("run", "--config", str(tmp_path / "c.toml"), cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, proc.stderr
        message = proc.stderr.replace("\n", "")  # the terminal may wrap a long line
        assert f"destinations[0] ('{name}').name" in message and problem in message
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "state.db").exists()  # nothing was opened, let alone written


def test_a_nul_byte_in_a_config_string_is_a_config_error(tmp_path: Path) -> None:
    """TOML can spell a NUL byte (``\\u0000``); names and message fields end up in the state database, whose
    PostgreSQL text cannot hold one, so it is refused with the key path before anything runs."""
    toml = (
        '[[destinations]]\nname = "file"\ntype = "jsonl"\nentered_event = "Entered\\u0000"\n'
        '[[audiences]]\nname = "VIP\\u0000"\nsql = "SELECT 1 AS user_id"\n'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(toml, path="c.toml", environ={})
    assert info.value.exit_code == 2
    assert info.value.problems == [
        "c.toml: destinations[0].entered_event: contains a NUL byte (\\u0000)",
        "c.toml: audiences[0].name: contains a NUL byte (\\u0000)",
    ]


def _nul_cases(state_url: str, path: str) -> None:
    if path == "pushdown" and not state_url.startswith("sqlite"):
        pytest.skip("PostgreSQL text cannot hold a NUL byte: a PostgreSQL source never has one to push down")


@pytest.mark.parametrize("path", ["streamed", "pushdown"])
def test_a_nul_byte_in_an_id_or_email_skips_that_user_and_never_exits_them(
    state_url: str, tmp_path: Path, path: str
) -> None:
    _nul_cases(state_url, path)
    source = source_url_for(state_url, tmp_path, path)
    create_source(source, [("u1", "a@x.io", "1"), ("u2", "b@x.io", "2"), ("u\x003", "c@x.io", "3")])
    config = make_config(state_url, source, tmp_path, AUDIENCE)
    first = run_sync(config)
    assert first.exit_code == 0, first.error
    assert sent(tmp_path) == {("u1", "vip"): True, ("u2", "vip"): True}
    assert skipped(config, first) == {
        "u\\x003": "audience 'VIP' (vip): user 'u\\\\x003': its user_id contains a NUL byte, which the state "
        "database cannot store; skipped"
    }
    assert first.counts["skipped"] == 1 and first.counts["sources"]["vip"]["skipped"] == 1

    # u2's email turns bad: u2 is skipped, and keeps what the destination holds (no exit)
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.execute(text("UPDATE src SET email = :e WHERE user_id = 'u2'"), {"e": "b\x00@x.io"})
    engine.dispose()
    second = run_sync(config)
    assert second.exit_code == 0 and second.counts["sent"] == 0 and second.counts["exited"] == 0
    assert set(skipped(config, second)) == {"u2", "u\\x003"}
    assert "user 'u2': its email contains a NUL byte" in skipped(config, second)["u2"]
    assert second.counts["skipped"] == 2 and second.counts["sources"]["vip"]["skipped"] == 2
    assert len(lines(tmp_path)) == 2


@pytest.mark.parametrize("path", ["streamed", "pushdown"])
def test_a_user_id_too_long_for_the_indexes_is_skipped_alike_on_both_backends(
    state_url: str, tmp_path: Path, path: str
) -> None:
    """PostgreSQL indexes user ids (with the destination and key) in b-trees of at most about 2,700 bytes per
    entry; SQLite has no such limit. So that both behave the same, an id over 2,000 bytes is skipped on both."""
    source = source_url_for(state_url, tmp_path, path)
    too_long = "é" * 1001  # 2,002 bytes of UTF-8
    longest = "y" * 2000
    create_source(source, [(too_long, None, "1"), (longest, None, "1"), ("u1", None, "1")])
    config = make_config(state_url, source, tmp_path, AUDIENCE)
    result = run_sync(config)
    assert result.exit_code == 0, result.error
    assert sent(tmp_path) == {(longest, "vip"): True, ("u1", "vip"): True}
    reasons = skipped(config, result)
    shown = "é" * 200 + "… (1001 characters)"
    assert reasons == {
        shown: f"audience 'VIP' (vip): user {shown!r}: its user_id is 2002 bytes long (UTF-8); the state database "
        "takes at most 2000; skipped"
    }


def _values_source(state_url: str, tmp_path: Path, origin: str, pg_url: str) -> tuple[str, str]:
    """A trait source with one finite value (u1), infinities and NaNs, a null and a previously delivered user
    (u5, whose value turns infinite by ``_turn_infinite``); returns (source URL, trait body)."""
    finite = [("u1", "a@x.io", 1.5), ("u4", None, None), ("u5", "e@x.io", 5.0)]
    if origin == "parquet":
        path = tmp_path / "scores.parquet"
        table = pa.table(
            {
                "user_id": ["u1", "u2", "u3", "u4", "u5", "u6"],
                "email": ["a@x.io", None, None, None, "e@x.io", None],
                "value": [1.5, math.inf, math.nan, None, 5.0, -math.inf],
            }
        )
        pq.write_table(table, path)
        return "", f'[[computed_traits]]\nname = "Score"\nfile = "{path}"\n'
    if origin == "sqlite":  # SQLite keeps infinities; a NaN it stores as NULL
        source = f"sqlite:///{tmp_path / 'warehouse.db'}"
        create_source(source, [*finite, ("u2", None, math.inf), ("u6", None, -math.inf)], value_type="REAL")
        return source, TRAIT
    # PostgreSQL: float8 and numeric both have NaN and infinities (numeric Infinity overflowed int(), a traceback)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE src_f (user_id text, email text, value float8)"))
        conn.execute(text("CREATE TABLE src_n (user_id text, email text, value numeric)"))
        conn.execute(
            text(
                "INSERT INTO src_f VALUES ('u1', 'a@x.io', 1.5), ('u2', NULL, 'Infinity'), ('u3', NULL, 'NaN'), "
                "('u4', NULL, NULL), ('u5', 'e@x.io', 5)"
            )
        )
        conn.execute(text("INSERT INTO src_n VALUES ('u6', NULL, '-Infinity'), ('u7', NULL, 'NaN')"))
    engine.dispose()
    return pg_url, (
        '[[computed_traits]]\nname = "Score"\n'
        'sql = "SELECT user_id, email, value::text::numeric AS value FROM src_f UNION ALL '
        'SELECT user_id, email, value FROM src_n"\n'
    )


def _turn_infinite(source: str, tmp_path: Path, origin: str) -> None:
    if origin == "parquet":
        path = tmp_path / "scores.parquet"
        table = pq.read_table(path).to_pydict()
        table["value"][4] = math.inf
        pq.write_table(pa.table(table), path)
        return
    engine = create_engine(source)
    with engine.begin() as conn:
        if origin == "sqlite":  # 1e999 is SQLite's infinity ('Infinity' would stay text)
            conn.execute(text("UPDATE src SET value = 1e999 WHERE user_id = 'u5'"))
        else:
            conn.execute(text("UPDATE src_f SET value = 'Infinity' WHERE user_id = 'u5'"))
    engine.dispose()


@pytest.mark.parametrize("origin", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "parquet"])
def test_infinity_and_nan_skip_the_user_and_keep_what_the_destination_holds(
    request: pytest.FixtureRequest, state_url: str, tmp_path: Path, origin: str
) -> None:
    pg_url = str(request.getfixturevalue("pg_url")) if origin == "postgres" else ""
    source, body = _values_source(state_url, tmp_path, origin, pg_url)
    config = make_config(state_url, source or f"sqlite:///{tmp_path / 'unused.db'}", tmp_path, body)
    first = run_sync(config)
    assert first.exit_code == 0, first.error
    assert sent(tmp_path) == {("u1", "score"): 1.5, ("u5", "score"): 5}
    reasons = skipped(config, first)
    expected = {"sqlite": {"u2", "u6"}, "postgres": {"u2", "u3", "u6", "u7"}, "parquet": {"u2", "u3", "u6"}}[origin]
    assert set(reasons) == expected
    for user, reason in reasons.items():
        assert reason.startswith(f"trait 'Score' (score): user '{user}': its value: ")
        assert "has no JSON form (NaN and infinite numbers cannot be sent); skipped" in reason
    assert first.counts["sources"]["score"]["null_values"] == 1  # u4: a null is "no value", not a skip
    assert first.counts["sources"]["score"]["skipped"] == len(expected) == first.counts["skipped"]

    _turn_infinite(source, tmp_path, origin)  # u5 was delivered 5; its value can no longer be sent
    second = run_sync(config)
    assert second.exit_code == 0 and second.counts["sent"] == 0 and second.counts["exited"] == 0
    assert "u5" in skipped(config, second)
    assert sent(tmp_path)[("u5", "score")] == 5  # no null was sent: the destination keeps its value
    _, rows = list_diffs(config, run_id=second.run_id, status="skipped")
    u5 = next(r for r in rows if r["user_id"] == "u5")
    assert (u5["change"], u5["old_value"], u5["new_value"]) == ("changed", 5, None)


def test_the_pushdown_skips_exactly_what_streaming_skips(tmp_path: Path) -> None:
    """SQLite can hold every kind of unusable row: pushed down, the computation falls back to streaming as soon
    as one is found, so both paths stage and report the same."""
    rows = [
        ("u1", "a@x.io", 1),
        ("u\x002", "b@x.io", 2),
        ("u3", "c\x00@x.io", 3),
        ("u4", "d\x00@x.io", None),  # no value: dropped as null before its email counts, as in Python
        ("y" * 2001, None, 4),
        ("u6", None, math.inf),
        (7, None, 7),
    ]
    results = []
    for push in (True, False):
        state = f"sqlite:///{tmp_path / f'{push}.db'}"
        create_source(state, rows)
        (tmp_path / str(push)).mkdir()
        config = parse_config(
            f'[state]\nurl = "{state}"\n[source]\npushdown = {str(push).lower()}\n'
            f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp_path / str(push) / "out.jsonl"}"\n'
            + AUDIENCE
            + TRAIT,
            path=str(tmp_path / "c.toml"),
            environ={},
        )
        result = run_sync(config)
        assert result.exit_code == 0, result.error
        _, diff_rows = list_diffs(config, run_id=result.run_id)
        results.append(
            (
                sorted((r["computation_key"], r["user_id"], r["status"], r["error"]) for r in diff_rows),
                result.counts["sources"],
                sent(tmp_path / str(push)),
            )
        )
    assert results[0] == results[1]
    statuses = {(key, user): status for key, user, status, _ in results[0][0]}
    assert statuses[("vip", "u1")] == statuses[("score", "7")] == "sent"
    assert {k for k, s in statuses.items() if s == "skipped"} == {
        ("vip", "u\\x002"),
        ("vip", "u3"),
        ("vip", "u4"),
        ("vip", "y" * 200 + "… (2001 characters)"),
        ("score", "u\\x002"),
        ("score", "u3"),
        ("score", "y" * 200 + "… (2001 characters)"),
        ("score", "u6"),
    }


def test_too_many_unusable_rows_fail_the_computation(
    state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source whose rows are mostly unusable is broken, not a few bad users: past the cap, a SourceError naming
    the computation and the first reason, and no diff is stored."""
    monkeypatch.setattr(source_rows, "MAX_SKIPPED_ROWS", 3)
    source = f"sqlite:///{tmp_path / 'warehouse.db'}"
    create_source(source, [(f"u{i}", None, math.inf) for i in range(4)], value_type="REAL")
    config = make_config(state_url, source, tmp_path, TRAIT)
    with pytest.raises(
        SourceError,
        match=r"trait 'Score' \(score\): more than 3 users' rows cannot be used \(the first: "
        r"trait 'Score' \(score\): user 'u0': its value: inf has no JSON form",
    ):
        run_sync(config)
    engine = create_engine(state_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM staging_skips")).scalar_one() == 0
        assert conn.execute(text("SELECT status FROM sync_runs")).scalar_one() == "failed"
    engine.dispose()


def _column_types(conn: Any) -> dict[tuple[str, str], str]:
    rows = conn.execute(
        text(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type IN ('character varying', 'text')"
        )
    ).all()
    return {(t, c): d for t, c, d in rows}


def test_migration_0010_makes_text_columns_and_keeps_the_data_and_indexes(state_url: str) -> None:
    engine = create_engine(state_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0009")
    ts = "'2026-11-29 00:00:00'"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sync_runs (id, mode, trigger, status, started_at, destinations, computations, counts, "
                f"host, pid) VALUES (3, 'incremental', 'cli', 'succeeded', {ts}, '[]', '[]', '{{}}', 'h', 1)"
            )
        )
        for diff_id, status in ((41, "sent"), (42, "pending")):
            conn.execute(
                text(
                    "INSERT INTO diffs (id, run_id, destination, computation_key, computation_class, user_id, email, "
                    "change, status, attempts, message_id, created_at) VALUES "
                    f"({diff_id}, 3, 'd', 'vip', 'audience', 'u{diff_id}', 'u@x.io', 'entered', '{status}', 0, "
                    f"'as-{diff_id}', {ts})"
                )
            )
        conn.execute(
            text(
                "INSERT INTO snapshot (destination, computation_key, user_id, value, email, run_id, updated_at, "
                f"in_doubt) VALUES ('d', 'vip', 'u41', 'true', 'u@x.io', 3, {ts}, false)"
            )
        )
        if conn.dialect.name == "postgresql":
            assert _column_types(conn)[("diffs", "user_id")] == "character varying"
    command.upgrade(cfg, "0010")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, status, message_id FROM diffs ORDER BY id")).all() == [
            (41, "sent", "as-41"),
            (42, "pending", "as-42"),
        ]
        assert conn.execute(text("SELECT user_id, value FROM snapshot")).all() == [("u41", "true")]
        # values the old columns refused now fit, in every table a run writes them to
        conn.execute(
            text(
                "INSERT INTO snapshot (destination, computation_key, user_id, value, email, run_id, updated_at, "
                "in_doubt) VALUES (:d, 'vip', :u, 'true', :e, 3, CURRENT_TIMESTAMP, false)"
            ),
            {"d": LONG_DESTINATION, "u": LONG_ID, "e": LONG_EMAIL},
        )
        conn.execute(
            text(
                "INSERT INTO staging (run_id, computation_key, user_id, email, value) VALUES (3, 'vip', :u, :e, 'true')"
            ),
            {"u": LONG_ID, "e": LONG_EMAIL},
        )
        if conn.dialect.name == "postgresql":
            types = _column_types(conn)
            assert "character varying" not in set(types.values()) - {types.get(("alembic_version", "version_num"))}
            pending = conn.execute(
                text(
                    "SELECT indexdef FROM pg_indexes "
                    "WHERE indexname = 'ix_diffs_pending' AND schemaname = current_schema()"
                )
            ).scalar_one()
            assert "WHERE" in pending and "'pending'" in pending
            relpersistence = conn.execute(
                text("SELECT relpersistence FROM pg_class WHERE oid = 'staging_skips'::regclass")
            ).scalar_one()
            assert relpersistence == "u"
        else:
            pending = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_diffs_pending'")).scalar_one()
            assert pending.endswith("WHERE status = 'pending'")
        assert conn.execute(text("SELECT count(*) FROM diffs WHERE status = 'pending'")).scalar_one() == 1
        conn.execute(text("DELETE FROM snapshot WHERE user_id = :u"), {"u": LONG_ID})
        conn.execute(text("DELETE FROM staging"))
    command.downgrade(cfg, "0009")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 2
        if conn.dialect.name == "postgresql":
            assert _column_types(conn)[("diffs", "user_id")] == "character varying"
    upgrade(engine)
    engine.dispose()


def test_a_migration_that_fails_halfway_leaves_nothing_behind(state_url: str) -> None:
    """Each migration is one transaction, DDL included, on SQLite too (whose Python driver used to commit each
    CREATE TABLE on its own): a migration that fails, or is killed, after its first statement leaves neither a
    table without its revision nor a half-changed schema, and the next upgrade applies it whole."""
    from audience_sync.errors import StoreError
    from audience_sync.store.migrate import current_revision

    engine = create_engine(state_url)
    command.upgrade(alembic_config(engine), "0009")
    with engine.begin() as conn:  # takes the name of the index migration 0010 creates after its table
        conn.execute(text("CREATE INDEX ix_staging_skips_user ON diffs (id)"))
    with pytest.raises(StoreError, match="migrating the state database"):
        upgrade(engine)
    assert current_revision(engine) == "0009"
    with engine.connect() as conn:
        tables = set(
            conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars()
            if conn.dialect.name == "sqlite"
            else conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
            ).scalars()
        )
        assert "staging_skips" not in tables and "diffs" in tables
        if conn.dialect.name == "postgresql":
            assert _column_types(conn)[("diffs", "user_id")] == "character varying"  # the ALTERs rolled back
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_staging_skips_user"))
    assert upgrade(engine) == current_revision(engine) >= "0010"  # type: ignore[operator]  # migration 0010 applied whole, then the rest
    engine.dispose()
