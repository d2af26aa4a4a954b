"""The state database's tables, as typed SQLAlchemy models. Alembic's ``target_metadata`` is ``Base.metadata``.

People query these tables directly (the README documents them); change them only through a migration.

Text columns are unbounded ``TEXT`` (migration 0010): PostgreSQL enforced the lengths once declared here, SQLite
never did, so the same ids and emails work on both. What a state database cannot hold (a NUL byte, a user id
longer than PostgreSQL's indexes take) is refused per user before it is staged (``sources/rows.py``).

- ``computations``: every audience and computed trait ever synced, with the key fixed at first sync.
- ``sync_runs``: one row per run.
- ``staging``: a run's current memberships and values, loaded from the sources, deleted when the run ends.
- ``staging_skips``: a run's source rows that could not be staged (a NUL byte, a value with no JSON form...):
  those users are skipped, with the reason, and keep what the destinations hold.
- ``snapshot``: per destination, computation and user, the value the destination acknowledged, and the
  identifiers it was sent with. Audiences store ``true``/``false``; traits store JSON, NULL for "no value".
- ``diffs``: the outbox and the audit trail: every change of every run and what became of it.
- ``delivery_in_flight``: the key range of the chunk each running delivery has handed its destination.
- ``run_locks``, ``run_lock_tokens``: the run lock of each destination, and its fencing token (a generation).
- ``alert_incidents``: open incidents, so that each is alerted once and its recovery once.
- ``install``: this state database's own install id, part of every message id (migration 0009).
- ``size_history``, ``membership_ledger``, ``ledger_horizon``: sizes and acknowledged values over time.

The models of the core tables are here; those of the run locks, incidents and install in ``control_schema.py``,
those of the sizes and the ledger in ``ledger_schema.py``, the base and column types every model shares in
``columns.py``. This module gathers them all and exports the Core table handles, once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Index,
    Integer,
    Table,
    Text,
    false,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..model import ChangeKind, DiffStatus, RunStatus
from .columns import Base, BigId, UTCDateTime
from .control_schema import AlertIncident, Install, RunLock, RunLockToken
from .ledger_schema import LedgerHorizon, LedgerRow, SizeRow

__all__ = [
    "CHANGES",
    "MODES",
    "RUN_STATUSES",
    "STATUSES",
    "AlertIncident",
    "Base",
    "BigId",
    "ComputationRow",
    "DiffRow",
    "InFlightChunk",
    "Install",
    "LedgerHorizon",
    "LedgerRow",
    "RunLock",
    "RunLockToken",
    "SizeRow",
    "SkippedRow",
    "SnapshotRow",
    "StagingRow",
    "SyncRun",
    "UTCDateTime",
    "clock",
    "computations",
    "diffs",
    "in_flight",
    "incidents",
    "install",
    "ledger",
    "ledger_horizon",
    "lock_tokens",
    "locks",
    "runs",
    "sizes",
    "skips",
    "snapshot",
    "staging",
    "status_is",
    "system_clock",
    "table_of",
    "utcnow",
]


def system_clock() -> dt.datetime:
    """The machine's clock, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


#: where every timestamp the state database records comes from: the one seam that lets a test run with a
#: clock that is wrong (a year ahead, say) without touching the database
clock: Callable[[], dt.datetime] = system_clock


def utcnow() -> dt.datetime:
    """The current time of :data:`clock`, timezone-aware in UTC."""
    return clock()


def table_of(model: type[Base]) -> Table:
    """The Core table behind a model, typed as the ``Table`` it is (for set-based statements)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class ComputationRow(Base):
    __tablename__ = "computations"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    computation_class: Mapped[str] = mapped_column(Text)
    definition_hash: Mapped[str] = mapped_column(Text)
    first_synced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class SyncRun(Base):
    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mode: Mapped[str] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    computations: Mapped[list[str]] = mapped_column(JSON, default=list)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_sync_runs_status", "status"),)


class StagingRow(Base):
    """Rows of one run, loaded in bulk. SQLite: WITHOUT ROWID; PostgreSQL: UNLOGGED (migration 0004)."""

    __tablename__ = "staging"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    computation_key: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    email: Mapped[str | None] = mapped_column(Text, default=None)
    value: Mapped[str | None] = mapped_column(Text, default=None)
    conflict_value: Mapped[str | None] = mapped_column(Text, default=None)


class SkippedRow(Base):
    """A source row of one run that cannot be staged, and why; deleted with the run's staging.

    The diff leaves these users alone (no entry, change or exit) and writes a ``skipped`` change for each with
    ``reason``. PostgreSQL: UNLOGGED, as ``staging`` (migration 0010).
    """

    __tablename__ = "staging_skips"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigInteger)
    computation_key: Mapped[str] = mapped_column(Text)
    #: the user id as the snapshot could hold it, to leave that user alone; NULL when no snapshot row can have
    #: it (on PostgreSQL: a NUL byte, or longer than its indexes take)
    user_id: Mapped[str | None] = mapped_column(Text, default=None)
    #: the user id as it can be shown and stored in ``diffs`` (NUL bytes written ``\x00``, cut when very long)
    shown_user_id: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_staging_skips_user", "run_id", "computation_key", "user_id"),)


class SnapshotRow(Base):
    """What each destination acknowledged. SQLite: WITHOUT ROWID (migration 0004)."""

    __tablename__ = "snapshot"
    __table_args__ = ({"sqlite_with_rowid": False},)

    destination: Mapped[str] = mapped_column(Text, primary_key=True)
    computation_key: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str | None] = mapped_column(Text, default=None)
    email: Mapped[str | None] = mapped_column(Text, default=None)
    #: the run that delivered ``value`` or, when ``in_doubt``, the run whose change was in flight when it died
    run_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: a change for this user was in flight when its run died: the destination may hold either value, so the
    #: next run sends the current truth whatever ``value`` says
    in_doubt: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: flap damping: since when a member has been missing from the source without ``false`` being sent yet
    missing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class DiffRow(Base):
    __tablename__ = "diffs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: the run that computed it (``sync_runs.id``; not a declared foreign key: migration 0007)
    run_id: Mapped[int] = mapped_column(BigInteger)
    destination: Mapped[str] = mapped_column(Text)
    computation_key: Mapped[str] = mapped_column(Text)
    computation_class: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text, default=None)
    change: Mapped[str] = mapped_column(Text)
    old_value: Mapped[str | None] = mapped_column(Text, default=None)
    new_value: Mapped[str | None] = mapped_column(Text, default=None)
    #: the run that delivered the snapshot value this change starts from; part of the message id
    base_run_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    status: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    message_id: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        # delivery reads a run's pending rows in (user_id, id) order, a chunk at a time, and updates their status
        # by key range; status is left out so that those updates do not move index entries (migration 0003)
        Index("ix_diffs_delivery", "run_id", "destination", "user_id", "id"),
        Index("ix_diffs_user", "destination", "computation_key", "user_id"),
        # the outbox proper: what is still owed, whatever the run (run_id: superseding earlier runs' changes)
        Index(
            "ix_diffs_pending",
            "destination",
            "computation_key",
            "run_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class InFlightChunk(Base):
    """The chunk of a run's changes that is being handed to a destination: its key range in (user_id, id) order.

    Written (and committed) before the chunk goes out, deleted in the transaction that records its outcomes, so
    a row left behind means its run died with the chunk in flight: the ``pending`` changes of the run and
    destination in that range may or may not have been applied. One row per chunk instead of marking each
    change ``sending`` (migration 0005): the changes themselves are written once, when they are recorded.
    """

    __tablename__ = "delivery_in_flight"

    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    destination: Mapped[str] = mapped_column(Text, primary_key=True)
    first_user_id: Mapped[str] = mapped_column(Text)
    first_diff_id: Mapped[int] = mapped_column(BigInteger)
    last_user_id: Mapped[str] = mapped_column(Text)
    last_diff_id: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: the fencing token of the lock its run held when it noted the chunk (NULL: noted before migration 0008); a
    #: run recovers only chunks noted under an older token than its own, so never one of a run that still holds it
    token: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: noted again by its run after that run found it had lost its lock: a later run may already have re-sent these
    #: changes, and the fenced run's requests may have reached the destination after that re-send
    late: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


def status_is(status: str) -> ColumnElement[bool]:
    """``diffs.status = '<status>'`` with the status written into the SQL, so that the planners (SQLite's
    especially) can use the partial indexes on pending and in-flight rows, which a bound parameter hides."""
    assert status in STATUSES
    return literal_column("diffs.status") == literal_column(f"'{status}'")


#: Values of ``diffs.change`` (:class:`~audience_sync.model.ChangeKind`).
CHANGES = tuple(c.value for c in ChangeKind)
#: Values of ``diffs.status`` (:class:`~audience_sync.model.DiffStatus`; before migration 0005 a change being
#: handed to its destination was marked ``sending``: no change is marked so any more).
STATUSES = tuple(s.value for s in DiffStatus)
#: Values of ``sync_runs.mode`` and ``sync_runs.status`` (:class:`~audience_sync.model.RunStatus`).
MODES = ("incremental", "resync", "dry_run")
RUN_STATUSES = tuple(s.value for s in RunStatus)


# The Core tables behind the models, exported once: every set-based statement in store/ (and the few still
# outside it) uses these handles rather than taking ``table_of(...)`` itself.
computations = table_of(ComputationRow)
runs = table_of(SyncRun)
staging = table_of(StagingRow)
skips = table_of(SkippedRow)
snapshot = table_of(SnapshotRow)
diffs = table_of(DiffRow)
in_flight = table_of(InFlightChunk)
locks = table_of(RunLock)
lock_tokens = table_of(RunLockToken)
incidents = table_of(AlertIncident)
install = table_of(Install)
sizes = table_of(SizeRow)
ledger = table_of(LedgerRow)
ledger_horizon = table_of(LedgerHorizon)
