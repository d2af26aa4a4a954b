"""Engines for the state database and the SQL sources, with the settings each backend needs."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from ..errors import ConfigError, StoreError
from ..redact import MASK, is_secret_parameter, scrub
from .dialect import backend, known_backend
from .sqlfuncs import register_sqlite_functions

log = logging.getLogger(__name__)

#: the busy timeout of a SQLite state connection, unless its URL says ``?timeout=SECONDS``
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite's primary result code for a lock another connection holds
SQLITE_BUSY = 5
#: page cache of the connection that marks and records delivery chunks, in KiB (SQLite's default is 2 MB): a
#: 10,000-change chunk's rows and index pages (about 8 MB) stay cached between marking and recording it
DELIVERY_CACHE_KIB = 16_384


def redact_url(url: str) -> str:
    """The URL with its password and the values of its secret query parameters (``?password=``,
    ``?sslpassword=``, ...) replaced by ``***``, and any other known secret scrubbed: safe for messages and logs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    masked = {name: MASK if is_secret_parameter(name) else value for name, value in parsed.query.items()}
    rendered = parsed.set(query=masked).render_as_string(hide_password=True)
    return scrub(rendered.replace(quote(MASK, safe=""), MASK))


#: how long switching a SQLite file to WAL mode waits silently before it says it waits: a lock held that briefly
#: (the last connection to a WAL file checkpointing as it closes, say) is no news
WAIT_SILENTLY = 0.1

#: the log line when another connection holds a lock on a SQLite file that is still in rollback-journal mode (a
#: reader's keeps out the switch to WAL mode as well as a writer's)
WAITING_FOR_WAL = (
    "another process holds a lock on %s (it is reading or writing it), which is in rollback-journal mode: "
    "audience-sync switches it to WAL mode first and waits up to %g s for that lock"
)
#: the same, when the file is not in rollback-journal mode (already in WAL mode, say)
WAITING_FOR_FILE = "another process holds a lock on %s (it is reading or writing it): audience-sync waits up to %g s"


def _main_file(cursor: sqlite3.Cursor) -> str:
    """The path of the connection's main database file (for messages)."""
    rows = cursor.execute("PRAGMA database_list").fetchall()
    return next((str(row[2]) for row in rows if row[1] == "main" and row[2]), ":memory:")


def _rollback_journal(cursor: sqlite3.Cursor, file: str) -> bool:
    """Whether the file is in rollback-journal mode, as ``PRAGMA journal_mode`` reads it (not setting it); when a
    writer holding the file exclusively keeps out even that read, as the file's header says (its format versions:
    1 for a rollback journal, 2 for WAL). False when neither can be read."""
    try:
        return str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal"
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_BUSY:
            raise
    try:
        with Path(file).open("rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 1


def _wal(cursor: sqlite3.Cursor, timeout: float, what: str) -> None:
    """Put the database in WAL mode (a no-op once it is), waiting up to ``timeout`` seconds for the lock the
    switch needs when another connection holds one (said once in the log when the wait has lasted
    :data:`WAIT_SILENTLY`). Raises StoreError naming the file when the lock is still held at the end of the wait;
    nothing has been written then.

    Only a file still in rollback-journal mode waits here for long: a new file, or one made by another program,
    which any other connection reading or writing it keeps from switching. A file in WAL mode may answer "busy"
    for a moment too (its last connection checkpointing as it closes): that is no rollback journal, and over
    before the log would say anything. The switch is not moved under the migration lock: every connection of
    every command makes it (a database at head, opened by ``runs`` or a run, takes no migration lock), and SQLite
    cannot change the journal mode inside a transaction, which the migration lock on SQLite is. So, as every other
    lock does, it says so when it waits.

    Two connections switching a new file at the same moment each hold a shared lock and want the exclusive one:
    SQLite answers one of them "database is locked" at once, without waiting (it would deadlock); a writer holding
    the file's write lock is answered so at once too. The connection tries again, shortly, until ``timeout``; by
    then the other has switched the file (or let go), and it is a no-op (or done).
    """
    started = time.monotonic()
    deadline = started + timeout
    silent_until = started + min(WAIT_SILENTLY, timeout)
    pause = 0.001
    waiting = False
    cursor.execute("PRAGMA busy_timeout=0")  # the first try never waits: a wait is announced first
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != SQLITE_BUSY:
                raise
        now = time.monotonic()
        if now >= deadline:
            file = _main_file(cursor)
            if _rollback_journal(cursor, file):
                raise StoreError(
                    f"the {what} {file} is in rollback-journal mode and another process held a lock on it (it is "
                    f"reading or writing it) for {timeout:g} s: audience-sync switches it to WAL mode first and "
                    f"could not. Stop the other process (or let it finish) and try again"
                )
            raise StoreError(
                f"another process held a lock on the {what} {file} (it is reading or writing it) for {timeout:g} s. "
                f"Stop the other process (or let it finish) and try again"
            )
        if not waiting and now >= silent_until:
            file = _main_file(cursor)
            log.info(WAITING_FOR_WAL if _rollback_journal(cursor, file) else WAITING_FOR_FILE, file, timeout)
            waiting = True
        # a writer holding the file exclusively keeps out even a read: SQLite's own wait then ends when it lets go
        # (before the line is logged, at the moment it is due)
        until = deadline if waiting else silent_until
        cursor.execute(f"PRAGMA busy_timeout={max(int((until - now) * 1000), 1)}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _sqlite_pragmas(timeout: float, what: str) -> Callable[[Any, ConnectionPoolEntry], None]:
    """The connect hook of a SQLite state engine: WAL mode (:func:`_wal`), a busy timeout of ``timeout`` seconds,
    foreign keys, and the Python functions of ``store/sqlfuncs.py``."""

    def connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_conn.cursor()
        _wal(cursor, timeout, what)
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        register_sqlite_functions(dbapi_conn)

    return connect


def _embedded(bind: Engine | str) -> bool:
    """Whether ``bind`` is an embedded file database (SQLite); a source engine may be of any kind."""
    known = known_backend(bind)
    return known is not None and known.embedded


def create_state_engine(url: str, *, what: str = "state database") -> Engine:
    """An engine for ``url``: SQLite in WAL mode with a busy timeout, others as SQLAlchemy makes them.

    The busy timeout is 30 s, or the URL's ``?timeout=SECONDS`` (SQLAlchemy's own parameter for SQLite): how long
    a connection waits for a lock another process holds on the file, the switch to WAL mode's included.

    ``postgresql://`` URLs use psycopg 3. Raises ConfigError naming the (redacted) URL when it is not a
    usable SQLAlchemy URL or its driver is not installed.
    """
    try:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs: dict[str, Any] = {"future": True}
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
        if _embedded(parsed.get_backend_name()):
            given = parsed.query.get("timeout", str(timeout))
            timeout = float(given) if isinstance(given, str) else -1.0
            if not 0 <= timeout <= (2**31 - 1) / 1000:
                raise ValueError(f"timeout={given} is not a number of seconds SQLite can wait")
            # URI filenames: a source file is attached read-only by one (``store/attach.py``); a plain path is a path
            kwargs["connect_args"] = {"timeout": timeout, "uri": True}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise ConfigError(f"{what} URL {redact_url(url)!r} is not usable: {scrub(str(exc))}") from None
    if _embedded(engine):
        event.listen(engine, "connect", _sqlite_pragmas(timeout, what))
    return engine


#: the key of :func:`text_is_utf8`'s answer in a pooled SQLite connection's ``info``
_TEXT_IS_UTF8 = "audience_sync.text_is_utf8"


def text_is_utf8(conn: Connection) -> bool:
    """Whether ``conn``'s database keeps its text as UTF-8, so that ``CAST(text AS BLOB)`` gives UTF-8 bytes and a
    text's bytes can be tested as UTF-8's. Always True but on SQLite, whose file may have been made with
    ``PRAGMA encoding`` UTF-16le or UTF-16be by another program (audience-sync makes its files UTF-8).

    Read once per SQLite connection (``PRAGMA encoding``) and kept with it in the pool: a file's encoding is fixed
    by its first table. A file with none yet is asked again next time, since whoever makes one chooses it."""
    if not backend(conn).embedded:
        return True
    info = conn.connection.info
    known = info.get(_TEXT_IS_UTF8)
    if known is None:
        # reading the schema first: until a connection has, PRAGMA encoding says what it would make a new file in,
        # even when another connection has since made the file's first table in UTF-16
        made = conn.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM sqlite_master)").scalar_one()
        known = conn.exec_driver_sql("PRAGMA encoding").scalar_one() == "UTF-8"
        if made:
            info[_TEXT_IS_UTF8] = known
    return bool(known)


#: SQLite's extended result code for a read-only connection that meets a hot journal it may not roll back
SQLITE_READONLY_ROLLBACK = 776


def read_only_uri(path: Path, mode: str = "ro") -> str:
    """The SQLite URI filename that opens ``path`` read-only (or in another ``mode`` that never creates it: ``rw``),
    every character of the path taken literally."""
    return f"file:{quote(str(path.resolve()))}?mode={mode}"


def _open(path: Path, mode: str, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> sqlite3.Connection:
    return sqlite3.connect(read_only_uri(path, mode), uri=True, timeout=timeout, check_same_thread=False)


def recover_hot_journal(path: Path) -> bool:
    """Roll back the hot journal a writer that died mid-transaction left beside the SQLite file ``path``, as any
    reader with write access would on its first read (a read-only connection may not, and fails): True when there
    was one. Nothing else is written; the file is never created."""
    with closing(_open(path, "ro", timeout=0)) as probe:  # a file locked by a live writer holds no hot journal
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return False
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != SQLITE_READONLY_ROLLBACK:
                return False  # another error: the query meets it again and says so
    with closing(_open(path, "rw")) as writer:
        writer.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return True


def _read_only_sqlite(path: Path) -> Callable[[], sqlite3.Connection]:
    """A connection factory for the SQLite file ``path``, read-only: never created when missing (an OperationalError
    naming it), never written (a statement that would write fails, an ``ATTACH`` too, which could create a file),
    except that a hot journal a crashed writer left is rolled back first, as SQLite means every reader to."""

    def connect() -> sqlite3.Connection:
        if not path.is_file():
            raise sqlite3.OperationalError(f"the source file {path} does not exist")
        recover_hot_journal(path)
        conn = _open(path, "ro")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        register_sqlite_functions(conn)
        return conn

    return connect


def create_source_engine(url: str) -> Engine:
    """An engine for a SQL source at ``url``. A SQLite file is opened read-only with a busy timeout: a missing file
    is an error naming it (not an empty database created in its place), its journal mode is left as it is, and a
    query cannot change it (a DDL statement, ``VACUUM`` and ``ATTACH`` fail). Other databases: as
    :func:`create_state_engine` makes them. Raises ConfigError as that does."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"source database URL {redact_url(url)!r} is not usable: {scrub(str(exc))}") from None
    database = parsed.database or ""
    if not _embedded(parsed.get_backend_name()) or database in ("", ":memory:") or database.startswith("file:"):
        return create_state_engine(url, what="source database")
    path = Path(database)
    try:
        return create_engine(parsed.set(database=None), creator=_read_only_sqlite(path))
    except (ArgumentError, ImportError, ValueError) as exc:
        raise ConfigError(f"source database URL {redact_url(url)!r} is not usable: {scrub(str(exc))}") from None


#: how psycopg quotes a query streamed through a server-side cursor: the cursor's name is the driver's own
_DECLARE = re.compile(r'DECLARE "[^"]*" (?:(?:NO )?SCROLL |BINARY )*CURSOR (?:WITH(?:OUT)? HOLD )?FOR ')


def without_cursor_names(reason: str) -> str:
    """A database's reason without the driver's server-side cursor (``DECLARE "c_7f…_1" CURSOR FOR``), which
    names nothing of ours; the caret under the quoted line then points at nothing either, and goes too."""
    if not _DECLARE.search(reason):
        return reason
    return re.sub(r"\s+\^\s*$", "", _DECLARE.sub("", reason))


def store_error(exc: SQLAlchemyError, url: str, doing: str = "using") -> StoreError:
    """A StoreError naming the (redacted) state database and the database's own reason, one line."""
    reason = without_cursor_names(scrub(" ".join(str(getattr(exc, "orig", None) or exc).split())))
    return StoreError(f"{doing} the state database {redact_url(url)} failed: {type(exc).__name__}: {reason[:500]}")


@contextmanager
def delivery_cache(conn: Connection) -> Iterator[Connection]:
    """``conn`` with a page cache of :data:`DELIVERY_CACHE_KIB` while inside (SQLite; nothing elsewhere), put back
    to SQLite's default when it goes back to the pool. Memory: at most that much, whatever the run's size."""
    if not backend(conn).embedded:
        yield conn
        return
    default = conn.exec_driver_sql("PRAGMA cache_size").scalar_one()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{DELIVERY_CACHE_KIB}")
    conn.commit()
    try:
        yield conn
    finally:
        conn.rollback()
        conn.exec_driver_sql(f"PRAGMA cache_size={int(default)}")
        conn.commit()
