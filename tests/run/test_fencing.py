"""Fencing, proven: a run that loses its lock while it runs stops before its next send and records nothing, and
whatever it still sent is caught by the next run. The four ways of losing the lock: the PostgreSQL session
terminated, the PostgreSQL server restarted, a run paused past its lease (SQLite), and a takeover from another pid
namespace on the same host name. Each ends with destination, snapshot and source agreeing after the next run.

Every test is driven by events (a request caught by the fake Gist, a process's exit, the state of a lock), never
by sleeps: run A is held inside its request while the test makes it lose its lock and lets run B go by.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import Config, load_config, parse_config
from audience_sync.destinations.http import HttpSender, RetryPolicy
from audience_sync.destinations.jsonl import JsonlSink
from audience_sync.errors import LockHeld, LockLost
from audience_sync.run.sync import run_sync
from audience_sync.store import outbox
from audience_sync.store.lock import HeldLock, advisory_key
from audience_sync.store.migrate import upgrade
from audience_sync.values import decode
from tests.fakes.gist import FakeGist, Fault, sets
from tests.harness import Harness, Warehouse

ENV = {"GIST_API_KEY": "gist-test-key"}
KEY = "plan"
WAIT = 120.0  # how long a test waits for a run to reach a point: generous, since a loaded machine is slow, not wrong


def gist_config(
    state_url: str, warehouse: Warehouse, gist: FakeGist, *, lease: str | None = None, more: str = ""
) -> str:
    """A config: the Plan trait to a fake Gist (one request at a time) and the ``more`` destinations, with
    ``lease`` as the run lock's lease. Its timeout is long: a request a trap holds must not time out (and be retried
    past the trap) while the test starts the next process, which takes seconds on a loaded machine."""
    lease_line = f'lock_lease = "{lease}"\n' if lease else ""
    return (
        f'[state]\nurl = "{state_url}"\n{lease_line}[source]\nurl = "{warehouse.url}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        f"concurrency = 1\nmax_retries = 3\ntimeout = 600\n" + more + Harness.trait("Plan")
    )


def plans(warehouse: Warehouse, values: dict[str, str]) -> None:
    warehouse.set_trait("Plan", {user: (f"{user}@x.io", value) for user, value in values.items()})


class Background:
    """A callable run on a thread; :meth:`join` returns what it raised (None if it returned)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.result: Any = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> BaseException | None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the run did not finish"
        return self.error


def snapshot_of(state_url: str) -> dict[str, Any]:
    engine = create_engine(state_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT user_id, value, in_doubt FROM snapshot WHERE destination = 'gist' AND computation_key = 'plan'"
            )
        ).all()
    engine.dispose()
    return {user: (decode(value), bool(doubt)) for user, value, doubt in rows}


def assert_agree(state_url: str, gist: FakeGist, warehouse: Warehouse) -> None:
    """Destination, snapshot and source hold the same value for every user, and nothing is left in doubt."""
    with warehouse._db() as db:
        truth = dict(db.execute("SELECT user_id, value FROM trait_values WHERE trait = 'Plan'").fetchall())
    snap = snapshot_of(state_url)
    for user in set(truth) | set(snap):
        value, doubt = snap.get(user, (None, False))
        assert not doubt, user
        assert gist.properties(user).get(KEY) == value == truth.get(user), user


def run_rows(state_url: str, run_id: int) -> tuple[Any, list[str]]:
    """A run's row (status, error, counts) and the statuses of its changes."""
    engine = create_engine(state_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, error, counts FROM sync_runs WHERE id = :id"), {"id": run_id}).one()
        statuses = list(conn.execute(text("SELECT status FROM diffs WHERE run_id = :id"), {"id": run_id}).scalars())
    engine.dispose()
    return row, statuses


def assert_fenced_out(state_url: str, run_id: int, how: str) -> None:
    """Run ``run_id`` is closed as failed for its lost lock and recorded none of its changes as sent."""
    row, statuses = run_rows(state_url, run_id)
    assert row.status == "failed" and "lost the lock for destination 'gist'" in row.error and how in row.error
    assert "sent" not in statuses, statuses


def start_cli(config: Path, *prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "audience_sync", "run", "--json", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )


# --- PostgreSQL: the lock session terminated, the server restarted -------------------------------------------


def lock_session(url: str, name: str) -> int:
    """The backend pid of the session holding the advisory lock ``name`` of the state at ``url``."""
    engine = create_engine(url)
    with engine.connect() as conn:
        key = advisory_key(name, conn.execute(text("SELECT current_schema()")).scalar_one())
        pid = conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"key": key},
        ).scalar_one()
    engine.dispose()
    return int(pid)


def first_plan_attempt_answered_429(gist: FakeGist) -> tuple[Any, Any]:
    """Traps for run A: its first request setting u1's plan to "basic" is held, then answered 429 Retry-After 1;
    any later request setting it ("basic" again: A's retry) is held until the test releases it."""
    first = gist.trap(sets("u1", KEY, "basic"), hold=True, fault=Fault(429, headers={"Retry-After": "1"}), times=1)
    retry = gist.trap(sets("u1", KEY, "basic"), hold=True)
    return first, retry


def run_b_then_next(config: Config, warehouse: Warehouse, gist: FakeGist, retry: Any, a: Background) -> LockLost:
    """While A waits on its Retry-After: B sends the newer value; then A must stop with LockLost without its retry
    going out, and the next run leaves everything agreeing. Returns A's error."""
    plans(warehouse, {"u1": "pro"})
    b = run_sync(config)
    assert b.status == "succeeded", b.error
    assert gist.properties("u1")[KEY] == "pro"
    retry.release()  # on code without fencing, A's stale retry now lands after B's value
    error = a.join()
    assert isinstance(error, LockLost), error
    assert retry.count == 0  # A's retry never went out
    assert gist.properties("u1")[KEY] == "pro"
    following = run_sync(config)
    assert following.status == "succeeded", following.error
    return error


@pytest.mark.postgres
def test_a_run_whose_lock_session_is_terminated_stops_before_its_retry(
    pg_url: str, tmp_path: Path, warehouse: Warehouse, gist: FakeGist
) -> None:
    plans(warehouse, {"u1": "basic"})
    config = parse_config(gist_config(pg_url, warehouse, gist), environ=ENV)
    first, retry = first_plan_attempt_answered_429(gist)
    try:
        a = Background(lambda: run_sync(config))
        first.wait()  # A's request is out: its chunk is in flight
        engine = create_engine(pg_url)
        with engine.connect() as conn:  # waits until the backend is gone
            assert conn.execute(
                text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": lock_session(pg_url, "destination:gist")}
            ).scalar_one()
        engine.dispose()
        first.release()  # A is told 429, Retry-After 1, and waits with a dead lock session
        error = run_b_then_next(config, warehouse, gist, retry, a)
    finally:
        gist.release_all()
    assert error.destination == "gist" and error.run_id is not None and "PostgreSQL session ended" in error.how
    assert_fenced_out(pg_url, error.run_id, "PostgreSQL session ended")
    assert_agree(pg_url, gist, warehouse)


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of the test's own, on its own port: restarting it disturbs no one else."""

    bindir: Path
    data: Path
    port: int
    as_postgres: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on the cluster, waiting for it; the server's own output goes to its log file (never to a pipe
        of ours, which the server would keep open)."""
        log = str(self.data.parent / "log")
        subprocess.run(
            [*self.as_postgres, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "120", *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
        )

    def restart(self) -> None:
        """A fast restart: every session is terminated, the server comes back on the same port."""
        self.pg_ctl("-m", "fast", "restart")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """initdb + pg_ctl start of a throw-away cluster; as the ``postgres`` OS user when we are root (initdb refuses
    root). Its directory is made under the system temp dir, not pytest's tmp_path: pytest keeps that under a
    directory only root may enter, where the ``postgres`` user could not reach its data."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins and shutil.which("initdb") is None:
        pytest.skip("no initdb on this machine to start a private PostgreSQL cluster")
    bindir = bins[-1].parent if bins else Path(str(shutil.which("initdb"))).parent
    as_postgres: tuple[str, ...] = ()
    base = Path(tempfile.mkdtemp(prefix="audience-sync-pg-"))
    if os.geteuid() == 0:
        as_postgres = ("runuser", "-u", "postgres", "--")
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    cluster = PrivateCluster(bindir, data, port, as_postgres)
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    cluster.pg_ctl("-o", options, "start")
    try:
        yield cluster
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.postgres
def test_a_run_whose_server_restarts_stops_before_its_retry(
    private_pg: PrivateCluster, warehouse: Warehouse, gist: FakeGist
) -> None:
    plans(warehouse, {"u1": "basic"})
    config = parse_config(gist_config(private_pg.url, warehouse, gist), environ=ENV)
    first, retry = first_plan_attempt_answered_429(gist)
    try:
        a = Background(lambda: run_sync(config))
        first.wait()
        private_pg.restart()  # A's lock session and every other connection of A are gone
        first.release()
        error = run_b_then_next(config, warehouse, gist, retry, a)
    finally:
        gist.release_all()
    assert "PostgreSQL session ended" in error.how and error.run_id is not None
    assert_fenced_out(private_pg.url, error.run_id, "PostgreSQL session ended")
    assert_agree(private_pg.url, gist, warehouse)


# --- SQLite: a run paused past its lease ---------------------------------------------------------------------


def write_lock_free(db: Path) -> bool:
    """True when nobody holds the SQLite database's write lock (a run stopped inside a transaction would)."""
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def stop_outside_a_transaction(proc: subprocess.Popen[str], db: Path) -> None:
    """SIGSTOP ``proc`` at a moment it holds no write lock on ``db`` (its heartbeat may be renewing: let it end)."""
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        if write_lock_free(db):
            return
        os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + WAIT
        while not write_lock_free(db):  # its transaction takes milliseconds
            assert time.monotonic() < deadline, "the run kept the write lock"


def test_a_run_paused_past_its_lease_stops_and_its_late_send_is_corrected(
    tmp_path: Path, warehouse: Warehouse, gist: FakeGist
) -> None:
    db = tmp_path / "state.db"
    state_url = f"sqlite:///{db}"
    plans(warehouse, {"u1": "basic", "u2": "basic"})
    path = tmp_path / "paused.toml"
    path.write_text(gist_config(state_url, warehouse, gist, lease="1s"))
    held = gist.trap(sets("u1", KEY, "basic"), hold=True, times=1)  # A's first request, on the wire
    stale_u2 = gist.trap(sets("u2", KEY, "basic"))  # A's next one: must never go out
    a = start_cli(path)
    try:
        held.wait()
        stop_outside_a_transaction(a, db)  # A is paused: its heartbeat too, so its lease runs out
        plans(warehouse, {"u1": "pro", "u2": "pro"})
        b = run_sync(load_config(path, environ=ENV), wait=WAIT)  # takes the lock over once A's lease expired
        assert b.status == "succeeded", b.error
        assert gist.properties("u1")[KEY] == gist.properties("u2")[KEY] == "pro"
        held.release()  # the request A had on the wire lands now, after B's value: the residual window
        os.kill(a.pid, signal.SIGCONT)
        _, err = a.communicate(timeout=WAIT)
    finally:
        gist.release_all()
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.communicate()
    assert a.returncode == 1, err
    assert "lost the lock for destination 'gist'" in err and "another run took it over" in err
    assert stale_u2.count == 0  # checked before its next attempt, A sent nothing more
    assert_fenced_out(state_url, b.run_id - 1, "another run took it over")
    assert gist.properties("u1")[KEY] == "basic"  # what A had on the wire when it lost the lock...
    assert snapshot_of(state_url)["u1"] == ("pro", False)
    following = run_sync(load_config(path, environ=ENV))  # ...is caught: A noted its chunk again when it stopped
    assert following.status == "succeeded" and following.counts["sent"] == 2
    assert_agree(state_url, gist, warehouse)


# --- another pid namespace on the same host name --------------------------------------------------------------


def unshare_works() -> bool:
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


#: a new pid namespace where the run is not pid 1: sh is 1, /bin/true 2, the run 3 (a pid no other namespace's
#: newcomer has), and sh does not exec it (the trailing exit)
IN_NEW_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '/bin/true; "$0" "$@"; exit $?')


@pytest.mark.skipif(not unshare_works(), reason="unshare --pid --fork --mount-proc needs root")
def test_a_run_in_another_pid_namespace_does_not_take_a_live_lock_on_pid_liveness(
    tmp_path: Path, warehouse: Warehouse, gist: FakeGist
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    plans(warehouse, {"u1": "basic"})
    path = tmp_path / "ns.toml"
    path.write_text(gist_config(state_url, warehouse, gist))
    held = gist.trap(sets("u1", KEY, "basic"), hold=True, times=1)
    a = start_cli(path, *IN_NEW_NAMESPACE)
    try:
        held.wait()  # A holds the lock, its chunk in flight, its lease live (5 minutes)
        plans(warehouse, {"u1": "pro"})
        # B in a namespace of its own: A's pid 3 does not exist there, yet A is alive
        b = start_cli(path, "unshare", "--pid", "--fork", "--mount-proc")
        _, b_err = b.communicate(timeout=WAIT)
        assert b.returncode == 1, b_err
        assert "another run holds the lock for destination:gist" in b_err and "pid 3 on" in b_err
        held.release()
        _, a_err = a.communicate(timeout=WAIT)
    finally:
        gist.release_all()
        if a.poll() is None:
            a.kill()
            a.communicate()
    assert a.returncode == 0, a_err
    assert gist.properties("u1")[KEY] == "basic"
    following = run_sync(load_config(path, environ=ENV))
    assert following.status == "succeeded"
    assert_agree(state_url, gist, warehouse)


# --- recovery and the fence, by parts ------------------------------------------------------------------------


def lose(held: HeldLock, url: str) -> None:
    """Make ``held`` lose its lock as a takeover would find it: SQLite, its lease expired; PostgreSQL, its session
    terminated."""
    engine = create_engine(url)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            pid = lock_session(url, held.names[0])
            assert conn.execute(text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": pid}).scalar_one()
        else:
            conn.execute(text("UPDATE run_locks SET expires_at = '2000-01-01 00:00:00'"))
    engine.dispose()


def test_a_run_that_lost_its_lock_neither_opens_nor_recovers_the_new_holders_chunk(state_url: str) -> None:
    """A holder whose lock was taken over (paused between taking it and opening its run, say) fails its
    compare-and-set, and recovery by its old token leaves the new holder's chunk in flight alone."""
    engine = create_engine(state_url)
    upgrade(engine)
    lease = dt.timedelta(minutes=5)
    a = HeldLock(engine, ["destination:d"], lease).start()
    lose(a, state_url)
    b = HeldLock(engine, ["destination:d"], lease).start()
    assert b.tokens["destination:d"] > a.tokens["destination:d"]
    chunk = outbox.Chunk(11, "d", ("u1", 1), ("u1", 1), 1, None, [1])
    with engine.begin() as conn:
        b.confirm(conn, ["d"])
        outbox.mark_in_flight(conn, chunk, b.destination_tokens()["d"])
    with pytest.raises(LockLost, match="lost the lock for destination 'd'"), engine.begin() as conn:
        a.confirm(conn, ["d"])
    with engine.begin() as conn:
        assert outbox.recover_in_flight(conn, 12, ["d"], a.destination_tokens()) == 0
        assert outbox.recover_in_flight(conn, 11, ["d"], b.destination_tokens()) == 0  # its own chunk
        assert conn.execute(text("SELECT run_id, token FROM delivery_in_flight")).all() == [
            (11, b.tokens["destination:d"])
        ]
    with pytest.raises(LockLost):
        a.check()
    a.stop()
    b.stop()
    with engine.connect() as conn:  # B released; the tokens stay for the next acquisition
        assert conn.execute(text("SELECT count(*) FROM run_locks")).scalar_one() == 0
        assert conn.execute(text("SELECT token FROM run_lock_tokens")).scalar_one() == b.tokens["destination:d"]
    engine.dispose()


def test_a_run_of_one_destination_leaves_another_runs_chunk_in_flight_alone(harness: Harness, gist: FakeGist) -> None:
    """Filtered runs: B (``--destination file``) must not recover A's chunk in flight to ``gist``, nor abandon A."""
    plans(harness.warehouse, {"u1": "basic"})
    both = gist_config(harness.state_url, harness.warehouse, gist, more=harness.jsonl_destination())
    config = parse_config(both, environ=ENV)
    held = gist.trap(sets("u1", KEY, "basic"), hold=True, times=1)
    try:
        a = Background(lambda: run_sync(config, destinations=["gist"]))
        held.wait()
        with pytest.raises(LockHeld):  # A holds gist: a run of both destinations must wait
            run_sync(config)
        b = run_sync(config, destinations=["file"])
        assert b.status == "succeeded" and b.counts["sent"] == 1
        engine = create_engine(harness.state_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT destination FROM delivery_in_flight")).scalars().all() == ["gist"]
            status = conn.execute(text("SELECT status FROM sync_runs WHERE id < :b"), {"b": b.run_id}).scalar_one()
        engine.dispose()
        assert status == "running"
        held.release()
        assert a.join() is None
    finally:
        gist.release_all()
    assert a.result.status == "succeeded" and a.result.counts["sent"] == 1
    assert_agree(harness.state_url, gist, harness.warehouse)


def test_the_fence_is_checked_before_every_attempt_retries_included() -> None:
    """HttpSender calls its fence right before each attempt: after a 429 and its wait, a lost lock stops the retry."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(429, headers={"Retry-After": "0"})

    checks: list[int] = []

    def fence() -> None:
        checks.append(len(requests))
        if len(checks) > 1:
            raise LockLost("lost", lock="destination:d", run_id=1, how="test")

    sender = HttpSender(
        destination="d",
        base_url="http://127.0.0.1:9",
        timeout=1.0,
        concurrency=1,
        policy=RetryPolicy(max_retries=5),
        transport=httpx.MockTransport(handler),
        sleep=lambda _: None,
        before_attempt=fence,
    )
    with pytest.raises(LockLost):
        sender.post("/v1/batch", content=b"{}")
    sender.close()
    assert checks == [0, 1] and len(requests) == 1


def test_the_jsonl_sink_writes_no_chunk_once_the_lock_is_lost(tmp_path: Path) -> None:
    config = parse_config(
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n'
    ).destination("file")
    sink = JsonlSink(config)  # type: ignore[arg-type]
    sink.deliver_messages([(1, b'{"n":1}')])

    def lost() -> None:
        raise LockLost("lost", lock="destination:file", run_id=1, how="test")

    sink.before_attempt = lost
    with pytest.raises(LockLost):
        sink.deliver_messages([(2, b'{"n":2}')])
    sink.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"n":1}\n'
