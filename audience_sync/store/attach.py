"""A SQLite source file attached to a state connection, so that its queries run inside the state database.

With both the state and the source in SQLite files, a computation's query can be pushed down exactly as when
the source is the state database itself: ``ATTACH`` makes the source's tables visible to the state's
connection, and one ``INSERT INTO staging SELECT ...`` stages the rows without a single row passing through
Python. SQLite resolves an unqualified table name in ``main`` (and ``temp``) before an attached database, so a
source whose tables share a name with one of the state's would be read wrongly: :func:`shadowed` names them, and
the run streams such a source instead. For the same reason a query naming a table the source lacks would read the
state's table of that name where streaming fails: :func:`compiles_alone` checks the query against the source file
alone first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .engine import read_only_uri, recover_hot_journal

#: the schema name the source file is attached under (never written to)
SOURCE_SCHEMA = "as_source"


@contextmanager
def attached(engine: Engine, source: Path) -> Iterator[Connection]:
    """A connection of the SQLite state ``engine`` with the file ``source`` attached as :data:`SOURCE_SCHEMA`.

    Guarantees: the file is attached only for this connection's use and detached before the connection goes
    back to the pool, whatever happened (an open transaction is rolled back first: SQLite cannot detach inside
    one); it is attached read-only (the state's connections take URI filenames), so no statement on the connection
    can write it. ``FileNotFoundError`` when ``source`` is not a file: attaching would create an empty database.
    """
    if not source.is_file():
        raise FileNotFoundError(str(source))
    recover_hot_journal(source)  # a read-only attachment could not, and would fail
    with engine.connect() as conn:
        conn.exec_driver_sql(f"ATTACH DATABASE ? AS {SOURCE_SCHEMA}", (read_only_uri(source),))
        conn.commit()
        try:
            yield conn
        finally:
            if conn.in_transaction():
                conn.rollback()
            conn.exec_driver_sql(f"DETACH DATABASE {SOURCE_SCHEMA}")
            conn.commit()


def shadowed(conn: Connection) -> set[str]:
    """The source's table and view names (lower case) that a table or view of the state database hides."""
    kinds = "type IN ('table', 'view')"
    rows = conn.exec_driver_sql(
        f"SELECT lower(name) FROM {SOURCE_SCHEMA}.sqlite_master WHERE {kinds} "
        f"INTERSECT SELECT lower(name) FROM (SELECT name FROM main.sqlite_master WHERE {kinds} "
        f"UNION ALL SELECT name FROM temp.sqlite_master WHERE {kinds})"
    )
    return {str(name) for (name,) in rows}


def compiles_alone(source: Connection, query: str) -> bool:
    """Whether ``query`` (a subquery's text) compiles on ``source``, a connection to the source file alone: every
    table and view it names is then the source's own. ``EXPLAIN`` compiles it without running it."""
    try:
        source.exec_driver_sql(f"EXPLAIN SELECT * FROM ({query}) AS src").close()
    except SQLAlchemyError:
        return False
    return True
