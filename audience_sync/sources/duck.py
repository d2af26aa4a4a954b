"""DuckDB sources: ``[source] url = "duckdb:///path/to/file.duckdb"``, read with DuckDB's own Python API.

No SQLAlchemy dialect is needed: the file is opened read-only with ``duckdb.connect`` for each read. Its
queries are streamed in chunks (:func:`read_duckdb`) as any SQL source's, or their raw rows read as Arrow
record batches and landed in the state database (``sources/landing.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..config import Computation
from ..errors import SourceError
from ..redact import scrub
from .columns import locate
from .rows import RawRow


def duckdb_file(url: str) -> Path | None:
    """The file of a ``duckdb:///path`` URL when the ``duckdb`` package is installed, else None (any other URL,
    an in-memory DuckDB, or no package: the URL is then an ordinary SQLAlchemy URL, for a dialect to handle)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "duckdb" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database) if installed() else None


def installed() -> bool:
    """Whether the ``duckdb`` package (the ``duckdb`` extra) is there."""
    return importlib.util.find_spec("duckdb") is not None


def errors() -> tuple[type[Exception], ...]:
    """The errors DuckDB raises (for a failing query, an unreadable file)."""
    import duckdb

    return (duckdb.Error,)


@contextmanager
def connected(path: Path) -> Iterator[Any]:
    """A read-only DuckDB connection to ``path``, closed on leaving. Raises ``duckdb.Error`` (a missing file
    too: read-only never creates one)."""
    import duckdb

    conn = duckdb.connect(str(path), read_only=True)
    try:
        yield conn
    finally:
        conn.close()


def _failed(comp: Computation, exc: Exception) -> SourceError:
    return SourceError(
        f"{comp.label}: query failed: {scrub(' '.join(str(exc).split()))}",
        computation=comp.key,
    )


def read_duckdb(path: Path, comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
    """Yield the query's rows on the DuckDB file ``path`` as ``(user_id, email, value)`` chunks of at most
    ``chunk_size``, as :func:`audience_sync.sources.sql.read_sql` does for a SQLAlchemy source (the same
    messages for a query that fails, returns no rows or lacks a column)."""
    assert comp.sql is not None
    try:
        with connected(path) as conn:
            result = conn.execute(comp.sql)
            if result.description is None:
                raise SourceError(
                    f"{comp.label}: the query returns no rows (is it a SELECT?)",
                    computation=comp.key,
                )
            uid, email, value = locate(comp, [d[0] for d in result.description], "the query")
            while chunk := result.fetchmany(chunk_size):
                yield [
                    (r[uid], r[email] if email is not None else None, r[value] if value is not None else None)
                    for r in chunk
                ]
    except errors() as exc:
        raise _failed(comp, exc) from None


def arrow_reader(conn: Any, sql: str, batch_rows: int) -> Any:
    """A ``pyarrow.RecordBatchReader`` over ``sql``'s rows on a DuckDB connection, ``batch_rows`` per batch."""
    relation = conn.sql(sql)
    if hasattr(relation, "to_arrow_reader"):  # DuckDB 2
        return relation.to_arrow_reader(batch_rows)
    return relation.fetch_arrow_reader(batch_rows)  # DuckDB 1
