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
runs the real migrations, and so does every command line the tests run as a process of its own and every test
marked ``real_migrations`` (the tests of the migrations themselves).
``AUDIENCE_SYNC_TEST_MIGRATE=1`` turns the cloning off: every new database is then migrated for real.
``tests/store/test_schema_clone.py`` checks that a clone and a migrated database are the same, schema and rows.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, text

from audience_sync.store import migrate
from audience_sync.store.schema import install

ENABLED = os.environ.get("AUDIENCE_SYNC_TEST_MIGRATE", "") in ("", "0")


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


class _Templates:
    """The migrated template of each backend, made on first use in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="as-schema-"))
        self._sqlite: Path | None = None
        self._postgres: dict[str, str] = {}  # server URL without options -> the migration's statements

    def sqlite(self) -> Path:
        with self._lock:
            if self._sqlite is None:
                path = self._dir / "template.db"
                engine = create_engine(f"sqlite:///{path}")
                try:
                    migrate.upgrade(_unpatched(engine))
                finally:
                    engine.dispose()
                self._sqlite = path
            return self._sqlite

    def postgres(self, engine: Engine) -> str:
        server = engine.url.difference_update_query(["options"]).render_as_string(hide_password=False)
        with self._lock:
            if server not in self._postgres:
                self._postgres[server] = _record_postgres(server)
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
_real_upgrade = alembic_command.upgrade
_unpatched_engines: list[Engine] = []  # the templates' own engines, migrated for real
_cloning = threading.Lock()  # two runs of this process on one new database: the second finds it made


def _unpatched(engine: Engine) -> Engine:
    _unpatched_engines.append(engine)
    return engine


def migrate_for_real(engine: Engine) -> str:
    """``migrate.upgrade`` on ``engine`` with every migration run, never cloned; the revision it reached."""
    return migrate.upgrade(_unpatched(engine))


def _clone(engine: Engine) -> bool:
    """Make the empty database of ``engine`` a copy of the template; False when it is not empty."""
    with _cloning, engine.connect() as conn:
        if not _empty(conn):
            return False
        driver: Any = conn.connection.driver_connection
        if conn.dialect.name == "sqlite":
            source = sqlite3.connect(_templates.sqlite())
            try:
                source.backup(driver)
            finally:
                source.close()
        else:
            script = _templates.postgres(engine)
            with driver.cursor() as cursor:
                cursor.execute(script)  # no parameters: the whole script in one round trip
        _new_install_id(conn)
        conn.commit()
    return True


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
