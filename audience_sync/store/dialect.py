"""The one place that knows which SQL dialects the state database may use."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from ..errors import StoreError


def upsert(conn: Connection, table: Table) -> Any:
    """An ``INSERT`` for ``table`` that supports ``on_conflict_do_update`` on the connection's dialect."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"the state database must be SQLite or PostgreSQL, not {name}")


def analyze(conn: Connection, table: str) -> None:
    """Refresh the planner's statistics on ``table`` after a bulk change (PostgreSQL; SQLite plans without).

    Without it PostgreSQL plans for the table as it was before the load, and may pick a nested loop or a
    full sort where an index range would do.
    """
    if conn.dialect.name == "postgresql":
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
