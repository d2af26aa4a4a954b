"""The run lock: one run at a time per state database and destination, kept in the database itself, fenced.

Each destination a run touches is a row in ``run_locks`` saying who holds it. On SQLite the row is the lock: it
has a lease the holder renews from a background thread, and a lock whose lease expired, or whose holder is provably
dead, is taken over. A pid proves a death only to a process that sees the same pids: the same host name, the same
machine (``/proc/sys/kernel/random/boot_id``) and the same pid namespace (``/proc/self/ns/pid``); two containers
sharing a host name see each other's pids as dead, so anywhere else only the lease decides. On PostgreSQL a
session-level advisory lock per destination decides, held on a connection of its own for the whole run: the
server releases it the moment the holder's connection dies, so a crashed run's successor starts at once; the row
then tells who holds it. Either way the lock lives in the database (not a pid file), so runs on two hosts never
overlap.

**Fencing.** Every acquisition takes the next token of its lock name from ``run_lock_tokens`` (a generation that
only grows, kept when the lock is released) and writes it into the lock's row in the same transaction, as a
compare-and-set on the row it saw (on PostgreSQL after the advisory lock decided). A holder proves it still holds
its locks:

- before each attempt to send, :meth:`HeldLock.check`: its rows still carry its holder and token (SQLite, where a
  lease near its end is first renewed), or its advisory-lock session answers, as the same server process that
  took the advisory locks, and the rows still carry its token (PostgreSQL; one statement on that session). One
  proof stands for the attempts that start within :data:`FENCE_WINDOW` seconds after it began (see the method);
- in every transaction that records outcomes, :meth:`HeldLock.confirm`: an ``UPDATE`` of its rows conditioned on
  holder and token, first in the transaction. SQLite then holds the write lock and PostgreSQL the row lock until
  the commit, so no run can take the lock over between that proof and the commit;
- in every renewal by the heartbeat, conditioned on holder and token the same way.

A failed proof raises :class:`~audience_sync.errors.LockLost`, and so does every check after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import LockHeld, LockLost
from .dialect import backend, upsert
from .schema import lock_tokens, locks, utcnow

log = logging.getLogger(__name__)
#: the columns :func:`_describe` names
_DESCRIBED = (locks.c.run_id, locks.c.pid, locks.c.host, locks.c.acquired_at)

DEFAULT_LEASE = dt.timedelta(minutes=5)
#: seconds one proof of the lock stands for: send attempts starting within this long after a proof began go out
#: without another. A run that lost its lock can therefore start attempts for at most this long after the loss
#: (on PostgreSQL, where a successor can take over at once; on SQLite a successor must first wait out the lease,
#: which a proof renews when it is near its end). From half the window on, the heartbeat thread proves again while
#: the senders go on, so a proof's round trip (milliseconds on a busy server) holds up no sender: at 1,000
#: attempts a second, about 20 proofs instead of 1,000, and no sender waiting for them.
FENCE_WINDOW = 0.1
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


def _describe(row: Any) -> str:
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
                f"another run holds the lock for {name} ({_describe(row)}); try again when it has finished",
                holder=_describe(row),
            )
        reason = "its process is gone" if dead else "its lease expired"
        log.warning("taking over the lock for %s from %s: %s", name, _describe(row), reason)
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


def _holder_of(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        row = conn.execute(select(locks).where(locks.c.name == name)).first()
    return _describe(row) if row is not None else "a run on another connection"


def _claim(engine: Engine, names: Sequence[str], holder: str, lease: dt.timedelta, me: Process) -> dict[str, int]:
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]


class HeldLock:
    """Locks held by this process, renewed in the background until released, and fenced (see the module)."""

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
        self._stop = threading.Event()
        self._wake = threading.Event()  # a sender asks the heartbeat thread to prove the lock again
        self._thread = threading.Thread(target=self._heartbeat, name="audience-sync-lock", daemon=True)
        self._session: Connection | None = None  # PostgreSQL: the connection holding the advisory locks
        self._backend: int | None = None  # PostgreSQL: the server process of that session
        self._proving = threading.Lock()  # one proof at a time (the session serves one thread at a time)
        self._valid_until = 0.0  # time.monotonic() until which the last proof stands

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
                        f"another run holds the lock for {name} ({_holder_of(self.engine, name)}); "
                        f"try again when it has finished",
                        holder=_holder_of(self.engine, name),
                    )
            self._backend = session.execute(select(func.pg_backend_pid())).scalar_one()
            session.commit()  # session-level advisory locks outlive the transaction
            # its proofs are single statements: without a transaction each costs one round trip, not three
            session.execution_options(isolation_level="AUTOCOMMIT")
            self.tokens = _claim(self.engine, self.names, self.holder, self.lease, me)
        except BaseException:
            _end_session(session)
            raise
        self._session = session

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
                raise self._lose(name, f"another run took it over ({_describe(row)}, token {row.token})")
        if self._session is None and min(r.expires_at for r in rows.values()) - utcnow() < self.lease / 3:
            self._renew()  # the heartbeat is late (a busy machine, a paused process): renew before sending

    def _rows(self, conn: Connection) -> dict[str, Any]:
        query = select(locks.c.name, locks.c.holder, locks.c.token, locks.c.expires_at, *_DESCRIBED)
        return {r.name: r for r in conn.execute(query.where(locks.c.name.in_(self.names)))}

    def _prove_session(self, session: Connection) -> dict[str, Any]:
        """PostgreSQL: the advisory-lock session answers, as the server process that took the advisory locks (only
        that session can have released them, and it releases them only when this holder stops); return the lock
        rows, read on that session in one statement."""
        query = select(func.pg_backend_pid().label("backend"), locks.c.name, locks.c.holder, locks.c.token)
        try:
            found = session.execute(query.add_columns(*_DESCRIBED).where(locks.c.name.in_(self.names))).all()
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
