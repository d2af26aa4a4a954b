"""SQL sources: a computation's query run on any SQLAlchemy URL, rows streamed in chunks."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Computation
from ..errors import SourceError
from ..redact import scrub
from ..store.dialect import literal_sql
from ..store.engine import without_cursor_names
from .columns import locate
from .rows import RawRow


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    # a driver may quote its connection (scrubbed), and its own cursor's name (dropped)
    return without_cursor_names(scrub(" ".join(str(orig if orig is not None else exc).split())))


def read_sql(engine: Engine, comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
    """Yield the query's rows as ``(user_id, email, value)`` chunks of at most ``chunk_size``.

    The query text goes to the driver as written (no parameter parsing, so ``:`` and ``%`` are literal).
    Rows are streamed with a server-side cursor where the driver has one; memory does not grow with the
    result. Raises SourceError naming the computation and the database's own reason.
    """
    assert comp.sql is not None
    sql = literal_sql(engine.dialect, comp.sql)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=chunk_size).exec_driver_sql(sql)
            if not result.returns_rows:
                raise SourceError(
                    f"{comp.label}: the query returns no rows (is it a SELECT?)",
                    computation=comp.key,
                )
            uid, email, value = locate(comp, list(result.keys()), "the query")
            while chunk := result.fetchmany(chunk_size):
                yield [
                    (r[uid], r[email] if email is not None else None, r[value] if value is not None else None)
                    for r in chunk
                ]
    except SQLAlchemyError as exc:
        raise SourceError(
            f"{comp.label}: query failed: {_reason(exc)}",
            computation=comp.key,
        ) from None
