"""Reading a computation's raw rows out of another database in bulk, to land them in the state database.

A query on a source that is not the state database is normally streamed through Python (``rows.py``), row by
row. When its columns have types the pushdown normalises exactly as Python would, the rows can instead be
moved in bulk into a temporary table of the state database (``store/landing.py``) and pushed down from there
(``run/land.py``): no Python per row, the same staged rows.

- **PostgreSQL to PostgreSQL** (:func:`land_postgres`): ``COPY (query) TO STDOUT`` on the source, its blocks
  written unchanged into ``COPY ... FROM STDIN`` on the state (text format, which round-trips these types).

Only the columns the computation uses are landed, under their canonical names, and only with types the pushdown
handles; any other type raises :class:`NotLandable`, and the computation is streamed as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import Computation
from ..errors import SourceError
from ..store import landing
from .columns import locate
from .pushdown import query_text

#: PostgreSQL type OIDs landed, with the type of the landed column: those ``sources/pushdown.py`` renders as
#: Python would (integers, text and varchar, boolean, uuid)
PG_LANDED = {20: "bigint", 21: "bigint", 23: "bigint", 25: "text", 1043: "text", 16: "boolean", 2950: "uuid"}

#: the errors a landing may meet on either side: each means "stream instead", and the streamed path says it again
ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, psycopg.Error)


class NotLandable(Exception):
    """The computation's rows cannot be landed (a column type, a column missing): stream them instead."""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def used_columns(comp: Computation, names: list[str]) -> list[tuple[str, int]]:
    """The landed names of the columns ``comp`` uses and their positions among the query's ``names``.

    NotLandable when a required column is missing (the streamed path then reports it in its own words).
    """
    try:
        found = locate(comp, names, "the query")
    except SourceError as exc:  # said again, in the same words, by the streamed path
        raise NotLandable(str(exc)) from None
    return [(canonical, i) for canonical, i in zip(landing.COLUMNS, found, strict=True) if i is not None]


def _pg_probe(cur: Any, inner: str) -> tuple[list[str], list[int]]:
    cur.execute(f"SELECT * FROM ({inner}) AS src LIMIT 0")
    description = cur.description or []
    return [d.name for d in description], [int(d.type_code) for d in description]


def land_postgres(source: Engine, comp: Computation, conn: Connection) -> int:
    """Copy ``comp``'s query rows from the PostgreSQL ``source`` into the landed table on ``conn`` (the state,
    PostgreSQL, inside a transaction); return the bytes copied.

    NotLandable when a used column's type is not one of :data:`PG_LANDED`. Raises the driver's error
    (``psycopg.Error``) when the query fails on the source or its data is refused by the state.
    """
    assert comp.sql is not None
    inner = query_text(comp.sql)
    with source.connect() as source_conn:
        raw: Any = source_conn.connection.driver_connection
        with raw.cursor() as cur:
            names, oids = _pg_probe(cur, inner)
            used = used_columns(comp, names)
            columns = []
            for canonical, i in used:
                sql_type = PG_LANDED.get(oids[i])
                if sql_type is None:
                    raise NotLandable(f"column {names[i]!r} has PostgreSQL type {oids[i]}, which is not landed")
                columns.append((canonical, sql_type))
            landing.create(conn, columns)
            selected = ", ".join(f"src.{_quote(names[i])}" for _, i in used)
            with cur.copy(f"COPY (SELECT {selected} FROM ({inner}) AS src) TO STDOUT") as out:
                blocks: Iterator[Any] = iter(out)
                return landing.copy_blocks(conn, [c for c, _ in columns], blocks, csv=False)
