"""Library functions behind the inspecting commands (``diff``, ``runs``, ``audiences``, ``members``, ``db``,
``prune``).

Each opens the state database named by the config, applies pending migrations, and returns plain data;
rendering is :mod:`audience_sync.cli.render`'s job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from .config import Config
from .errors import AudienceSyncError, ConfigError
from .redact import scrub
from .store import history, registry, retention, runs, transfer
from .store.engine import create_state_engine, store_error
from .store.lock import run_lock
from .store.migrate import upgrade


@contextmanager
def state_engine(config: Config) -> Iterator[Engine]:
    """An engine on the config's state database, migrated to the newest schema, disposed afterwards."""
    engine = create_state_engine(config.state_url)
    try:
        upgrade(engine)
        yield engine
    except SQLAlchemyError as exc:
        raise store_error(exc, config.state_url) from None
    finally:
        engine.dispose()


def upgrade_database(config: Config) -> str:
    """Apply pending migrations to the state database; return the revision it is now at."""
    engine = create_state_engine(config.state_url)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()


def _scrubbed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with their ``error`` scrubbed of secrets (rows stored before scrubbing was done on writing)."""
    for row in rows:
        row["error"] = scrub(row.get("error"))
    return rows


def list_runs(config: Config, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs, newest first."""
    with state_engine(config) as engine, engine.connect() as conn:
        return _scrubbed(runs.list_runs(conn, limit=limit))


def list_diffs(
    config: Config,
    *,
    run_id: int | None = None,
    computation: str | None = None,
    status: str | None = None,
    destination: str | None = None,
    users: Sequence[str] = (),
    changes: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[int | None, list[dict[str, Any]]]:
    """The diff rows of ``run_id`` (default: the latest run) and the run id they belong to; only ``users``' and
    ``changes``' when given, the first ``limit``."""
    with state_engine(config) as engine, engine.connect() as conn:
        rid = run_id if run_id is not None else runs.latest_run_id(conn)
        if rid is None:
            return None, []
        if run_id is not None and not runs.run_exists(conn, run_id):
            raise ConfigError(f"there is no run {run_id} in the state database (see `audience-sync runs`)")
        rows = history.list_diffs(
            conn,
            rid,
            computation=computation,
            status=status,
            destination=destination,
            users=users,
            changes=changes,
            limit=limit,
        )
        return rid, _scrubbed(rows)


def audiences_overview(config: Config, *, include_retired: bool = False) -> list[dict[str, Any]]:
    """One entry per configured computation (and, with ``include_retired``, every retired one).

    Each has ``name, key, class, status`` (``new`` until first synced, ``active``, ``retired``), the
    destinations it goes to, and ``sizes``: per destination, how many users the destination holds it for.
    """
    with state_engine(config) as engine, engine.connect() as conn:
        known = {r["key"]: r for r in registry.list_computations(conn)}
        sizes = history.snapshot_sizes(conn)
    dest_names = [d.name for d in config.destinations]
    out = []
    for comp in config.computations:
        row = known.get(comp.key)
        out.append(
            {
                "name": comp.name,
                "key": comp.key,
                "class": comp.computation_class,
                "status": "new" if row is None else ("retired" if row["retired_at"] else "active"),
                "first_synced_at": row["first_synced_at"] if row else None,
                "destinations": list(comp.destinations),
                "sizes": {d: sizes.get((d, comp.key), 0) for d in comp.destinations},
            }
        )
    if include_retired:
        configured = {c.key for c in config.computations}
        for key, row in known.items():
            if key not in configured:
                out.append(
                    {
                        "name": row["name"],
                        "key": key,
                        "class": row["computation_class"],
                        "status": "retired" if row["retired_at"] else "unconfigured",
                        "first_synced_at": row["first_synced_at"],
                        "destinations": [],
                        "sizes": {d: sizes.get((d, key), 0) for d in dest_names if (d, key) in sizes},
                    }
                )
    return out


def revive(config: Config, key: str) -> None:
    """Allow a retired key to be used again (the same computation returning); error if it is not retired."""
    with state_engine(config) as engine, engine.begin() as conn:
        if not registry.revive(conn, key):
            raise AudienceSyncError(f"no retired audience or trait has the key {key!r} (see `audiences --history`)")


def prune_history(
    config: Config, older_than: dt.timedelta, *, dry_run: bool = False, batch_size: int = 10_000
) -> retention.PruneResult:
    """Delete (or with ``dry_run`` count) final diff rows and empty runs older than ``older_than``.

    The snapshot and pending or in-flight changes are never touched; see :mod:`audience_sync.store.retention`.
    """
    with state_engine(config) as engine:
        return retention.prune(engine, older_than, batch_size=batch_size, dry_run=dry_run)


def copy_state_database(config: Config, target_url: str) -> dict[str, int]:
    """Copy the config's state database into the empty database at ``target_url``; rows copied per table.

    Holds the run lock of every configured destination meanwhile (LockHeld if a run is going on).
    """
    source = create_state_engine(config.state_url)
    target = create_state_engine(target_url, what="target state database")
    try:
        upgrade(source)
        with run_lock(source, [d.name for d in config.destinations]):  # no run starts during the copy
            return transfer.copy_state(source, target)
    except SQLAlchemyError as exc:
        raise store_error(exc, target_url, doing="copying into") from None
    finally:
        source.dispose()
        target.dispose()
