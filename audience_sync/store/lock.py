"""The run lock: one run at a time per state database and destination, kept in the database itself, fenced.

Each destination a run touches is a row in ``run_locks`` saying who holds it (``lease.py``). On SQLite the row is
the lock: it has a lease the holder renews from a background thread, and a lock whose lease expired, or whose
holder is provably dead, is taken over. A pid proves a death only to a process that sees the same pids: the same
host name, the same machine (``/proc/sys/kernel/random/boot_id``) and the same pid namespace (``/proc/self/ns/pid``);
two containers sharing a host name see each other's pids as dead, so anywhere else only the lease decides. On
PostgreSQL a session-level advisory lock per destination decides, held on a connection of its own for the whole
run: the server releases it the moment the holder's connection dies, so a crashed run's successor starts at once;
the row then tells who holds it. Either way the lock lives in the database (not a pid file), so runs on two hosts
never overlap.

**Fencing** (``fencing.py``). Every acquisition takes a fencing token that only grows, and the holder proves it
still holds its locks before each attempt to send, in every transaction that records outcomes, and in every
renewal by the heartbeat thread here. A failed proof raises :class:`~audience_sync.errors.LockLost`, and so does
every check after it.

This module holds the lock for a run: :class:`HeldLock` takes the locks (waiting while they are held), renews them
from its heartbeat thread and releases them; :func:`run_lock` holds them for a block.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Engine, func, select

from ..errors import LockHeld, LockLost
from .dialect import backend
from .fencing import FENCE_WINDOW, Fence
from .lease import (
    CLAIM_LOCK_TIMEOUT,
    DEFAULT_LEASE,
    Process,
    acquire,
    advisory_key,
    claim,
    end_session,
    holder_of,
    release,
    renew,
)

__all__ = [
    "CLAIM_LOCK_TIMEOUT",
    "DEFAULT_LEASE",
    "FENCE_WINDOW",
    "HeldLock",
    "Process",
    "acquire",
    "advisory_key",
    "release",
    "renew",
    "run_lock",
]

log = logging.getLogger(__name__)


class HeldLock(Fence):
    """Locks held by this process, renewed in the background until released, and fenced (``fencing.py``)."""

    def __init__(
        self, engine: Engine, names: Sequence[str], lease: dt.timedelta, *, window: float = FENCE_WINDOW
    ) -> None:
        super().__init__(engine, names, lease, window=window)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="audience-sync-lock", daemon=True)

    def _acquire(self) -> None:
        me = Process.current()
        if not backend(self.engine).advisory_locks:
            self.tokens = acquire(self.engine, self.names, self.holder, self.lease)
            return
        session = self.engine.connect()
        try:
            scope = session.execute(select(func.current_schema())).scalar_one() or ""
            for name in self.names:
                if not session.execute(select(func.pg_try_advisory_lock(advisory_key(name, scope)))).scalar_one():
                    raise LockHeld(
                        f"another run holds the lock for {name} ({holder_of(self.engine, name)}); "
                        f"try again when it has finished",
                        holder=holder_of(self.engine, name),
                    )
            self._backend = session.execute(select(func.pg_backend_pid())).scalar_one()
            session.commit()  # session-level advisory locks outlive the transaction
            # its proofs are single statements: without a transaction each costs one round trip, not three
            session.execution_options(isolation_level="AUTOCOMMIT")
            self.tokens = claim(self.engine, self.names, self.holder, self.lease, me)
        except BaseException:
            end_session(session)
            raise
        self._session = session

    def _heartbeat(self) -> None:
        """Renew the leases every third of the lease; prove the lock again whenever :meth:`check` asks (``_wake``)."""
        interval = max(self.lease.total_seconds() / 3, 0.05)
        renewal = time.monotonic() + interval
        while True:
            self._wake.wait(max(renewal - time.monotonic(), 0.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._proving:
                    if time.monotonic() >= renewal:
                        if self.lost is not None:
                            return
                        if self._session is not None:
                            self._prove_session(self._session)
                        self._renew()
                        renewal = time.monotonic() + interval
                    else:
                        self._prove_if_due()
            except LockLost:  # logged; the run stops at its next check
                return
            except Exception:  # a missed renewal or proof is not fatal: the lease has slack, a sender proves again
                log.warning("could not renew or prove the run lock", exc_info=True)

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
        """Stop renewing and release what this holder still holds. After a loss, a failure to release (the
        database gone) is logged, not raised: the LockLost being raised says more."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            release(self.engine, self.names, self.holder)
        except Exception:
            if self.lost is None:
                raise
            log.warning("could not release the run locks after losing one", exc_info=True)
        finally:
            if self._session is not None:
                end_session(self._session)
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
