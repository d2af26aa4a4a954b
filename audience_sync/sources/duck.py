"""DuckDB sources: ``[source] url = "duckdb:///path/to/file.duckdb"``, read with DuckDB's own Python API.

No SQLAlchemy dialect is needed. A run reads the file through one :class:`DuckFile`: a single read-only
connection (``duckdb.connect``), opened on the run's first read and closed when the run ends, whatever ends it;
each read takes a cursor of its own from it (DuckDB's ``connection.cursor()``: the same database, its own result
and ``interrupt``), so every computation of the run reads the same opened file, catalogue loaded once. Its
queries are streamed in chunks (:func:`read_duckdb`) as any SQL source's, or their raw rows read as Arrow
record batches and landed in the state database (``sources/landing.py``).
"""

from __future__ import annotations

import importlib.util
import threading
from collections import Counter
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


#: how many times each DuckDB file was opened (``duckdb.connect``) in this process: once per run that read it
OPENS: Counter[Path] = Counter()


class DuckFile:
    """A run's DuckDB source file: one read-only connection, opened on first use and shared by every read of the
    run, each on a cursor of its own (:meth:`cursor`), until :meth:`close`. Safe to read from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DuckFile({str(self.path)!r}, {'open' if self.is_open else 'closed'})"

    @property
    def is_open(self) -> bool:
        """Whether the connection is open (from the first read to :meth:`close`)."""
        return self._conn is not None

    def open(self) -> None:
        """Open the file's connection when it is not open yet. Raises ``duckdb.Error`` when the file cannot be opened
        (missing: read-only never creates one; not a DuckDB file; locked by a writer); the next read tries again."""
        with self._lock:
            self._open()

    def _open(self) -> Any:
        if self._conn is None:
            import duckdb

            self._conn = duckdb.connect(str(self.path), read_only=True)
            OPENS[self.path] += 1
        return self._conn

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor of the file's connection (opened now when it is not yet: :meth:`open`), closed on leaving.
        Raises ``duckdb.Error``."""
        with self._lock:
            cur = self._open().cursor()
        try:
            yield cur
        finally:
            cur.close()

    def close(self) -> None:
        """Close the connection, and any cursor still open on it: the file is free for a writer again."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _failed(comp: Computation, exc: Exception) -> SourceError:
    return SourceError(
        f"{comp.label}: query failed: {scrub(' '.join(str(exc).split()))}",
        computation=comp.key,
    )


def read_duckdb(source: DuckFile, comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
    """Yield the query's rows on the DuckDB file ``source`` as ``(user_id, email, value)`` chunks of at most
    ``chunk_size``, as :func:`audience_sync.sources.sql.read_sql` does for a SQLAlchemy source (the same
    messages for a query that fails, returns no rows or lacks a column). A file that cannot be opened is a
    SourceError naming the file (and the computation that was to read it)."""
    assert comp.sql is not None
    try:
        source.open()
    except errors() as exc:  # the file's fault, not the query's: the first computation to read it only meets it
        raise SourceError(
            f"the DuckDB source file {source.path} cannot be opened (read-only, for {comp.label}): "
            f"{scrub(' '.join(str(exc).split()))}",
            computation=comp.key,
        ) from None
    try:
        with source.cursor() as conn:
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
    """A ``pyarrow.RecordBatchReader`` over ``sql``'s rows on a DuckDB connection or cursor, ``batch_rows`` per
    batch."""
    relation = conn.sql(sql)
    if hasattr(relation, "to_arrow_reader"):  # DuckDB 2
        return relation.to_arrow_reader(batch_rows)
    return relation.fetch_arrow_reader(batch_rows)  # DuckDB 1
