"""The lock rows: who holds each run lock, its lease, its fencing token, and how a lock is taken or given up.

Each destination a run touches is a row in ``run_locks``. On SQLite the row is the lock (:func:`acquire`,
:func:`renew`, :func:`release`): a lock whose lease expired, or whose holder is provably dead (:class:`Process`), is
taken over. On PostgreSQL an advisory lock per destination (:func:`advisory_key`) decides and the row then tells who
holds it (:func:`claim`). Every acquisition takes the next token of its lock name from ``run_lock_tokens``, a
generation that only grows, in the transaction that writes the row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError

from ..errors import LockHeld
from .dialect import upsert
from .schema import lock_tokens, locks, utcnow

# the run lock's records keep the logger name they have always had: log filters and JSON logs name it
log = logging.getLogger("audience_sync.store.lock")
#: the columns :func:`describe` names
DESCRIBED = (locks.c.run_id, locks.c.pid, locks.c.host, locks.c.acquired_at)

DEFAULT_LEASE = dt.timedelta(minutes=5)
#: PostgreSQL: how long a claim waits for a lock row that a fenced-out run's recording transaction still holds
CLAIM_LOCK_TIMEOUT = "30s"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return str(Path("/proc/self/ns/pid").readlink())  # "pid:[<inode>]": the namespace's identity
    except OSError:
        return None


@dataclass(frozen=True)
class Process:
    """Who holds a lock: its host name and pid, and what says whether that pid can be checked from here."""

    host: str
    pid: int
    boot_id: str | None
    pid_ns: str | None

    @classmethod
    def current(cls) -> Process:
        """This process."""
        return cls(socket.gethostname(), os.getpid(), _boot_id(), _pid_namespace())

    def sees_pids_of(self, row: Any) -> bool:
        """True when the holder of lock row ``row`` ran on this machine in this pid namespace, so that its pid
        names the same process here (unknown machine or namespace: False)."""
        return (
            row.host == self.host
            and self.boot_id is not None
            and row.boot_id == self.boot_id
            and self.pid_ns is not None
            and row.pid_ns == self.pid_ns
        )


def describe(row: Any) -> str:
    """The holder of lock row ``row`` in words: its run (when known), pid, host and since when."""
    run = f"run {row.run_id}, " if row.run_id is not None else ""
    return f"{run}pid {row.pid} on {row.host}, since {row.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


def _row_values(holder: str, me: Process, lease: dt.timedelta) -> dict[str, Any]:
    now = utcnow()
    return {
        "holder": holder,
        "host": me.host,
        "pid": me.pid,
        "boot_id": me.boot_id,
        "pid_ns": me.pid_ns,
        "run_id": None,
        "acquired_at": now,
        "expires_at": now + lease,
    }


def _next_token(conn: Connection, name: str) -> int:
    """Take the next fencing token of lock ``name`` (in ``conn``'s transaction, which the row then locks)."""
    stmt = upsert(conn, lock_tokens).values(name=name, token=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[lock_tokens.c.name], set_={"token": lock_tokens.c.token + 1}
    ).returning(lock_tokens.c.token)
    return int(conn.execute(stmt).scalar_one())


def _try_take(engine: Engine, name: str, holder: str, lease: dt.timedelta, me: Process) -> int:
    """Take lock ``name`` if it is free, expired, or held by a provably dead process; return its token."""
    values = _row_values(holder, me, lease)
    with engine.begin() as conn:
        # a write first: SQLite holds the write lock from here to the commit, so the row read below cannot change
        # before this transaction decides; PostgreSQL locks the token row, serialising acquirers of this name. A
        # refusal rolls the token back.
        token = _next_token(conn, name)
        row = conn.execute(select(locks).where(locks.c.name == name)).first()
        if row is None:
            conn.execute(locks.insert().values(name=name, token=token, **values))
            return token
        dead = me.sees_pids_of(row) and row.pid != me.pid and not _pid_alive(row.pid)
        if row.expires_at > values["acquired_at"] and not dead:
            raise LockHeld(
                f"another run holds the lock for {name} ({describe(row)}); try again when it has finished",
                holder=describe(row),
            )
        reason = "its process is gone" if dead else "its lease expired"
        log.warning("taking over the lock for %s from %s: %s", name, describe(row), reason)
        taken = conn.execute(
            update(locks)
            .where(locks.c.name == name, locks.c.holder == row.holder, locks.c.token == row.token)
            .values(token=token, **values)
        )
        if taken.rowcount != 1:
            raise LockHeld(f"another run took the lock for {name} first", holder="unknown")
        return token


def acquire(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta = DEFAULT_LEASE) -> dict[str, int]:
    """Take every lock in ``names`` or none: LockHeld (naming the holder) if any is held by a live run.

    Returns each lock's fencing token, greater than every token handed out for that name before.
    """
    me = Process.current()
    taken: dict[str, int] = {}
    try:
        for name in sorted(set(names)):
            taken[name] = _try_take(engine, name, holder, lease, me)
    except BaseException:
        release(engine, list(taken), holder)
        raise
    return taken


def renew(
    engine: Engine, tokens: Mapping[str, int], holder: str, lease: dt.timedelta, run_id: int | None = None
) -> list[str]:
    """Extend the leases this holder has under ``tokens`` (lock name -> token), noting its run id; return the names
    it no longer holds (another acquisition took them: their token changed)."""
    values: dict[str, object] = {"expires_at": utcnow() + lease}
    if run_id is not None:
        values["run_id"] = run_id
    gone = []
    with engine.begin() as conn:
        for name in sorted(tokens):
            renewed = conn.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.holder == holder, locks.c.token == tokens[name])
                .values(**values)
            )
            if renewed.rowcount != 1:
                gone.append(name)
    return gone


def release(engine: Engine, names: Sequence[str], holder: str) -> None:
    """Give up the locks in ``names`` that this holder still has (their tokens stay in ``run_lock_tokens``)."""
    if names:
        with engine.begin() as conn:
            conn.execute(delete(locks).where(locks.c.name.in_(list(names)), locks.c.holder == holder))


def advisory_key(name: str, scope: str = "") -> int:
    """The signed 64-bit key of a lock name for PostgreSQL's advisory locks.

    ``scope`` names the state (its schema): advisory locks are shared by a whole database, so two deployments
    keeping their state in two schemas of one database must not block each other.
    """
    return int.from_bytes(hashlib.sha256(f"audience-sync:{scope}:{name}".encode()).digest()[:8], "big", signed=True)


def holder_of(engine: Engine, name: str) -> str:
    """Who holds lock ``name`` as its row says (a run on another connection when there is no row)."""
    with engine.connect() as conn:
        row = conn.execute(select(locks).where(locks.c.name == name)).first()
    return describe(row) if row is not None else "a run on another connection"


def claim(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta, me: Process) -> dict[str, int]:
    """Write this holder and a new token into the rows of ``names``, whoever held them (the advisory lock decided);
    return the tokens. A fenced-out run still recording holds its row until its transaction ends: wait for it."""
    values = _row_values(holder, me, lease)
    tokens: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            conn.execute(text(f"SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}'"))
            for name in names:
                tokens[name] = token = _next_token(conn, name)
                stmt = upsert(conn, locks).values(name=name, token=token, **values)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[locks.c.name], set_={k: stmt.excluded[k] for k in ("token", *values)}
                    )
                )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise LockHeld(
            f"the lock rows for {', '.join(names)} stayed locked by another session for {CLAIM_LOCK_TIMEOUT} "
            f"(a run that lost its lock, paused in a transaction?); try again later",
            holder="a transaction of another session",
        ) from None
    return tokens


def end_session(session: Connection) -> None:
    """Release every advisory lock of a session, then return its connection to the pool."""
    try:
        session.rollback()
        session.execute(select(func.pg_advisory_unlock_all()))
        session.commit()
    except Exception:
        session.invalidate()  # the server releases the locks when the connection closes
    finally:
        session.close()
