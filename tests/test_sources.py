"""Sources: files and SQL read in chunks, with clear errors naming the computation and the culprit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine

from audience_sync.config import Computation
from audience_sync.errors import SourceError
from audience_sync.sources import SourceStats, normalize, read_rows


def comp(cls: str = "audience", *, sql: str | None = None, file: Path | None = None) -> Computation:
    return Computation(
        key="k",
        name="K",
        computation_class=cls,  # type: ignore[arg-type]
        sql=sql,
        file=str(file) if file else None,
        destinations=("d",),
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


def test_csv_trait_values_keep_their_types(tmp_path: Path) -> None:
    path = tmp_path / "ltv.csv"
    path.write_text("user_id,value\n1,10\n2,\n3,7\n")
    chunks, stats = rows(comp("trait", file=path), chunk_size=10)
    assert chunks == [[("1", None, "10"), ("3", None, "7")]]
    assert stats.null_values == 1


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
