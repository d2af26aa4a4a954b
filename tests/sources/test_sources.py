"""Sources: files and SQL read in chunks, with clear errors naming the computation and the culprit."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import Computation
from audience_sync.errors import SourceError
from audience_sync.sources import SourceStats, normalize, read_rows
from audience_sync.values import encode
from tests.harness import Harness


def comp(
    cls: str = "audience", *, sql: str | None = None, file: Path | None = None, value_type: str | None = None
) -> Computation:
    typed = {"value_type": value_type} if value_type is not None else {}
    return Computation(
        key="k",
        name="K",
        computation_class=cls,  # type: ignore[arg-type]
        sql=sql,
        file=str(file) if file else None,
        destinations=("d",),
        **typed,  # type: ignore[arg-type]
    )


def rows(c: Computation, chunk_size: int = 2, url: str = "sqlite://") -> tuple[list[list[tuple]], SourceStats]:  # type: ignore[type-arg]
    engine = create_engine(url)
    stats = SourceStats()
    chunks = [normalize(c, raw, stats) for raw in read_rows(c, engine, chunk_size)]
    engine.dispose()
    return chunks, stats


def test_csv_keeps_ids_as_text_and_reads_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "vip.csv"
    path.write_text("user_id,email,extra\n007,a@x.io,1\n8,,2\n,ghost@x.io,3\n9, b@x.io ,4\n")
    chunks, stats = rows(comp(file=path))
    assert chunks == [[("007", "a@x.io", "true"), ("8", None, "true")], [("9", "b@x.io", "true")]]
    assert (stats.rows, stats.null_user_ids) == (4, 1)


def test_csv_trait_values_are_text_unless_value_type_says_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "ltv.csv"
    path.write_text("user_id,value\n1,10\n2,\n3,7\n")
    chunks, stats = rows(comp("trait", file=path), chunk_size=10)
    assert chunks == [[("1", None, '"10"'), ("3", None, '"7"')]]  # CSV has no types: text
    assert stats.null_values == 1  # an empty field is no value
    chunks, _ = rows(comp("trait", file=path, value_type="number"), chunk_size=10)
    assert chunks == [[("1", None, "10"), ("3", None, "7")]]


def test_parquet_source(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pd.DataFrame({"USER_ID": [1, 2], "value": [[1, 2], []]}).to_parquet(path)
    chunks, _ = rows(comp("trait", file=path), chunk_size=10)
    assert chunks == [[("1", None, "[1,2]"), ("2", None, "[]")]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("email\na@x.io\n", r"audience 'K' \(k\): file '.*vip.csv' has no 'user_id' column \(columns: email\)"),
        ("", r"file '.*vip.csv': is empty"),
    ],
)
def test_bad_csv_names_the_file_and_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "vip.csv"
    path.write_text(content)
    with pytest.raises(SourceError, match=message):
        rows(comp(file=path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"file '.*gone.csv': not found"):
        rows(comp(file=tmp_path / "gone.csv"))


def test_trait_query_without_value_column() -> None:
    with pytest.raises(SourceError, match=r"trait 'K' \(k\): the query has no 'value' column \(columns: user_id\)"):
        rows(comp("trait", sql="SELECT 1 AS user_id"))


def test_sql_text_is_passed_as_written() -> None:
    sql = "SELECT 'u:1' AS user_id, '10:00' AS email UNION ALL SELECT 'u%2', NULL"
    chunks, _ = rows(comp(sql=sql), chunk_size=10)
    assert chunks == [[("u:1", "10:00", "true"), ("u%2", None, "true")]]


def test_statement_that_returns_no_rows() -> None:
    with pytest.raises(SourceError, match="returns no rows"):
        rows(comp(sql="CREATE TABLE t (x int)"))


# --- files are read as written (invariant 7) ---------------------------------------------------------------

#: strings a reader's defaults would take for missing values or numbers
LOOKALIKES = ["NA", "null", "None", "nan", "N/A", "02134", " x ", "NaN", "-", "#N/A", "1.0", "1e3", "TRUE"]


def staged(c: Computation, chunk_size: int) -> list[tuple]:  # type: ignore[type-arg]
    chunks, _ = rows(c, chunk_size=chunk_size)
    return [row for chunk in chunks for row in chunk]


def csv_file(path: Path, header: str, lines: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header.split(","))
    writer.writerows(lines)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def test_csv_ids_and_emails_are_the_exact_text_of_their_fields(tmp_path: Path) -> None:
    lines = [[text, f"{i}@x.io"] for i, text in enumerate(LOOKALIKES)] + [["", "ghost@x.io"], ["  ", "blank@x.io"]]
    path = csv_file(tmp_path / "vip.csv", "user_id,email", lines)
    chunks, stats = rows(comp(file=path), chunk_size=1000)
    assert chunks == [[(text, f"{i}@x.io", "true") for i, text in enumerate(LOOKALIKES)]]
    assert (stats.rows, stats.null_user_ids) == (len(lines), 2)  # an empty or blank id is a missing id


def test_csv_values_are_the_exact_text_of_their_fields(tmp_path: Path) -> None:
    lines = [[f"u{i}", text] for i, text in enumerate(LOOKALIKES)] + [["empty", ""]]
    path = csv_file(tmp_path / "t.csv", "user_id,value", lines)
    with path.open("a") as f:
        f.write('quoted,""\n')  # an empty field in quotes is still an empty field
    assert staged(comp("trait", file=path), 1000) == [
        (f"u{i}", None, json.dumps(text)) for i, text in enumerate(LOOKALIKES)
    ]  # "empty" and "quoted" have no value


@pytest.mark.parametrize("value_type", [None, "text", "number", "json"])
def test_the_same_csv_gives_the_same_values_whatever_the_chunk_size(tmp_path: Path, value_type: str | None) -> None:
    numbers = ["10", "2.5", "02134", "-3", "1e3", ""]
    texts = ["x", "NA", "10", "", "null", "02134"]
    values = {"number": numbers, "json": ["10", '"NA"', "[1,2]", '{"a":1}', "true", "null"]}.get(
        value_type or "text", texts
    )
    lines = [[f"u{i}", v] for i, v in enumerate(values * 5)]
    path = csv_file(tmp_path / "t.csv", "user_id,value", lines)
    c = comp("trait", file=path, value_type=value_type)
    whole = staged(c, 1000)
    assert whole and staged(c, 1) == whole and staged(c, 2) == whole and staged(c, 7) == whole


@pytest.mark.parametrize(
    ("value_type", "field", "value"),
    [
        ("text", "02134", "02134"),
        ("text", " x ", " x "),
        ("number", "02134", 2134),
        ("number", "-7", -7),
        ("number", "2.50", 2.5),
        ("number", "1e3", 1000.0),
        ("number", ".5", 0.5),
        ("number", "12345678901234567890", 12345678901234567890),
        ("boolean", "true", True),
        ("boolean", "FALSE", False),
        ("json", '"NA"', "NA"),
        ("json", "[1, 2]", [1, 2]),
        ("json", '{"b": 1, "a": [true]}', {"a": [True], "b": 1}),
        ("json", '""', ""),
    ],
)
def test_value_type_reads_a_csv_value_as_declared(tmp_path: Path, value_type: str, field: str, value: object) -> None:
    path = csv_file(tmp_path / "t.csv", "user_id,value", [["u1", field]])
    assert staged(comp("trait", file=path, value_type=value_type), 10) == [("u1", None, encode(value))]


def test_a_json_null_is_no_value(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "t.csv", "user_id,value", [["u1", "null"], ["u2", "1"]])
    chunks, stats = rows(comp("trait", file=path, value_type="json"))
    assert chunks == [[("u2", None, "1")]] and stats.null_values == 1


@pytest.mark.parametrize(
    ("value_type", "field", "reason"),
    [
        ("number", "NA", "is not a number"),
        ("number", "1,5", "is not a number"),
        ("number", " 5", "is not a number"),
        ("number", "1_000", "is not a number"),
        ("number", "nan", "is not a number"),
        ("number", "inf", "is not a number"),
        ("number", "1e999", "is too large for a number"),
        ("boolean", "yes", "is not true or false"),
        ("json", "NA", "is not JSON"),
        ("json", "NaN", "is not JSON (NaN is not a JSON number)"),
        ("json", "[1,", "is not JSON"),
    ],
)
def test_a_csv_value_its_value_type_cannot_read_names_file_row_and_user(
    tmp_path: Path, value_type: str, field: str, reason: str
) -> None:
    good = ("true", "false") if value_type == "boolean" else ("1", "0")
    path = csv_file(tmp_path / "t.csv", "user_id,value", [["u1", good[0]], ["u2", good[1]], ["u3", field]])
    with pytest.raises(SourceError) as info:
        rows(comp("trait", file=path, value_type=value_type), chunk_size=1)
    message = str(info.value)
    assert f"trait 'K' (k): file {str(path)!r}: row 3 (user 'u3'): value {field!r} {reason}" in message
    assert f"(value_type = {value_type!r})" in message
    assert info.value.user_id == "u3" and info.value.exit_code == 1


def test_csv_quoting_newlines_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "vip.csv"
    path.write_bytes('\ufeffUser_ID,email\n"a,b",x@y.io\n"line\nbreak",\n"say ""hi""",z@y.io\r\n'.encode())
    assert staged(comp(file=path), 1) == [("a,b", "x@y.io", "true"), ("line\nbreak", None, "true"),
                                          ('say "hi"', "z@y.io", "true")]  # fmt: skip


def test_a_csv_row_with_missing_fields_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "vip.csv"
    path.write_text("user_id,email\nu1,a@x.io\nu2\n")
    with pytest.raises(SourceError, match=r"file '.*vip.csv': cannot be read: .*Expected 2 columns, got 1"):
        rows(comp(file=path))


PARQUET_BAD_ID_TYPES = {
    "binary": pa.array([b"abc", b"def"], pa.binary()),
    "bool": pa.array([True, False]),
    "double": pa.array([1.0, 2.0]),
    "timestamp[us]": pa.array([dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)], pa.timestamp("us")),
    "date32[day]": pa.array([dt.date(2026, 1, 1), dt.date(2026, 1, 2)]),
    "decimal128(10, 0)": pa.array([decimal.Decimal(1), decimal.Decimal(2)], pa.decimal128(10, 0)),
    "list<item: int64>": pa.array([[1], [2]]),
    "struct<a: int64>": pa.array([{"a": 1}, {"a": 2}]),
}


@pytest.mark.parametrize("column", ["user_id", "email"])
@pytest.mark.parametrize("kind", sorted(PARQUET_BAD_ID_TYPES))
def test_a_parquet_id_or_email_without_a_faithful_text_form_names_file_column_and_type(
    tmp_path: Path, kind: str, column: str
) -> None:
    path = tmp_path / "vip.parquet"
    other = "email" if column == "user_id" else "user_id"
    pq.write_table(pa.table({column: PARQUET_BAD_ID_TYPES[kind], other: ["a", "b"]}), path)
    with pytest.raises(SourceError) as info:
        rows(comp(file=path))
    declared = pq.read_schema(path).field(column).type  # as written: a list's item is named by the writer
    assert str(declared).startswith(kind.split("<")[0])
    assert f"audience 'K' (k): file {str(path)!r}: column {column!r} has type {declared}" in str(info.value)
    assert "no faithful text form" in str(info.value) and info.value.exit_code == 1


def test_parquet_integer_and_text_ids_are_their_decimal_text(tmp_path: Path) -> None:
    path = tmp_path / "vip.parquet"
    for ids in (
        pa.array([7, -2, 2**63 - 1], pa.int64()),
        pa.array([7, 0, 2**64 - 1], pa.uint64()),
        pa.array([7, 1, 2], pa.int8()),
        pa.array(["007", "NA", " x "], pa.large_string()),
        pa.array(["007", "NA", "007"]).dictionary_encode(),
    ):
        pq.write_table(pa.table({"user_id": ids}), path)
        expected = [(str(v), None, "true") for v in ids.to_pylist()]
        assert staged(comp(file=path), 2) == expected


PARQUET_VALUES = {
    "int64": pa.array([1, None, 0, -5, 2**40, 7, 8]),
    "double": pa.array([1.5, None, 0.0, -2.25, 1e300, 7.0, 8.125]),
    "bool": pa.array([True, None, False, True, False, True, False]),
    "string": pa.array(["NA", None, "", "02134", " x ", "null", "7"]),
    "list<int64>": pa.array([[1, 2], None, [], [3], [4, 5, 6], [7], [8]]),
    "struct": pa.array([{"a": 1, "b": "x"}, None, {"a": 2, "b": None}, {"a": 3, "b": "y"}] + [{"a": 4, "b": ""}] * 3),
    "timestamp": pa.array([dt.datetime(2026, 1, i + 1) if i != 1 else None for i in range(7)], pa.timestamp("us")),
    "dictionary": pa.array(["a", None, "b", "a", "c", "b", "a"]).dictionary_encode(),
}


@pytest.mark.parametrize("kind", sorted(PARQUET_VALUES))
def test_parquet_values_keep_their_declared_type_whatever_the_chunk_size(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "t.parquet"
    values = PARQUET_VALUES[kind]
    ids = [f"u{i}" for i in range(len(values))]
    pq.write_table(pa.table({"user_id": ids, "value": values}), path, row_group_size=3)
    c = comp("trait", file=path)
    whole = staged(c, 1000)
    assert [v for _, _, v in whole] == [encode(v) for v in values.to_pylist() if v is not None]
    assert staged(c, 1) == whole and staged(c, 2) == whole and staged(c, 4) == whole


def test_csv_lookalikes_reach_the_destination_as_written(harness: Harness, tmp_path: Path) -> None:
    ids = csv_file(tmp_path / "vip.csv", "user_id,email", [[t, f"{i}@x.io"] for i, t in enumerate(LOOKALIKES)])
    values = csv_file(tmp_path / "t.csv", "user_id,value", [[f"u{i}", t] for i, t in enumerate(LOOKALIKES)])
    config = harness.config(
        harness.jsonl_destination()
        + f'[[audiences]]\nname = "VIP"\nfile = "{ids}"\n'
        + f'[[computed_traits]]\nname = "Code"\nfile = "{values}"\n'
    )
    result = harness.run(config)
    assert result.exit_code == 0, result.error
    sent = harness.sent(harness.new_calls())
    assert {u for (u, key) in sent if key == "vip"} == set(LOOKALIKES)
    assert {u: v for (u, key), v in sent.items() if key == "code"} == {f"u{i}": t for i, t in enumerate(LOOKALIKES)}


def test_adding_an_unrelated_csv_row_resends_nobody_else(harness: Harness, tmp_path: Path) -> None:
    lines = [["u1", "10"], ["u2", "20"], ["u3", "abc"], ["u4", "02134"]]
    path = csv_file(tmp_path / "t.csv", "user_id,value", lines)
    body = harness.jsonl_destination() + f'[[computed_traits]]\nname = "Code"\nfile = "{path}"\n'
    config = dataclasses.replace(harness.config(body), source_chunk_size=2)
    harness.run(config)
    first = harness.sent(harness.new_calls())
    assert set(first) == {(u, "code") for u, _ in lines}
    csv_file(path, "user_id,value", [["u0", "xyz"], *lines])  # one new row at the top shifts every chunk
    result = harness.run(config)
    assert (result.counts["entered"], result.counts["changed"]) == (1, 0)
    assert harness.sent(harness.new_calls()) == {("u0", "code"): "xyz"}
    assert first == {(u, "code"): v for u, v in lines}  # and what was sent is the text as written
    numbers = dataclasses.replace(config, computations=tuple(
        dataclasses.replace(c, value_type="number") for c in config.computations
    ))  # fmt: skip
    csv_file(path, "user_id,value", [["u1", "10"], ["u2", "2.5"], ["u4", "02134"]])
    harness.run(numbers)
    assert harness.sent(harness.new_calls()) == {("u0", "code"): None, ("u1", "code"): 10, ("u2", "code"): 2.5,
                                                 ("u3", "code"): None, ("u4", "code"): 2134}  # fmt: skip


def test_a_parquet_file_with_a_bad_id_type_fails_the_run_before_any_diff(harness: Harness, tmp_path: Path) -> None:
    path = tmp_path / "vip.parquet"
    pq.write_table(pa.table({"user_id": pa.array([b"abc"], pa.binary())}), path)
    config = harness.config(harness.jsonl_destination() + f'[[audiences]]\nname = "VIP"\nfile = "{path}"\n')
    with pytest.raises(SourceError, match=r"column 'user_id' has type binary") as info:
        harness.run(config)
    assert info.value.exit_code == 1 and harness.new_calls() == []
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM sync_runs")).scalar_one() == "failed"
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 0
    engine.dispose()
