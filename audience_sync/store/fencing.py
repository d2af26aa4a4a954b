"""The fencing checks: how a holder of run locks proves, before each send and in each recording, that it still
holds them.

Every acquisition writes the next token of its lock name (``run_lock_tokens``, a generation that only grows, kept
when the lock is released) into the lock's row in the same transaction, as a compare-and-set on the row it saw (on
PostgreSQL after the advisory lock decided). A holder proves it still holds its locks:

- before each attempt to send, :meth:`Fence.check`: its rows still carry its holder and token (SQLite, where a
  lease near its end is first renewed), or its advisory-lock session answers, as the same server process that
  took the advisory locks, and the rows still carry its token (PostgreSQL; one statement on that session). One
  proof stands for the attempts that start within :data:`FENCE_WINDOW` seconds after it began (see the method);
- in every transaction that records outcomes, :meth:`Fence.confirm`: an ``UPDATE`` of its rows conditioned on
  holder and token, first in the transaction. SQLite then holds the write lock and PostgreSQL the row lock until
  the commit, so no run can take the lock over between that proof and the commit;
- in every renewal by the heartbeat (``lock.py``), conditioned on holder and token the same way.

A failed proof raises :class:`~audience_sync.errors.LockLost`, and so does every check after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..errors import LockLost
from .lease import DESCRIBED, describe, renew
from .schema import locks, utcnow

# the run lock's records keep the logger name they have always had: log filters and JSON logs name it
log = logging.getLogger("audience_sync.store.lock")

#: seconds one proof of the lock stands for: send attempts starting within this long after a proof began go out
#: without another. A run that lost its lock can therefore start attempts for at most this long after the loss
#: (on PostgreSQL, where a successor can take over at once; on SQLite a successor must first wait out the lease,
#: which a proof renews when it is near its end). From half the window on, the heartbeat thread proves again while
#: the senders go on, so a proof's round trip (milliseconds on a busy server) holds up no sender: at 1,000
#: attempts a second, about 20 proofs instead of 1,000, and no sender waiting for them.
FENCE_WINDOW = 0.1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]


class Fence:
    """The proofs that a holder still holds its run locks (see the module); :class:`~.lock.HeldLock` takes the
    locks and sets ``tokens`` (and, on PostgreSQL, the advisory-lock session)."""

    def __init__(
        self, engine: Engine, names: Sequence[str], lease: dt.timedelta, *, window: float = FENCE_WINDOW
    ) -> None:
        self.engine = engine
        self.names = sorted(set(names))
        self.lease = lease
        self.window = window
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}:{utcnow().timestamp()}"
        self.run_id: int | None = None
        #: lock name -> the fencing token of this acquisition
        self.tokens: dict[str, int] = {}
        #: set once a proof failed; every check raises it from then on
        self.lost: LockLost | None = None
        self._wake = threading.Event()  # a sender asks the heartbeat thread to prove the lock again
        self._session: Connection | None = None  # PostgreSQL: the connection holding the advisory locks
        self._backend: int | None = None  # PostgreSQL: the server process of that session
        self._proving = threading.Lock()  # one proof at a time (the session serves one thread at a time)
        self._valid_until = 0.0  # time.monotonic() until which the last proof stands

    def destination_tokens(self) -> dict[str, int]:
        """Destination name -> the fencing token this holder has for it."""
        return {name.removeprefix("destination:"): token for name, token in self.tokens.items()}

    def check(self) -> None:
        """Raise LockLost unless this holder still holds all its locks; call before every attempt to send.

        A proof in the database (see the module) stands for the attempts that start within ``window`` seconds after
        it began, so that checks cost nothing measurable at a thousand attempts a second; once a proof failed (here
        or in the heartbeat), every check raises at once. Why a window still converges: a run that lost its lock
        starts attempts for at most ``window`` seconds more, its next proof fails, and it notes its chunk in flight
        again so that the next run re-sends its users' current values (``delivery.py``).
        """
        lost = self.lost
        if lost is not None:
            raise lost
        now = time.monotonic()
        valid_until = self._valid_until
        if now < valid_until - self.window / 2:
            return
        if now < valid_until:
            # the second half of the window: the heartbeat thread proves again while this attempt goes out under
            # the proof that still stands, so that at a steady rate of attempts no sender waits for a round trip
            self._wake.set()
            return
        with self._proving:  # past the window: prove before this attempt
            self._prove_if_due()

    def _prove_if_due(self) -> None:
        """Prove unless the last proof is still fresh (the caller holds ``_proving``); LockLost when it fails."""
        if self.lost is not None:
            raise self.lost
        started = time.monotonic()
        if started < self._valid_until - self.window / 2:
            return  # proved meanwhile
        self._prove()
        self._valid_until = started + self.window

    def note_run(self, conn: Connection, run_id: int) -> None:
        """Record ``run_id`` as this holder's run in its lock rows, in ``conn``'s transaction (the one that opens the
        run), so that a run refused the lock is told which run holds it from then on, not only after a renewal."""
        self.run_id = run_id
        for name in self.names:
            conn.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.holder == self.holder, locks.c.token == self.tokens[name])
                .values(run_id=run_id)
            )

    def confirm(self, conn: Connection, destinations: Sequence[str]) -> None:
        """Prove, inside ``conn``'s transaction, that this holder still holds the locks of ``destinations``: a
        compare-and-set on holder and token (renewing the leases), which raises LockLost (rolling the transaction
        back) when another acquisition took one. Call it first in every transaction that records outcomes: until
        the commit, no other run can take these locks over (SQLite: the write lock; PostgreSQL: the row locks)."""
        self.check()
        values = {"expires_at": utcnow() + self.lease}
        for destination in sorted(set(destinations)):
            name = f"destination:{destination}"
            held = conn.execute(
                update(locks)
                .where(locks.c.name == name, locks.c.holder == self.holder, locks.c.token == self.tokens[name])
                .values(**values)
            )
            if held.rowcount != 1:
                raise self._lose(name, f"another run took it over (token {self.tokens[name]} is no longer its own)")

    def _lose(self, name: str, how: str) -> LockLost:
        """Note that the lock ``name`` is lost (the first loss is the one every later check raises)."""
        if self.lost is None:
            run = f"run {self.run_id}" if self.run_id is not None else "the run"
            self.lost = LockLost(
                f"{run} lost the lock for destination {name.removeprefix('destination:')!r}: {how}. It stopped "
                f"before sending or recording anything more; the next run sends again what it had in flight",
                lock=name,
                run_id=self.run_id,
                how=how,
            )
            log.error("%s", self.lost)
        return self.lost

    def _prove(self) -> None:
        """Check in the database that this holder holds every lock (the caller holds ``_proving``)."""
        if self._session is not None:
            rows = self._prove_session(self._session)
        else:
            with self.engine.connect() as conn:
                rows = self._rows(conn)
        for name in self.names:
            row = rows.get(name)
            if row is None:
                raise self._lose(name, "its row is gone: another run took it over and has released it since")
            if row.holder != self.holder or row.token != self.tokens[name]:
                raise self._lose(name, f"another run took it over ({describe(row)}, token {row.token})")
        if self._session is None and min(r.expires_at for r in rows.values()) - utcnow() < self.lease / 3:
            self._renew()  # the heartbeat is late (a busy machine, a paused process): renew before sending

    def _rows(self, conn: Connection) -> dict[str, Any]:
        query = select(locks.c.name, locks.c.holder, locks.c.token, locks.c.expires_at, *DESCRIBED)
        return {r.name: r for r in conn.execute(query.where(locks.c.name.in_(self.names)))}

    def _prove_session(self, session: Connection) -> dict[str, Any]:
        """PostgreSQL: the advisory-lock session answers, as the server process that took the advisory locks (only
        that session can have released them, and it releases them only when this holder stops); return the lock
        rows, read on that session in one statement."""
        query = select(func.pg_backend_pid().label("backend"), locks.c.name, locks.c.holder, locks.c.token)
        try:
            found = session.execute(query.add_columns(*DESCRIBED).where(locks.c.name.in_(self.names))).all()
        except SQLAlchemyError as exc:
            # never use this connection again: SQLAlchemy would reconnect it, and a new session holds no lock
            self._session = None
            session.invalidate()
            session.close()
            raise self._lose(
                self.names[0],
                f"its PostgreSQL session ended (terminated, or the server restarted: {_one_line(exc)}), which "
                f"released its advisory lock",
            ) from None
        if any(r.backend != self._backend for r in found):
            raise self._lose(self.names[0], "its PostgreSQL session was replaced by another (the lock went with it)")
        return {r.name: r for r in found}

    def _renew(self) -> None:
        gone = renew(self.engine, self.tokens, self.holder, self.lease, self.run_id)
        if gone:
            raise self._lose(gone[0], f"another run took it over (token {self.tokens[gone[0]]} is no longer its own)")
