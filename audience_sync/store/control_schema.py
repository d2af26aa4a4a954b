"""The models of the tables that coordinate runs rather than hold what they compute: the run locks and their
fencing tokens (``run_locks``, ``run_lock_tokens``), open alert incidents (``alert_incidents``) and the state
database's install id (``install``). ``schema.py`` exports their table handles.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Integer, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from .columns import Base, UTCDateTime


class RunLock(Base):
    """One row per held lock (``destination:<name>``); a lease that its holder renews while it runs."""

    __tablename__ = "run_locks"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    #: the fencing token of this acquisition (``run_lock_tokens``; 0: taken before migration 0008)
    token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    #: the holder's machine and pid namespace (``/proc/sys/kernel/random/boot_id``, ``/proc/self/ns/pid``): its pid
    #: says whether it is alive only to a process on the same machine in the same namespace; NULL: unknown
    boot_id: Mapped[str | None] = mapped_column(Text, default=None)
    pid_ns: Mapped[str | None] = mapped_column(Text, default=None)


class RunLockToken(Base):
    """The fencing token of each lock name: a generation that only grows, one step per acquisition. It outlives the
    ``run_locks`` row (deleted on release), so a token is never handed out twice for one name (migration 0008)."""

    __tablename__ = "run_lock_tokens"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger)


class AlertIncident(Base):
    """One open incident (a failed run, an audience held by the guard, too many failed deliveries).

    ``notified_at`` is set once the alert webhook took the alert, so each incident is posted once; the row
    is deleted when the incident recovers (after the recovery message was taken, if the alert was).
    """

    __tablename__ = "alert_incidents"

    incident: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(Text)
    #: the computations of the run that showed it; only a later run covering all of them can end it
    computations: Mapped[list[str]] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class Install(Base):
    """The one row naming this install: an id made when the state database was created (or, for a database
    older than migration 0009, when it was upgraded), part of every message id.

    Segment drops messages whose ``messageId`` it has seen in the last day or so, across sources and workspaces:
    two installs (staging and production, or a state database rebuilt from scratch) must never make the same id,
    while one install must make the same id again for the same change (a re-send after a crash dedupes). ``db
    copy`` moves the row with the rest of the state, so a moved install keeps its ids.
    """

    __tablename__ = "install"

    install_id: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
