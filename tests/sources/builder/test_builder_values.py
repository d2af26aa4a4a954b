"""The builder's value forms, below the statements: floats as PostgreSQL writes them read back exactly, the exact
sum is order-free, instants and windows parse as documented."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import sqlite3
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import bindparam, create_engine, select
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

from audience_sync.config import parse_config
from audience_sync.sources.builder import BuilderSource
from audience_sync.sources.builder.properties import pg_float_json
from audience_sync.sources.builder.windows import Window, as_utc, parse_instant, parse_window, sqlite_instant
from audience_sync.store.engine import create_state_engine
from audience_sync.store.sqlfuncs import ExactSum, register_sqlite_functions
from audience_sync.values import encode


def _floats() -> list[float]:
    rng = random.Random(5)
    out = [
        0.0,
        -0.0,
        3.0,
        1e15,
        1e16,
        2.0**53,
        2.0**53 + 2,
        3.0925352787701443e18,
        1e-5,
        5e-324,
        1.7976931348623157e308,
    ]
    while len(out) < 3000:
        f = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if math.isfinite(f):
            out.append(f)
        out.append(float(rng.randint(-(10**19), 10**19)))
    return out


@pytest.mark.postgres
def test_postgres_float_text_reads_back_as_the_same_float(pg_server: str) -> None:
    """What Python re-encodes on PostgreSQL: JSON a float, never an integer, with every bit."""
    engine = create_engine(pg_server)
    stmt = select(pg_float_json(bindparam("x", type_=DOUBLE_PRECISION)))
    floats = _floats()
    with engine.connect() as conn:
        texts = [conn.execute(stmt, {"x": x}).scalar_one() for x in floats]
    engine.dispose()
    for x, text in zip(floats, texts, strict=True):
        back = json.loads(text)
        assert isinstance(back, float) and back == x and math.copysign(1, back) == math.copysign(1, x), (x, text)
    assert sum(1 for x, t in zip(floats, texts, strict=True) if t != repr(x)) > 0  # why such values are streamed


def _sqlite_sum(values: list[int | float]) -> object:
    db = sqlite3.connect(":memory:")
    register_sqlite_functions(db)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
    return db.execute("SELECT as_exact_sum(x) FROM t").fetchone()[0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.integers(-(10**12), 10**12), st.floats(-1e12, 1e12, allow_nan=False)), max_size=30),
    st.randoms(),
)
def test_exact_sum_is_exact_and_order_free(values: list[int | float], rnd: random.Random) -> None:
    total = _sqlite_sum(values)
    if not values:
        assert total is None
        return
    exact = sum(Fraction(v) if isinstance(v, int) else Fraction(repr(v)) for v in values)
    if all(isinstance(v, int) for v in values):
        assert total == int(exact) and isinstance(total, int)
    else:
        assert total == float(exact) and isinstance(total, float)
    shuffled = list(values)
    rnd.shuffle(shuffled)
    assert encode(_sqlite_sum(shuffled)) == encode(total)


def test_exact_sum_skips_nulls() -> None:
    agg = ExactSum()
    for v in (None, 0.1, None, 0.2):
        agg.step(v)
    assert agg.finalize() == 0.3


def test_instants() -> None:
    utc = dt.UTC
    assert parse_instant("2017-04-01T00:00:00Z") == dt.datetime(2017, 4, 1, tzinfo=utc)
    assert parse_instant("2017-04-01 02:00:00+02:00") == dt.datetime(2017, 4, 1, tzinfo=utc)
    assert parse_instant("2017-04-01") == dt.datetime(2017, 4, 1, tzinfo=utc)  # no offset: UTC
    with pytest.raises(ValueError, match="not an ISO 8601 instant"):
        parse_instant("April 1st")
    assert sqlite_instant(dt.datetime(2017, 4, 1, 0, 0, 0, 999_999, tzinfo=utc)) == "2017-04-01 00:00:00.999"
    assert as_utc(dt.datetime(2017, 4, 1)) == dt.datetime(2017, 4, 1, tzinfo=utc)  # a naive instant is UTC
    paris = dt.timezone(dt.timedelta(hours=2))
    assert as_utc(dt.datetime(2017, 4, 1, 2, tzinfo=paris)) == dt.datetime(2017, 4, 1, tzinfo=utc)


def test_windows() -> None:
    as_of = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    assert parse_window("30d", None) == Window(30 * 86400)
    assert parse_window(None, ["2w", "90m"]) == Window(14 * 86400, 90 * 60)
    assert parse_window(None, ["1h", "0d"]) == Window(3600)
    assert Window(86400, 3600).bounds(as_of) == (as_of - dt.timedelta(days=1), as_of - dt.timedelta(hours=1))
    assert parse_window(None, None) is None
    for within, between, message in (
        ("0d", None, "empty window"),
        ("30s", None, "not a duration"),
        ("1.5d", None, "not a duration"),
        (None, ["30d"], "a list of two durations"),
        (None, ["30d", "30d"], "empty window"),
        ("1d", ["2d", "1d"], "not both"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_window(within, between)


def test_sqlite_offsets_at_the_window_edges(tmp_path: Path) -> None:
    """The day-coarse range SQLite adds for its index never drops an event the exact bounds keep, whatever the
    offset its text carries (-12:00 to +14:00), and the exact bounds still decide."""
    as_of = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    lower = as_of - dt.timedelta(days=30)
    cases = {  # user: (timestamp text, counted by within 30d)
        "west_in": ((lower + dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=-12))), True),
        "west_out": (lower.astimezone(dt.timezone(dt.timedelta(hours=-12))), False),
        "east_in": (as_of.astimezone(dt.timezone(dt.timedelta(hours=14))), True),
        "east_out": ((as_of + dt.timedelta(seconds=1)).astimezone(dt.timezone(dt.timedelta(hours=14))), False),
        "zulu_in": (as_of - dt.timedelta(milliseconds=1), True),
    }
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT, email TEXT)")
        db.execute("CREATE TABLE tracks (user_id TEXT, event TEXT, timestamp TEXT, properties TEXT)")
        db.execute("CREATE INDEX ix ON tracks (event, timestamp)")
        for user, (ts, _) in cases.items():
            db.execute("INSERT INTO users VALUES (?, NULL)", (user,))
            db.execute("INSERT INTO tracks VALUES (?, 'E', ?, '{}')", (user, ts.isoformat()))
    config = parse_config(
        f'[state]\nurl = "sqlite:///{path}"\n[[destinations]]\nname = "f"\ntype = "jsonl"\n'
        '[[audiences]]\nname = "A"\ncondition = { performed = "E", within = "30d" }\n',
        environ={},
    )
    engine = create_state_engine(config.state_url)
    builder = BuilderSource(config, engine, config.computations, as_of)
    got = {r[0] for chunk in builder.read_rows(config.computations[0], 100) for r in chunk}
    engine.dispose()
    assert got == {user for user, (_, counted) in cases.items() if counted}
    sql = builder.sql(config.computations[0])
    assert sql.params["from_day_1"] == "2024-05-01" and sql.params["before_day_1"] == "2024-06-03"
