"""The one place that knows which SQL dialects the state database may use, and how the two differ.

Every difference between a SQLite and a PostgreSQL state database that the store and the run act on is a field
of :class:`Backend`, named for what it means (``bulk_copy``, ``advisory_locks``, ...), so that a module asks
what it needs rather than which database it is on; :func:`backend` gives the one for a connection, an engine
or a dialect and refuses any other database. What stays outside: SQL functions compiled per dialect with
SQLAlchemy's ``@compiles`` (``store/sqlfuncs.py``: the mechanism SQLAlchemy gives for exactly this), and the
SQL the pushdown and the builder write for the source's dialect (``sources/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from ..errors import StoreError


@dataclass(frozen=True)
class Backend:
    """What a state database's dialect means for the store and the run."""

    name: Literal["sqlite", "postgresql"]
    #: an embedded file: connections get pragmas and the Python functions of ``store/sqlfuncs.py``, a busy
    #: timeout instead of a pool's pre-ping, and a page cache sized for delivery
    embedded: bool
    #: bulk rows are loaded with ``COPY`` through a temporary table (else: batched upserts in one transaction)
    bulk_copy: bool
    #: an upsert's row count includes the repeats it merged, so a pushed-down load cannot learn its distinct
    #: users from it (PostgreSQL's plain ``INSERT`` can, and is tried first)
    upsert_counts_repeats: bool
    #: run locks are also session advisory locks, held by a connection of their own (else: lease rows only)
    advisory_locks: bool
    #: timestamps are stored without a time zone (UTC implied): SQLite has no zoned type
    naive_timestamps: bool
    #: ``JSON`` is a type to cast to and its builders take typed arguments (else: JSON is text, checked by
    #: ``json()``, and ``json_object`` builds objects)
    typed_json: bool
    #: a declared text length is not enforced, so a difference in it is no difference (Alembic's compare)
    text_lengths_ignored: bool
    #: serial ids come from sequences, which a bulk copy of rows with their ids must move past
    sequences: bool
    #: text can hold a NUL byte, so a user id that cannot be staged may still be matched against old rows
    text_holds_nul: bool
    #: the planner's statistics go stale after a bulk change and must be refreshed (``ANALYZE``)
    analyze_after_bulk: bool
    #: a ``DELETE`` without a ``WHERE`` frees a table's pages without visiting its rows (SQLite's truncate
    #: optimisation), and another connection cannot write between a transaction's first write and its end;
    #: PostgreSQL's ``TRUNCATE`` would wait for every reader of the table, and rows it cannot see yet would go too
    truncating_delete: bool


SQLITE = Backend(
    "sqlite",
    embedded=True,
    bulk_copy=False,
    upsert_counts_repeats=True,
    advisory_locks=False,
    naive_timestamps=True,
    typed_json=False,
    text_lengths_ignored=True,
    sequences=False,
    text_holds_nul=True,
    analyze_after_bulk=False,
    truncating_delete=True,
)
POSTGRESQL = Backend(
    "postgresql",
    embedded=False,
    bulk_copy=True,
    upsert_counts_repeats=False,
    advisory_locks=True,
    naive_timestamps=False,
    typed_json=True,
    text_lengths_ignored=False,
    sequences=True,
    text_holds_nul=False,
    analyze_after_bulk=True,
    truncating_delete=False,
)
_BACKENDS: dict[str, Backend] = {b.name: b for b in (SQLITE, POSTGRESQL)}


def known_backend(bind: Connection | Engine | Dialect | str) -> Backend | None:
    """The :class:`Backend` of ``bind`` (a connection, an engine, a dialect or a backend name such as
    ``make_url(url).get_backend_name()`` gives), or None for another database (a source may be any)."""
    name = bind if isinstance(bind, str) else bind.name if isinstance(bind, Dialect) else bind.dialect.name
    return _BACKENDS.get(name)


def backend(bind: Connection | Engine | Dialect | str) -> Backend:
    """:func:`known_backend` for a state database: StoreError when it is neither SQLite nor PostgreSQL."""
    found = known_backend(bind)
    if found is None:
        name = bind if isinstance(bind, str) else bind.name if isinstance(bind, Dialect) else bind.dialect.name
        raise StoreError(f"the state database must be SQLite or PostgreSQL, not {name}")
    return found


def upsert(conn: Connection, table: Table) -> Any:
    """An ``INSERT`` for ``table`` that supports ``on_conflict_do_update`` on the connection's dialect."""
    return (sqlite if backend(conn) is SQLITE else postgresql).insert(table)


def analyze(conn: Connection, table: str) -> None:
    """Refresh the planner's statistics on ``table`` after a bulk change (PostgreSQL; SQLite plans without).

    Without it PostgreSQL plans for the table as it was before the load, and may pick a nested loop or a
    full sort where an index range would do.
    """
    if backend(conn).analyze_after_bulk:
        conn.exec_driver_sql(f"ANALYZE {table}")


def literal_sql(dialect: Dialect, text: str) -> str:
    """SQL text (which may hold a user's query) for ``exec_driver_sql``: ``%`` doubled for drivers that parse it
    as a parameter marker even in literals (psycopg), so that the database sees the text as written."""
    return text.replace("%", "%%") if dialect.paramstyle in ("format", "pyformat") else text


def is_postgresql(bind: Connection | Engine) -> bool:
    """Whether ``bind`` reaches PostgreSQL (the stage step's bulk paths are chosen by it, for sources too)."""
    return bool(bind.dialect.name == "postgresql")


def temporary_schema(conn: Connection) -> str:
    """The schema of the connection's own temporary tables, to name one without a table of the database itself
    ever being taken for it."""
    return "pg_temp" if is_postgresql(conn) else "temp"
