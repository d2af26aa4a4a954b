"""Applying the Alembic migrations that own the state database's schema.

Alembic is imported only when the database is not at :data:`HEAD` (a new database, one to upgrade, one from
another version): importing it loads Mako, Pygments and every dialect's DDL module, a tenth of a second or more
that every short run on an up-to-date database would otherwise pay for nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, String, text
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .dialect import backend
from .engine import redact_url, store_error

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext

log = logging.getLogger(__name__)

#: the newest migration's revision id, known without reading the scripts (which needs Alembic):
#: ``tests/store/test_store.py`` checks that it is Alembic's head, so a new migration must update it
HEAD = "0013"
#: Alembic's version table (its default name, which ``migrations/env.py`` keeps)
VERSION_TABLE = "alembic_version"
#: Alembic's environment (``alembic.context``) is one per process: two threads may not migrate at once, even two
#: databases; between processes the state database's migration lock serialises upgrades (``migration_lock.py``)
_in_process = threading.RLock()  # re-entered by the tests' schema cloning (a template migrated in its place)


def migrations_dir() -> Path:
    """Where the migration scripts are: inside the installed package, or ``migrations/`` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError("the migration scripts are missing from this installation of audience-sync")


def compare_type(
    context: MigrationContext, inspected_column: Any, metadata_column: Any, inspected_type: Any, metadata_type: Any
) -> bool | None:
    """Alembic's type comparison, except that on SQLite a ``VARCHAR(n)`` and a ``TEXT`` column are the same type.

    SQLite gives both TEXT affinity and enforces no length, so the columns the first migrations declared with a
    length hold exactly what the models' ``TEXT`` does (migration 0010 changes them on PostgreSQL only). Returns
    False (same), or None to let Alembic decide.
    """
    if (
        backend(context.dialect).text_lengths_ignored
        and isinstance(inspected_type, String)
        and isinstance(metadata_type, String)
    ):
        return False
    return None


def alembic_config(engine: Engine) -> AlembicConfig:
    """An Alembic config that runs the packaged migrations on ``engine``."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the state database to the newest schema and return its revision.

    Guarantees: each migration runs in its own transaction (on SQLite the whole upgrade is one), so an interrupted
    upgrade leaves the database at a known revision and the next upgrade resumes. Raises StoreError when the
    database is at a revision this version does not know (written by a newer audience-sync) or cannot be reached.

    A database at :data:`HEAD` is recognised by one query, without importing Alembic or taking any lock; any other
    answer (no version table, another revision, several rows) takes Alembic's path, which decides as it always has.
    Upgrades at once (two processes on a new database) take turns: the one that waited for the migration lock
    (``store/migration_lock.py``) reads the version after it, finds what the other applied, and does the rest.
    """
    if _at_head(engine):
        return HEAD
    from alembic import command
    from alembic.script import ScriptDirectory

    cfg = alembic_config(engine)
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    assert head is not None
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        raise store_error(exc, str(engine.url), doing="opening") from None
    if current == head:
        return head
    if current is not None:
        try:
            script.get_revision(current)
        except Exception:
            raise StoreError(
                f"the state database {redact_url(str(engine.url))} is at schema revision {current!r}, "
                f"which this version of audience-sync does not know (newest known: {head!r}); "
                f"it was written by a newer audience-sync: upgrade audience-sync"
            ) from None
    log.info("upgrading state database %s from %s to %s", redact_url(str(engine.url)), current, head)
    if not _in_process.acquire(blocking=False):
        log.info("another thread is upgrading a state database: waiting for it to finish")
        _in_process.acquire()
    try:
        command.upgrade(cfg, "head")  # under the migration lock, which Alembic's environment takes
    except SQLAlchemyError as exc:
        raise store_error(exc, str(engine.url), doing="migrating") from None
    finally:
        _in_process.release()
    return head


def _at_head(engine: Engine) -> bool:
    """Whether the version table holds exactly one row, :data:`HEAD`. Raises StoreError when the database cannot
    be reached; a failing query (no version table yet) is False, and Alembic's path looks again."""
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        raise store_error(exc, str(engine.url), doing="opening") from None
    with conn:
        try:
            versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        except SQLAlchemyError:
            return False
    return versions == [HEAD]
