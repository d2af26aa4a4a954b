"""Arrow batches, as the ADBC drivers (Snowflake, BigQuery, PostgreSQL, SQLite, Flight SQL) and DuckDB hand them
back, landed and pushed down (``sources/arrow_ingest.py``) stage exactly what streaming the same rows does, for
every type those drivers return, on both state databases.

The streamed side gets the Python objects of the same batches (``to_pylist()``: ``int``, ``Decimal``, ``float``,
``datetime`` with its ``tzinfo``, ``date``, ``list``, ``None``), as a SQLAlchemy dialect returns them, and goes
through the streamed path's own functions (``normalize``, then ``copy_rows`` or ``insert_batches``, as
``run/stage.py`` streams)."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import Engine

from audience_sync.run import land
from audience_sync.sources import SourceStats, normalize
from audience_sync.sources.arrow_ingest import NotLandable, rendered
from audience_sync.sources.arrow_ingest import land as land_batches
from audience_sync.store import loading, staging
from audience_sync.store.dialect import backend
from audience_sync.store.engine import create_state_engine
from audience_sync.store.migrate import upgrade
from tests.sources.test_pushdown import _config, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

D = decimal.Decimal
UTC = dt.UTC
N = 10

# user ids and emails: blanks of every kind, a repeated user (same value, first email kept), a null id
IDS = ["u1", " u2 ", "u3", "u3", None, "", "\u3000", "u5", "é6 😀", "u7"]
EMAILS = ["a@x.io", None, " c@x.io ", "late@x.io", "n@x.io", None, "  ", "e@x.io", None, "\u00a0f@x.io"]


def _ts(*args: int, tz: dt.tzinfo | None = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)  # type: ignore[misc, arg-type]


_INSTANTS = [
    _ts(2026, 1, 1, 12, 30, 5, 123456),
    _ts(2026, 7, 1, 0, 0, 0),
    _ts(1800, 1, 1),  # local mean time: offsets with seconds (Europe/Paris +00:09:21)
    _ts(2026, 3, 29, 1, 0, 0),  # Europe/Paris changes to summer time at this instant
    None,
    _ts(1969, 12, 31, 23, 59, 59, 500000),  # before the epoch, with a fraction
    _ts(1, 1, 2),
    _ts(9999, 12, 30),
    _ts(2000, 2, 29, 23, 59, 59, 1000),
    _ts(2026, 1, 1, 12, 30, 5, 123000),
]
_WHOLE_SECONDS = [None if t is None else t.replace(microsecond=0) for t in _INSTANTS]
_MILLIS = [None if t is None else t.replace(microsecond=t.microsecond // 1000 * 1000) for t in _INSTANTS]
_NAIVE = [None if t is None else t.replace(tzinfo=None) for t in _INSTANTS]
_DATES = [dt.date(2026, 1, 2), dt.date(99, 1, 1), None, dt.date(1, 1, 1), dt.date(9999, 12, 31)] * 2
_INTS = [1, -2, 3, 3, None, 5, 0, 100, 7, None]


def _ints(low: int, high: int) -> list[int | None]:
    return [low, high, 3, 3, None, 0, 1, high - 1, low + 1, None]


#: nanoseconds since 1970 in an int64 reach years 1678 to 2261 only
_NANOS = [t if t is None or 1700 < t.year < 2200 else _ts(2200, 1, 1, 0, 0, 0, 1) for t in _INSTANTS]


def _timestamps(unit: str, tz: str | None) -> pa.Array:
    values = {"s": _WHOLE_SECONDS, "ms": _MILLIS, "ns": _NANOS}.get(unit, _INSTANTS)
    if tz is None:
        values = [None if t is None else t.replace(tzinfo=None) for t in values]
        return pa.array(values, pa.timestamp("us")).cast(pa.timestamp(unit))
    return pa.array(values, pa.timestamp("us", "UTC")).cast(pa.timestamp(unit, tz))


#: value columns of every type the drivers return, each a trait's value
VALUES: dict[str, pa.Array] = {
    **{
        f"int{b}": pa.array(_ints(-(2 ** (b - 1)), 2 ** (b - 1) - 1), pa.int64()).cast(f"int{b}")
        for b in (8, 16, 32, 64)
    },
    **{f"uint{b}": pa.array(_ints(0, 2**b - 1), pa.uint64()).cast(f"uint{b}") for b in (8, 16, 32, 64)},
    "uint64 beyond int64": pa.array([2**63, 2**64 - 1, 3, 3, None, 2**63 + 1, 0, 1, 9, None], pa.uint64()),
    "decimal128(38,0)": pa.array(
        [D(10**37), D(-(10**37) + 1), D(3), D(3), None, D(0), D(-1), D(12345678901234567890), D(2**63), None],
        pa.decimal128(38, 0),
    ),
    "decimal256(76,0)": pa.array(
        [D(10**75), D(-5), D(3), D(3), None, D(0), D(1), D(2), D(4), None], pa.decimal256(76, 0)
    ),
    "decimal128(10,2)": pa.array(
        [D("1.50"), D("2.00"), D("-0.01"), D("-0.01"), None, D("12345678.91"), D("0.10"), D("-3.00"), D("0"), None],
        pa.decimal128(10, 2),
    ),
    "decimal256(40,10)": pa.array(
        [D("0.0000000001"), D("1E+20"), D("2.5"), D("2.5"), None, D("-7"), D("1.0000000001"), D(0), D("3.3"), None],
        pa.decimal256(40, 10),
    ),
    "float32": pa.array([0.1, 1.5, -0.0, -0.0, None, 1e16, 3.4e38, 100.0, 1e-7, None], pa.float32()),
    "float64": pa.array(
        [0.1, 1e16, 1e15, 1e15, None, 100.0, -0.0, 5e-324, 1.7976931348623157e308, 123456789.125], pa.float64()
    ),
    "bool": pa.array([True, False, True, True, None, False, True, False, True, None]),
    "string": pa.array(
        ['x"y\n\u00e9', "a\\b/c", "\x00\x01\x1f\x7f", "\x00\x01\x1f\x7f", None, "", " ", "😀\u2028", "\b\f\r\t", "null"]
    ),
    "large_string": pa.array(["a", 'q"', "1", "1", None, "", "true", "é", "\\u0000", None], pa.large_string()),
    "dictionary": pa.array(["a", "b", "a", "a", None, "", "b", "c", "a", None]).dictionary_encode(),
    **{f"timestamp[{u}, {tz}]": _timestamps(u, tz) for u in ("s", "ms", "us", "ns") for tz in ("UTC", None)},
    **{f"timestamp[us, {tz}]": _timestamps("us", tz) for tz in ("Europe/Paris", "+05:30", "America/St_Johns")},
    "timestamp[ns, -08:00]": _timestamps("ns", "-08:00"),
    "date32": pa.array(_DATES, pa.date32()),
    "date64": pa.array(_DATES, pa.date32()).cast(pa.date64()),
    "list<int64>": pa.array([[1, 2], [], [3, None], [3, None], None, [2**62], [-1], [0, 0, 0], [5], None]),
    "large_list<string>": pa.array(
        [["a", 'b"'], None, ["\n"], ["\n"], None, [], [None], ["é", ""], ["x"], ["y"]], pa.large_list(pa.string())
    ),
    "list<double>": pa.array([[0.1, 1e16], [100.0], [-0.0], [-0.0], None, [], [1.5], [2.0], [3.0], None]),
    "list<decimal128(10,2)>": pa.array(
        [[D("1.50")], [D("2.00"), None], [], [], None, [D("-0.01")], [D(1)], [D(2)], [D(3)], None],
        pa.list_(pa.decimal128(10, 2)),
    ),
    "list<bool>": pa.array([[True], [False, None], [], [], None, [True, True], [False], [True], [False], None]),
    "list<timestamp[us, UTC]>": pa.array(
        [[t] if t is not None else [] for t in _INSTANTS], pa.list_(pa.timestamp("us", "UTC"))
    ),
    "list<date32>": pa.array([[d] if d is not None else None for d in _DATES], pa.list_(pa.date32())),
    "null": pa.nulls(N),
}

#: user id columns of every type landed as ids (an audience each)
IDS_BY_TYPE: dict[str, pa.Array] = {
    **{f"int{b}": pa.array(_ints(-(2 ** (b - 1)), 2 ** (b - 1) - 1), pa.int64()).cast(f"int{b}") for b in (8, 64)},
    "uint64": pa.array([2**64 - 1, 2**63, 3, 3, None, 0, 1, 2, 4, 5], pa.uint64()),
    "decimal128(38,0)": VALUES["decimal128(38,0)"],
    "decimal256(76,0)": VALUES["decimal256(76,0)"],
    "large_string": pa.array(IDS, pa.large_string()),
    "dictionary": pa.array(IDS).dictionary_encode(),
    "null": pa.nulls(N),
}

#: emails of other string types (a trait with string ids each)
EMAILS_BY_TYPE: dict[str, pa.Array] = {
    "large_string": pa.array(EMAILS, pa.large_string()),
    "dictionary": pa.array(EMAILS).dictionary_encode(),
    "null": pa.nulls(N),
}


def _python(value: Any) -> Any:
    """The object a SQLAlchemy dialect returns for a value Arrow gives in Python (a pandas ``Timestamp``, for
    nanosecond timestamps, is a ``datetime`` there)."""
    to_pydatetime = getattr(value, "to_pydatetime", None)
    if callable(to_pydatetime):
        return to_pydatetime()
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def _batches(columns: dict[str, pa.Array]) -> list[pa.RecordBatch]:
    """The rows in batches of 4 (a repeated user spans two batches)."""
    batches: list[pa.RecordBatch] = pa.table(columns).to_batches(max_chunksize=4)
    return batches


def _stream(engine: Engine, run_id: int, comp: Any, batches: list[pa.RecordBatch]) -> SourceStats:
    """Stage the batches' Python objects as ``run/stage.py`` streams rows."""
    stats = SourceStats()
    names = batches[0].schema.names
    lowered = [n.lower() for n in names]

    def raw(batch: pa.RecordBatch) -> list[tuple[Any, Any, Any]]:
        def column(name: str) -> list[Any]:
            return (
                [_python(v) for v in batch.column(lowered.index(name)).to_pylist()]
                if name in lowered
                else [None] * batch.num_rows
            )

        return list(zip(column("user_id"), column("email"), column("value"), strict=True))

    chunks = (normalize(comp, raw(b), stats) for b in batches)
    with engine.begin() as conn:
        if backend(conn).bulk_copy:
            loading.copy_rows(conn, run_id, comp.key, chunks)
        else:
            loading.insert_batches(conn, run_id, comp.key, chunks)
        staging.insert_skips(conn, run_id, comp.key, [skip.row() for skip in stats.skips])
    return stats


def _staged(engine: Engine, run_id: int, key: str) -> tuple[Any, ...]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT user_id, email, value, conflict_value FROM staging "
            f"WHERE run_id = {run_id} AND computation_key = '{key}' ORDER BY user_id"
        ).all()
        members = staging.count_members(conn, run_id, key)
    return [tuple(r) for r in rows], members


def _figures(stats: SourceStats) -> tuple[Any, ...]:
    return stats.rows, stats.null_user_ids, stats.null_values, [s.reason for s in stats.skips]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = str(request.getfixturevalue("pg_schema_url")(tmp_path))
    engine = create_state_engine(url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _computations(tmp: Path, url: str, traits: int, audiences: int) -> list[Any]:
    body = "".join(f'[[computed_traits]]\nname = "T {i}"\nsql = "SELECT 1"\n' for i in range(traits)) + "".join(
        f'[[audiences]]\nname = "A {i}"\nsql = "SELECT 1"\n' for i in range(audiences)
    )
    return list(_config(url, tmp, body, None, "sqlite://").computations)


def _compare(engine: Engine, run_id: int, comp: Any, batches: list[pa.RecordBatch], caplog: Any) -> None:
    """Landed (run ``run_id``) and streamed (run ``run_id + 1``): the same staging, members and figures."""
    names = batches[0].schema.names
    caplog.clear()
    landed_stats = SourceStats()
    move = lambda conn: land_batches(conn, comp, names, iter(batches), "pyarrow")  # noqa: E731
    assert land.land(engine, run_id, comp, move, landed_stats), [r.getMessage() for r in caplog.records]
    landed_rows = (
        f"{comp.key}: landed {sum(b.num_rows for b in batches)} rows in the state database (read with pyarrow)"
    )
    assert any(landed_rows in r.getMessage() for r in caplog.records)
    streamed_stats = _stream(engine, run_id + 1, comp, batches)
    landed, streamed = _staged(engine, run_id, comp.key), _staged(engine, run_id + 1, comp.key)
    assert landed == streamed
    assert landed[0] or pa.types.is_null(batches[0].schema.field("value").type), "nothing compared"
    assert _figures(landed_stats) == _figures(streamed_stats)
    assert landed_stats.members in (None, landed[1])


def test_every_value_type_lands_as_it_streams(state: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "audience_sync.run.land")
    comps = _computations(tmp_path, state.url.render_as_string(False), len(VALUES), 0)
    for i, (name, values) in enumerate(VALUES.items()):
        batches = _batches({"USER_ID": pa.array(IDS), "email": pa.array(EMAILS), "value": values})
        try:
            _compare(state, 2 * i + 1, comps[i], batches, caplog)
        except AssertionError as exc:
            raise AssertionError(f"value type {name}: {exc}") from None
    # a value that is JSON text on one path is the same JSON text on the other, escapes included
    key = f"t_{list(VALUES).index('string')}"
    with state.connect() as conn:
        value = conn.exec_driver_sql(
            f"SELECT DISTINCT value FROM staging WHERE user_id = 'u3' AND computation_key = '{key}'"
        ).scalar_one()
    assert value == '"\\u0000\\u0001\\u001f\x7f"'


def test_every_id_and_email_type_lands_as_it_streams(
    state: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "audience_sync.run.land")
    comps = _computations(tmp_path, state.url.render_as_string(False), len(EMAILS_BY_TYPE), len(IDS_BY_TYPE))
    traits = [c for c in comps if c.computation_class == "trait"]
    audiences = [c for c in comps if c.computation_class == "audience"]
    for i, (name, ids) in enumerate(IDS_BY_TYPE.items()):
        batches = _batches({"user_id": ids, "email": pa.array(EMAILS)})
        if name == "null":  # nobody: landed as no members, as streaming drops every row
            stats = SourceStats()

            def move(conn: Any, batches: list[pa.RecordBatch] = batches, comp: Any = audiences[i]) -> Any:
                return land_batches(conn, comp, ["user_id", "email"], iter(batches), "pyarrow")

            assert land.land(state, 1000, audiences[i], move, stats)
            assert (stats.rows, stats.null_user_ids, stats.members or 0) == (N, N, 0)
        else:
            _compare(state, 2 * i + 1, audiences[i], batches, caplog)
    for i, emails in enumerate(EMAILS_BY_TYPE.values()):
        batches = _batches({"user_id": pa.array(IDS), "email": emails, "value": pa.array(_INTS)})
        _compare(state, 100 + 2 * i, traits[i], batches, caplog)


STREAMED: dict[str, tuple[pa.Array, str]] = {
    "a NaN": (pa.array([1.0, float("nan")] + [1.0] * (N - 2)), "has a NaN or an infinity"),
    "an infinity": (pa.array([float("-inf")] * N, pa.float32()), "has a NaN or an infinity"),
    "a NaN in a list": (pa.array([[float("nan")]] * N), "has a value with no JSON form"),
    "nanoseconds": (pa.array([1] * N, pa.timestamp("ns", "UTC")), "finer than a microsecond"),
    "binary": (pa.array([b"\x00blob"] * N), "has Arrow type binary, which is not landed"),
    "struct": (pa.array([{"a": 1}] * N), "has Arrow type struct"),
    "time": (pa.array([dt.time(1, 2)] * N), "has Arrow type time64"),
    "duration": (pa.array([dt.timedelta(1)] * N), "has Arrow type duration"),
    "nested list": (pa.array([[[1]]] * N), "which is not landed"),
}


@pytest.mark.parametrize("what", list(STREAMED))
def test_values_that_cannot_be_rendered_exactly_are_streamed(what: str, tmp_path: Path) -> None:
    """Nothing is rendered where Python's object is not known (a nanosecond) or streaming reports the user (a
    NaN: skipped, with its reason) or fails (a type JSON has no form for): the computation streams."""
    values, reason = STREAMED[what]
    comp = _computations(tmp_path, "sqlite://", 1, 0)[0]
    batch = pa.record_batch([pa.array(["u1"] * N), values], names=["user_id", "value"])
    with pytest.raises(NotLandable, match=reason):
        list(rendered(comp, ["user_id", "value"], [batch]))


def test_a_year_past_9999_is_streamed(tmp_path: Path) -> None:
    comp = _computations(tmp_path, "sqlite://", 1, 0)[0]
    late = pa.array([dt.datetime(9999, 12, 31, 23)], pa.timestamp("us", "UTC")).cast(pa.timestamp("us", "+05:00"))
    for values in (late, pa.array([3_000_000], pa.date32())):
        batch = pa.record_batch([pa.array(["u1"]), values], names=["user_id", "value"])
        with pytest.raises(NotLandable, match="outside the years 1 to 9999"):
            list(rendered(comp, ["user_id", "value"], [batch]))


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        (pa.array([1.0]), "double, which is not landed as a user id"),
        (pa.array([D("1.5")], pa.decimal128(5, 1)), "not landed as a user id"),
        (pa.array([True]), "not landed as a user id"),
    ],
)
def test_ids_of_other_types_are_streamed(ids: pa.Array, reason: str, tmp_path: Path) -> None:
    comp = _computations(tmp_path, "sqlite://", 0, 1)[0]
    with pytest.raises(NotLandable, match=reason):
        list(rendered(comp, ["user_id"], [pa.record_batch([ids], names=["user_id"])]))
