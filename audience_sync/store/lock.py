"""The run lock: one run at a time per state database and destination, kept in the database itself.

Each destination a run touches is a row in ``run_locks`` saying who holds it. On SQLite the row is the lock:
it has a lease the holder renews from a background thread, and a lock whose lease expired, or whose holder on
this same host is no longer alive, is taken over. On PostgreSQL a session-level advisory lock per destination
decides, held on a connection of its own for the whole run: the server releases it the moment the holder's
connection dies, so a crashed run's successor starts at once; the row then only tells who holds it. Either
way the lock lives in the database (not a pid file), so runs on two hosts never overlap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import LockHeld
from .schema import RunLock, table_of, utcnow

log = logging.getLogger(__name__)
locks = table_of(RunLock)

DEFAULT_LEASE = dt.timedelta(minutes=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(row: RunLock | object) -> str:
    host, pid, run_id, acquired = (getattr(row, a) for a in ("host", "pid", "run_id", "acquired_at"))
    run = f"run {run_id}, " if run_id is not None else ""
    return f"{run}pid {pid} on {host}, since {acquired:%Y-%m-%d %H:%M:%S} UTC"


def _try_take(engine: Engine, name: str, holder: str, lease: dt.timedelta) -> None:
    host, pid, now = socket.gethostname(), os.getpid(), utcnow()
    values = {
        "holder": holder,
        "host": host,
        "pid": pid,
        "run_id": None,
        "acquired_at": now,
        "expires_at": now + lease,
    }
    try:
        with engine.begin() as conn:
            conn.execute(locks.insert().values(name=name, **values))
        return
    except IntegrityError:
        pass
    with engine.begin() as conn:
        row = conn.execute(select(locks).where(locks.c.name == name)).first()
        if row is None:  # released meanwhile: try once more from the top
            conn.execute(locks.insert().values(name=name, **values))
            return
        dead = row.host == host and row.pid != pid and not _pid_alive(row.pid)
        if row.expires_at > now and not dead:
            raise LockHeld(
                f"another run holds the lock for {name} ({_describe(row)}); try again when it has finished",
                holder=_describe(row),
            )
        reason = "its process is gone" if dead else "its lease expired"
        log.warning("taking over the lock for %s from %s: %s", name, _describe(row), reason)
        taken = conn.execute(update(locks).where(locks.c.name == name, locks.c.holder == row.holder).values(**values))
        if taken.rowcount != 1:
            raise LockHeld(f"another run took the lock for {name} first", holder="unknown")


def acquire(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta = DEFAULT_LEASE) -> None:
    """Take every lock in ``names`` or none: LockHeld (naming the holder) if any is held by a live run."""
    taken: list[str] = []
    try:
        for name in sorted(set(names)):
            _try_take(engine, name, holder, lease)
            taken.append(name)
    except BaseException:
        release(engine, taken, holder)
        raise


def renew(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta, run_id: int | None = None) -> None:
    """Extend the leases this holder has on ``names`` (and note its run id)."""
    values: dict[str, object] = {"expires_at": utcnow() + lease}
    if run_id is not None:
        values["run_id"] = run_id
    with engine.begin() as conn:
        conn.execute(update(locks).where(locks.c.name.in_(list(names)), locks.c.holder == holder).values(**values))


def release(engine: Engine, names: Sequence[str], holder: str) -> None:
    """Give up the locks in ``names`` that this holder still has."""
    if names:
        with engine.begin() as conn:
            conn.execute(delete(locks).where(locks.c.name.in_(list(names)), locks.c.holder == holder))


def advisory_key(name: str, scope: str = "") -> int:
    """The signed 64-bit key of a lock name for PostgreSQL's advisory locks.

    ``scope`` names the state (its schema): advisory locks are shared by a whole database, so two deployments
    keeping their state in two schemas of one database must not block each other.
    """
    return int.from_bytes(hashlib.sha256(f"audience-sync:{scope}:{name}".encode()).digest()[:8], "big", signed=True)


def _holder_of(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        row = conn.execute(select(locks).where(locks.c.name == name)).first()
    return _describe(row) if row is not None else "a run on another connection"


def _claim(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta) -> None:
    """Write this holder into the rows of ``names``, whoever held them (the advisory lock decided)."""
    now = utcnow()
    values = {
        "holder": holder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run_id": None,
        "acquired_at": now,
        "expires_at": now + lease,
    }
    with engine.begin() as conn:
        conn.execute(delete(locks).where(locks.c.name.in_(list(names))))
        conn.execute(locks.insert(), [{"name": n, **values} for n in names])


def _end_session(session: Connection) -> None:
    """Release every advisory lock of a session, then return its connection to the pool."""
    try:
        session.rollback()
        session.execute(select(func.pg_advisory_unlock_all()))
        session.commit()
    except Exception:
        session.invalidate()  # the server releases the locks when the connection closes
    finally:
        session.close()


class HeldLock:
    """Locks held by this process, renewed in the background until released."""

    def __init__(self, engine: Engine, names: Sequence[str], lease: dt.timedelta) -> None:
        self.engine = engine
        self.names = sorted(set(names))
        self.lease = lease
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}:{utcnow().timestamp()}"
        self.run_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="audience-sync-lock", daemon=True)
        self._session: Connection | None = None  # PostgreSQL: the connection holding the advisory locks

    def _acquire(self) -> None:
        if self.engine.dialect.name != "postgresql":
            acquire(self.engine, self.names, self.holder, self.lease)
            return
        session = self.engine.connect()
        try:
            scope = session.execute(select(func.current_schema())).scalar_one() or ""
            for name in self.names:
                if not session.execute(select(func.pg_try_advisory_lock(advisory_key(name, scope)))).scalar_one():
                    raise LockHeld(
                        f"another run holds the lock for {name} ({_holder_of(self.engine, name)}); "
                        f"try again when it has finished",
                        holder=_holder_of(self.engine, name),
                    )
            session.commit()  # session-level advisory locks outlive the transaction
            _claim(self.engine, self.names, self.holder, self.lease)
        except BaseException:
            _end_session(session)
            raise
        self._session = session

    def _heartbeat(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                renew(self.engine, self.names, self.holder, self.lease, self.run_id)
            except Exception:  # a missed renewal is not fatal; the lease has slack
                log.warning("could not renew the run lock", exc_info=True)

    def start(self, wait: float = 0.0, poll: float = 2.0) -> HeldLock:
        """Take the locks, trying again every ``poll`` seconds for up to ``wait`` seconds while they are held."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._acquire()
                break
            except LockHeld as exc:
                if time.monotonic() + poll > deadline:
                    if wait:
                        raise LockHeld(f"{exc} (waited {wait:g} s)", holder=exc.holder) from None
                    raise
                log.info("waiting for the run lock: %s", exc)
                time.sleep(poll)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        release(self.engine, self.names, self.holder)
        if self._session is not None:
            _end_session(self._session)
            self._session = None


@contextmanager
def run_lock(
    engine: Engine, destinations: Sequence[str], lease: dt.timedelta = DEFAULT_LEASE, *, wait: float = 0.0
) -> Iterator[HeldLock]:
    """Hold the locks of ``destinations`` for the duration of the block.

    Raises LockHeld naming the holder if another live run has one, after waiting up to ``wait`` seconds.
    """
    held = HeldLock(engine, [f"destination:{d}" for d in destinations], lease).start(wait)
    try:
        yield held
    finally:
        held.stop()
