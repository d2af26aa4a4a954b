"""The models of what destinations held over time: ``size_history`` (each run's size per destination and key)
and the membership ledger (``membership_ledger``, ``ledger_horizon``). ``schema.py`` exports their table handles.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, Integer, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from .columns import Base, BigId, UTCDateTime


class SizeRow(Base):
    """Per run, destination and computation: how many users the destination held after the run (audiences:
    ``true``; traits: a value) and the run's changes of it (migration 0011). Written when the run closes, so
    ``audiences --history`` and the report read sizes over time without counting the snapshot; see
    ``store/sizes.py`` for how the size is known. Kept by ``prune``: one small row per run and key."""

    __tablename__ = "size_history"

    destination: Mapped[str] = mapped_column(Text, primary_key=True)
    computation_key: Mapped[str] = mapped_column(Text, primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    computation_class: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    entered: Mapped[int] = mapped_column(Integer, default=0)
    exited: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[int] = mapped_column(Integer, default=0)
    #: changes of kind ``identifiers`` (migration 0012)
    identifiers: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: when the run closed (kept here so that the history outlives the run's row after ``prune``)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_size_history_run", "run_id"),)


class LedgerRow(Base):
    """The membership ledger: every value a destination acknowledged, in order (migration 0012).

    Written in the transaction that records a change ``sent`` (``store/outbox.py``), so it never holds a value the
    destination did not take; also by ``adopt`` (``source = 'adopted'``) and, for a database upgraded from before
    the ledger, from the diffs and the snapshot (``'sent'``, ``'baseline'``). A user's value of a key at a
    destination at instant T is ``new_value`` of the user's latest row acknowledged at or before T (no row: no
    value). ``prune`` folds old rows into one baseline row per user (``store/ledger.py``) and moves
    :class:`LedgerHorizon` forward: from there on the ledger answers exactly.
    """

    __tablename__ = "membership_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(Text)
    computation_key: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    old_value: Mapped[str | None] = mapped_column(Text, default=None)
    new_value: Mapped[str | None] = mapped_column(Text, default=None)
    #: the run that delivered it (NULL: adopted from the destination)
    run_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    #: the ``diffs`` row it was sent as (NULL: adopted, or a baseline); may outlive that row after ``prune``
    diff_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    acknowledged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: ``sent``, ``adopted`` (read from the destination by ``adopt``) or ``baseline`` (rebuilt by the upgrade)
    source: Mapped[str] = mapped_column(Text, default="sent", server_default=text("'sent'"))

    __table_args__ = (
        Index("ix_ledger_at", "destination", "computation_key", "user_id", "acknowledged_at"),
        Index("ix_ledger_user", "user_id"),
    )


class LedgerHorizon(Base):
    """One row (``name = 'ledger'``): the instant from which the ledger answers exactly. Before it, ``prune``
    folded the history away, or (upgraded databases) it was never kept. No row: complete since the first run."""

    __tablename__ = "ledger_horizon"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    complete_since: Mapped[dt.datetime] = mapped_column(UTCDateTime)
