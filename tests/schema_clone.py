"""New state databases for the tests, cloned from one migrated once instead of migrated one by one.

Hundreds of tests start on an empty state database, and the first thing each run does is apply every migration:
about 0.1 s on SQLite and 0.4 s on PostgreSQL (66 statements, each a round trip), 1.5 to 2.5 s on a loaded machine:
a sixth of the suite's time. Here the first new database of each kind in a test process is migrated for real, and
every later one is made equal to it at once:

- **SQLite**: the migrated template file is copied in with SQLite's backup API (pages, not statements);
- **PostgreSQL**: the statements the real migration sent (recorded on the template schema, everything but its
  reads) are sent again as one script on the new schema, which the search path names.

Either way the migrations' own data comes along, and the one value that must differ between databases, the
install id migration 0009 makes, is made again as 0009 makes it. Only ``command.upgrade(cfg, "head")`` on a
database with no tables at all is cloned; every upgrade of an existing database (a database at an older revision)
runs the real migrations, and so does every test marked ``real_migrations`` (the tests of the migrations themselves).

The command lines the tests run, forked from the fork server (``tests/zygote.py``), clone too: the test process
makes its templates before it starts one (SQLite's, and PostgreSQL's for each server :func:`expect_postgres`
named) and names their directory in the command's environment (:func:`command_environment`); the command
installs the cloning from them before it runs (:func:`install_for_command`) and never makes a template itself
(without one it migrates for real). A command started as a fresh interpreter (``AUDIENCE_SYNC_TEST_FRESH=1``,
``fresh=True``) migrates for real, and so does one given ``AUDIENCE_SYNC_TEST_MIGRATE=1`` in its environment
(:data:`MIGRATE_FOR_REAL`: the crash test's kill while migrating, ``db upgrade``'s own test).

A clone is one transaction, as each real migration is, so a process killed while cloning leaves an empty database.
Two processes that clone one new database at once (two commands started together, a test and its command) take
a lock first, an advisory lock on PostgreSQL (in the cloning transaction) and an ``flock`` on the database's
directory on SQLite (a directory: a run adds no file beside its database), and look at the database again under
it: the second finds it made and leaves it to Alembic, which finds it at head. (The real migrations take no such
lock: of two processes migrating one new database at once, one usually fails, on SQLite with "database is locked",
on PostgreSQL on a table or a version row the other made; each migration's transaction leaves the database at a
known revision, and the next run applies the rest.)
``AUDIENCE_SYNC_TEST_MIGRATE=1`` turns the cloning off: every new database is then migrated for real.
``tests/store/test_schema_clone.py`` checks that a clone and a migrated database are the same, schema and rows.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from audience_sync.store import migrate
from audience_sync.store.schema import install

#: set (not "0"), every new database is migrated for real: in the test process's environment, or in a command's
MIGRATE = "AUDIENCE_SYNC_TEST_MIGRATE"
#: a command's environment that has it migrate its new state database for real
MIGRATE_FOR_REAL = {MIGRATE: "1"}
#: the directory of the test process's templates, in the environment of a command forked from the fork server
TEMPLATES = "AUDIENCE_SYNC_TEST_TEMPLATES"

ENABLED = os.environ.get(MIGRATE, "") in ("", "0")


def _empty(conn: Connection) -> bool:
    if conn.dialect.name == "sqlite":
        return int(conn.execute(text("SELECT count(*) FROM sqlite_master")).scalar_one()) == 0
    query = "SELECT count(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
    return int(conn.execute(text(query)).scalar_one()) == 0


def _new_install_id(conn: Connection) -> None:
    """What migration 0009 writes for a new database: a fresh id, made now."""
    now = dt.datetime.now(dt.UTC)  # the table's type stores it as 0009 does (naive UTC on SQLite)
    conn.execute(delete(install))
    conn.execute(insert(install).values(install_id=uuid.uuid4().hex, created_at=now))


def _server(url: URL) -> str:
    """A PostgreSQL URL without the options that pick its schema: the server (and database) it names."""
    return url.difference_update_query(["options"]).render_as_string(hide_password=False)


class _Templates:
    """The migrated template of each backend, files in one directory.

    The test process's (``build``) are made on first use, each written whole under its final name at once; a
    command's are the test process's, read and never made: a template that is not there is None."""

    def __init__(self, directory: Path | None = None, *, build: bool = True) -> None:
        self._lock = threading.Lock()
        self._dir = directory
        self._build = build
        self._postgres: dict[str, str | None] = {}  # server URL without options -> the migration's statements

    def directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="as-schema-"))
        return self._dir

    def sqlite(self) -> Path | None:
        with self._lock:
            path = self.directory() / "template.db"
            if self._build and not path.exists():
                part = path.with_name("template.db.part")
                engine = create_engine(f"sqlite:///{part}")  # no WAL: the file alone is the database
                try:
                    migrate.upgrade(_unpatched(engine))
                finally:
                    engine.dispose()
                part.replace(path)
            return path if path.exists() else None

    def postgres(self, server: str) -> str | None:
        with self._lock:
            if server not in self._postgres:
                path = self.directory() / f"postgres-{hashlib.sha256(server.encode()).hexdigest()[:16]}.sql"
                if self._build and not path.exists():
                    part = path.with_name(path.name + ".part")
                    part.write_text(_record_postgres(server), encoding="utf-8")
                    part.replace(path)
                self._postgres[server] = path.read_text(encoding="utf-8") if path.exists() else None
            return self._postgres[server]


def _record_postgres(server: str) -> str:
    """Migrate a schema of its own on ``server`` for real, recording what was sent; drop it; return the script."""
    schema = f"as_template_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    sent: list[str] = []
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
        engine = create_engine(url)

        @event.listens_for(engine, "before_cursor_execute")
        def record(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
            # the migration's reads (Alembic's and its own) change nothing; the install row is made per clone
            words = statement.lstrip().split(None, 3)
            if words and words[0].upper() != "SELECT" and words[:3] != ["INSERT", "INTO", "install"]:
                assert not params, f"a migration statement with parameters cannot be replayed: {statement}"
                sent.append(statement)

        try:
            migrate.upgrade(_unpatched(engine))
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return ";\n".join(sent)


_templates = _Templates()
_servers: set[str] = set()  # the PostgreSQL servers whose template a command is given
_real_upgrade = alembic_command.upgrade
_unpatched_engines: list[Engine] = []  # the templates' own engines, migrated for real


def _unpatched(engine: Engine) -> Engine:
    _unpatched_engines.append(engine)
    return engine


def migrate_for_real(engine: Engine) -> str:
    """``migrate.upgrade`` on ``engine`` with every migration run, never cloned; the revision it reached."""
    return migrate.upgrade(_unpatched(engine))


@contextmanager
def sqlite_clone_lock(database: Path) -> Iterator[None]:
    """The lock a clone of the SQLite file ``database`` is made under: an ``flock`` on the directory it is in."""
    fd = os.open(database.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and the lock with it


#: the advisory lock a clone of a PostgreSQL schema is made under, one per schema (as ``current_schema()``)
POSTGRES_CLONE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('audience-sync clone ' || current_schema(), 0))"


def _copy_sqlite(template: Path, into: sqlite3.Connection) -> None:
    """The template copied into the database of ``into`` with an install id of its own, in one transaction there:
    copied in memory first, given the id, then backed up onto ``into`` in one step."""
    source = sqlite3.connect(f"{template.as_uri()}?mode=ro", uri=True)
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)
    finally:
        source.close()
    engine = create_engine("sqlite://", creator=lambda: copy, poolclass=StaticPool)
    try:
        with engine.begin() as conn:
            _new_install_id(conn)
        copy.backup(into)
    finally:
        engine.dispose()
        copy.close()


def _clone_sqlite(conn: Connection) -> bool:
    template = _templates.sqlite()
    if template is None:
        return False
    # the main database's file, as SQLite opened it (the URL may be a URI filename); "" for one in memory
    file = next(row.file for row in conn.execute(text("PRAGMA database_list")) if row.name == "main")
    with sqlite_clone_lock(Path(file)) if file else nullcontext():
        if not _empty(conn):
            return False
        driver: Any = conn.connection.driver_connection
        _copy_sqlite(template, driver)
    return True


def _clone_postgres(conn: Connection) -> bool:
    script = _templates.postgres(_server(conn.engine.url))
    if script is None:
        return False
    conn.execute(text(POSTGRES_CLONE_LOCK))  # held until the commit; every statement below sees what was committed
    if not _empty(conn):
        conn.rollback()
        return False
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cursor:
        cursor.execute(script)  # no parameters: the whole script in one round trip
    _new_install_id(conn)
    conn.commit()
    return True


def _clone(engine: Engine) -> bool:
    """Make the empty database of ``engine`` a copy of the template; False when it is not empty (or there is no
    template in a command for its server)."""
    with engine.connect() as conn:
        return _clone_sqlite(conn) if conn.dialect.name == "sqlite" else _clone_postgres(conn)


def _upgrade(config: AlembicConfig, revision: str, sql: bool = False, tag: str | None = None) -> None:
    """``alembic.command.upgrade``, except that an empty database brought to ``head`` is cloned."""
    engine = config.attributes.get("engine")
    wanted = revision == "head" and not sql and tag is None
    if wanted and isinstance(engine, Engine) and not any(engine is e for e in _unpatched_engines) and _clone(engine):
        return
    _real_upgrade(config, revision, sql, tag)


def install_cloning() -> None:
    """From now on, in this process, a new state database brought to ``head`` is a clone of the template.

    Alembic's own ``command.upgrade`` is replaced, so the clone happens wherever audience-sync imports it from.
    """
    if ENABLED:
        alembic_command.upgrade = _upgrade


@contextmanager
def real_migrations() -> Iterator[None]:
    """Within: every new database is migrated for real (the ``real_migrations`` marker: tests of the migrations)."""
    alembic_command.upgrade = _real_upgrade
    try:
        yield
    finally:
        install_cloning()


def expect_postgres(server: str) -> None:
    """Commands started from now on are given a template for new schemas on the PostgreSQL ``server`` too."""
    _servers.add(_server(make_url(server)))


def command_environment() -> dict[str, str]:
    """The environment a command forked from the fork server needs to clone its new state databases: the directory
    of this process's templates, made now if need be. Empty when this process migrates for real (cloning off, or a
    test marked ``real_migrations``): so does the command then."""
    if alembic_command.upgrade is not _upgrade:
        return {}
    _templates.sqlite()
    for server in sorted(_servers):
        _templates.postgres(server)
    return {TEMPLATES: str(_templates.directory())}


def install_for_command(environ: MutableMapping[str, str]) -> None:
    """In a command forked from the fork server, before it runs: clone its new state databases from the templates
    ``environ`` names (taken out of it, the command's environment is the test's), unless it says to migrate."""
    directory = environ.pop(TEMPLATES, None)
    if directory is None or environ.get(MIGRATE, "") not in ("", "0"):
        return
    global _templates
    _templates = _Templates(Path(directory), build=False)
    alembic_command.upgrade = _upgrade
