"""The lock that lets one process at a time upgrade a state database.

Two upgrades of one database at once (cron starting two destinations' runs in the same minute on a new install:
each run migrates first) would both create Alembic's version table, or both apply one migration, and one of
them would fail ("database is locked", a duplicate ``alembic_version`` type, "expected to match one row").
``migrations/env.py`` takes this lock on the migration connection before Alembic reads the version, so the
upgrade that waited finds the database at the revision the first one reached and applies only what is left.

- **PostgreSQL**: a session-level advisory lock on the migration connection, in the two-integer key space (which
  the run locks' 64-bit keys never meet), keyed by the schema: two deployments keeping their state in two schemas
  of one database do not wait for each other. Each migration keeps its own transaction.
- **SQLite**: the whole upgrade is one ``BEGIN IMMEDIATE`` transaction on the migration connection, DDL
  included: its write lock is the migration lock (readers go on reading, in WAL mode), no file is added beside
  the database, and an interrupted upgrade leaves the database at the revision it started from.

A database already at head never gets here (``migrate.upgrade`` recognises it with one query first).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from .dialect import backend
from .engine import SQLITE_BUSY, redact_url

log = logging.getLogger(__name__)

#: the message logged when another process holds the lock (before waiting for it); on PostgreSQL only an upgrade
#: takes it
WAITING = "another process is upgrading the state database %s: waiting for it to finish"
#: the same on SQLite, whose lock is the file's write lock: any writer may hold it (an upgrade, a run, another
#: program); the wait lasts as long as it is held (an upgrade may take minutes), each attempt the busy timeout
WAITING_FOR_WRITER = (
    "another process holds a write lock on the state database %s (an upgrade, a run or another program): "
    "waiting for it to finish"
)
#: SQLite's primary result codes for a lock another connection holds: SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_BUSY = (SQLITE_BUSY, 6)
#: the shortest wait of one attempt at SQLite's write lock, in ms: never a busy loop
_MIN_SQLITE_WAIT_MS = 1_000


def _int4(data: str) -> int:
    return int.from_bytes(hashlib.sha256(data.encode()).digest()[:4], "big", signed=True)


#: the first half of every migration lock's key on PostgreSQL; the second is the schema's
LOCK_CLASS = _int4("audience-sync migrate")


def advisory_keys(schema: str) -> tuple[int, int]:
    """The two 32-bit keys of the migration lock of the state kept in ``schema`` (PostgreSQL)."""
    return LOCK_CLASS, _int4(schema)


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the migration lock of the connection's state database while inside, waiting for it first (as long as
    another process holds it, saying so once in the log).

    ``connection`` must not be in a transaction. Inside, the caller commits what it did; an exception rolls it back.
    On SQLite everything inside is one transaction (the lock), so nothing may commit before the end.
    """
    if backend(connection).advisory_locks:
        with _advisory_lock(connection):
            yield
    else:
        with _write_lock(connection):
            yield


@contextmanager
def _advisory_lock(connection: Connection) -> Iterator[None]:
    schema = connection.execute(text("SELECT current_schema()")).scalar_one() or ""
    a, b = advisory_keys(schema)
    keys = {"a": a, "b": b}
    args = "CAST(:a AS integer), CAST(:b AS integer)"
    if not connection.execute(text(f"SELECT pg_try_advisory_lock({args})"), keys).scalar_one():
        log.info(WAITING, redact_url(str(connection.engine.url)))
        connection.execute(text(f"SELECT pg_advisory_lock({args})"), keys)
    connection.commit()  # a session-level lock outlives the transaction: the migrations keep their own
    try:
        yield
    finally:
        try:
            connection.rollback()
            connection.execute(text(f"SELECT pg_advisory_unlock({args})"), keys)
            connection.commit()
        except SQLAlchemyError:
            connection.invalidate()  # its session ends, and the lock with it: never back into the pool holding it


@contextmanager
def _write_lock(connection: Connection) -> Iterator[None]:
    """SQLite: one ``BEGIN IMMEDIATE`` transaction, DDL included.

    Python's sqlite3 module begins a transaction only before INSERT, UPDATE or DELETE (so a CREATE TABLE would
    commit on its own): its transaction handling is switched off for this connection while inside, and the
    transaction is begun explicitly (SQLAlchemy's recipe for pysqlite).
    """
    dbapi = connection.connection.driver_connection
    assert isinstance(dbapi, sqlite3.Connection)
    connection.rollback()  # nothing may be open when the module stops managing transactions
    previous = dbapi.isolation_level
    dbapi.isolation_level = None
    try:
        _begin_immediate(connection, dbapi)
        yield
    finally:
        connection.rollback()  # after the caller's commit: nothing; after an exception: everything inside
        dbapi.isolation_level = previous


def _begin_immediate(connection: Connection, dbapi: sqlite3.Connection) -> None:
    """Take SQLite's write lock: at once if it is free, else after saying so, waiting as long as it is held."""
    busy_ms = int(dbapi.execute("PRAGMA busy_timeout").fetchone()[0])
    dbapi.execute("PRAGMA busy_timeout = 0")
    try:
        if _try_begin(connection):
            return
        log.info(WAITING_FOR_WRITER, redact_url(str(connection.engine.url)))
        dbapi.execute(f"PRAGMA busy_timeout = {max(busy_ms, _MIN_SQLITE_WAIT_MS)}")
        while not _try_begin(connection):  # each attempt waits up to the busy timeout
            pass
    finally:
        dbapi.execute(f"PRAGMA busy_timeout = {busy_ms}")


def _try_begin(connection: Connection) -> bool:
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except OperationalError as exc:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        connection.rollback()
        if code is not None and code & 0xFF in _SQLITE_BUSY:
            return False
        raise
    return True
