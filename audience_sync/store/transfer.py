"""Copying a whole state database to another (SQLite to PostgreSQL, or to a new server).

What is copied is what a run needs to continue where the old database left off: computations and their keys,
runs, the snapshot, the diffs (outbox and audit trail), open alert incidents, and the install id. Staging rows
and locks are per-run and are not copied; the locks' fencing tokens are, so that every later acquisition's
token is newer than those of the chunks in flight the copy carries.

The install id moves with the state: the copy *is* the install, moved (SQLite to PostgreSQL, a new server), so
its message ids stay the ones the old database made and a change re-sent after the move still dedupes at
Segment. The target's own install id, made when it was created, is replaced. A copy must therefore not be run
as a second install next to its original (they would make the same message ids); a fresh state database,
created by ``db upgrade`` or the first run, is a new install with a new id.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, func, select, text

from ..errors import StoreError
from .dialect import backend
from .engine import redact_url
from .migrate import upgrade
from .schema import Base

#: per-run tables that a copy leaves behind
NOT_COPIED = frozenset({"staging", "staging_skips", "run_locks"})
#: the table whose row the copy replaces: every state database has its own from the start
REPLACED = "install"


def copy_state(
    source: Engine,
    target: Engine,
    *,
    batch_size: int = 10_000,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Copy every durable table of ``source`` into the empty state database ``target``; return rows per table.

    Guarantees: both databases are brought to the newest schema first; the target must hold no data (StoreError
    otherwise) and no run may be running on the source; the copy is one transaction on the target, so it either
    lands whole or not at all; on PostgreSQL the id sequences continue after the copied ids; the target takes
    the source's install id, so message ids continue as the source would have made them.
    """
    upgrade(source)
    upgrade(target)
    tables = [t for t in Base.metadata.sorted_tables if t.name not in NOT_COPIED]
    with target.connect() as conn:
        for table in tables:
            if table.name != REPLACED and conn.execute(select(func.count()).select_from(table)).scalar_one():
                raise StoreError(
                    f"the target state database {redact_url(str(target.url))} already holds data in {table.name}; "
                    f"copy only into an empty database"
                )
    with source.connect() as conn:
        running = conn.execute(text("SELECT id FROM sync_runs WHERE status = 'running'")).scalars().all()
    if running:
        raise StoreError(
            f"run {running[0]} is still running on the source state database; stop the scheduler or wait for it, "
            f"then copy"
        )
    copied: dict[str, int] = {}
    with source.connect() as src, target.begin() as dst:
        for table in tables:
            copied[table.name] = 0
            if table.name == REPLACED:
                dst.execute(table.delete())
            result = src.execution_options(yield_per=batch_size).execute(
                select(table).order_by(*table.primary_key.columns)
            )
            for part in result.mappings().partitions(batch_size):
                dst.execute(table.insert(), [dict(row) for row in part])
                copied[table.name] += len(part)
                if on_batch is not None:
                    on_batch(table.name, len(part))
        if backend(target).sequences:
            for table in tables:
                if "id" in table.c and table.c.id.autoincrement is True:
                    dst.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                            f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                        )
                    )
    return copied
