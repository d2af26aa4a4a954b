"""Sources: where a computation's current members and values come from (SQL or files)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine

from ..config import Computation
from .duck import DuckFile, read_duckdb
from .files import read_file
from .rows import RawRow, SourceStats, normalize
from .sql import read_sql

__all__ = ["RawRow", "SourceStats", "normalize", "read_rows"]


def read_rows(comp: Computation, source: Engine | DuckFile, chunk_size: int) -> Iterator[list[RawRow]]:
    """The computation's raw rows in chunks, from its file or from its query on ``source`` (a SQLAlchemy
    engine, or the run's DuckDB file: ``sources/duck.py``)."""
    if comp.file is not None:
        return read_file(comp, chunk_size)
    if isinstance(source, DuckFile):
        return read_duckdb(source, comp, chunk_size)
    return read_sql(source, comp, chunk_size)
