"""The state database itself: migrations own the schema, and the run lock keeps runs apart."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text

from audience_sync.errors import LockHeld, StoreError
from audience_sync.store.lock import acquire, release, run_lock
from audience_sync.store.migrate import (
    HEAD,
    alembic_config,
    compare_type,
    current_revision,
    migrations_dir,
    upgrade,
)
from audience_sync.store.schema import Base
from tests.harness import Harness, Warehouse

# the migrations themselves are under test: every new database here is migrated, never cloned
pytestmark = pytest.mark.real_migrations


def test_migrations_build_exactly_the_models_schema(state_url: str) -> None:
    engine = create_engine(state_url)
    assert current_revision(engine) is None
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None and head != "0001"  # the chain has grown beyond the first revision
    assert upgrade(engine) == head
    assert upgrade(engine) == head  # idempotent
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": compare_type})
        diffs = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diffs == []


def test_a_database_at_the_first_revision_upgrades_in_place(state_url: str) -> None:
    """A state database made by an earlier release keeps its data across the upgrade."""
    from alembic import command

    from audience_sync.store.migrate import alembic_config

    engine = create_engine(state_url)
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO computations (key, name, computation_class, definition_hash, first_synced_at, updated_at)"
                " VALUES ('vip', 'VIP', 'audience', 'x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT key FROM computations")).scalar_one() == "vip"
        assert conn.execute(text("SELECT count(*) FROM alert_incidents")).scalar_one() == 0
    engine.dispose()


def _bulk_layout(conn: Connection) -> dict[str, bool]:
    """Whether staging and snapshot have the bulk layout of migration 0004."""
    if conn.dialect.name == "sqlite":
        sql = {t: conn.execute(text(f"SELECT sql FROM sqlite_master WHERE name = '{t}'")).scalar_one() for t in TABLES}
        return {t: "WITHOUT ROWID" in s for t, s in sql.items()}
    persistence: dict[Any, Any] = dict(
        conn.execute(
            text(
                "SELECT relname, relpersistence FROM pg_class WHERE relname IN ('staging', 'snapshot') "
                "AND relnamespace = current_schema()::regnamespace"
            )
        ).all()
    )
    return {"staging": persistence["staging"] == "u", "snapshot": conn.dialect.name == "postgresql"}


TABLES = ("staging", "snapshot")


def test_migration_0004_keeps_the_snapshot_and_goes_back(state_url: str) -> None:
    engine = create_engine(state_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0001")
    row = "('d', 'k', 'u1', 'true', 'u1@x.io', 7, '2026-11-29 00:00:00', false, NULL)"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO snapshot VALUES {row}"))
        conn.execute(text("INSERT INTO staging VALUES (1, 'k', 'u1', NULL, 'true', NULL)"))
        assert not _bulk_layout(conn)["staging"]
    command.upgrade(cfg, "0004")
    with engine.connect() as conn:
        assert _bulk_layout(conn) == {"staging": True, "snapshot": True}
        assert conn.execute(text("SELECT user_id, value, email, run_id FROM snapshot")).all() == [
            ("u1", "true", "u1@x.io", 7)
        ]
        assert conn.execute(text("SELECT count(*) FROM staging")).scalar_one() == 1
    command.downgrade(cfg, "0001")
    with engine.connect() as conn:
        assert not _bulk_layout(conn)["staging"]
        assert conn.execute(text("SELECT count(*) FROM snapshot")).scalar_one() == 1
    engine.dispose()


def _insert_run(conn: Connection, run_id: int) -> None:
    conn.execute(
        text(
            "INSERT INTO sync_runs (id, mode, trigger, status, started_at, destinations, computations, counts, host, "
            f"pid) VALUES ({run_id}, 'incremental', 'manual', 'failed', '2026-11-29 00:00:00', '[]', '[]', '{{}}', "
            "'h', 1)"
        )
    )


def _insert_change(conn: Connection, run_id: int, user: str, status: str, diff_id: int | None = None) -> None:
    """A change of audience ``k<diff_id>`` (or ``k``) for destination ``d``, with ``diff_id`` when given."""
    ids = ("id, ", f"{diff_id}, ") if diff_id is not None else ("", "")
    conn.execute(
        text(
            f"INSERT INTO diffs ({ids[0]}run_id, destination, computation_key, computation_class, user_id, change, "
            f"status, attempts, created_at) VALUES ({ids[1]}{run_id}, 'd', 'k{diff_id or ''}', 'audience', '{user}', "
            f"'entered', '{status}', 0, '2026-11-29 00:00:00')"
        )
    )


def test_migration_0005_turns_changes_left_sending_into_the_range_in_flight(state_url: str) -> None:
    """A database an older version left with a chunk ``sending`` (its run died) upgrades to pending changes inside
    one in-flight range, which the next run recovers as it would have; downgrading gives the ``sending`` rows back."""
    engine = create_engine(state_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0004")
    rows = [  # (id, user, status): u2..u4 were in flight; u1 sent before, u5 still pending
        (1, "u1", "sent"),
        (2, "u2", "sending"),
        (3, "u3", "sending"),
        (4, "u3", "sending"),
        (5, "u4", "sending"),
        (6, "u5", "pending"),
    ]
    with engine.begin() as conn:
        _insert_run(conn, 7)
        for diff_id, user, status in rows:
            _insert_change(conn, 7, user, status, diff_id)
    command.upgrade(cfg, "0005")
    with engine.connect() as conn:
        ranges = conn.execute(
            text(
                "SELECT run_id, destination, first_user_id, first_diff_id, last_user_id, last_diff_id "
                "FROM delivery_in_flight"
            )
        ).all()
        statuses: dict[Any, Any] = dict(conn.execute(text("SELECT id, status FROM diffs")).all())
    assert [tuple(r) for r in ranges] == [(7, "d", "u2", 2, "u4", 5)]
    assert statuses == {1: "sent", 2: "pending", 3: "pending", 4: "pending", 5: "pending", 6: "pending"}
    command.downgrade(cfg, "0004")
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT id, status FROM diffs")).all())
    assert statuses == {1: "sent", 2: "sending", 3: "sending", 4: "sending", 5: "sending", 6: "pending"}
    command.upgrade(cfg, "head")  # today's recovery, on the notes 0005 made (0008 gives them no token)
    from audience_sync.store.outbox import recover_in_flight

    with engine.begin() as conn:
        assert recover_in_flight(conn, 8, ["d"]) == 4
        statuses = dict(conn.execute(text("SELECT id, status FROM diffs")).all())
        doubted = conn.execute(text("SELECT computation_key FROM snapshot WHERE in_doubt ORDER BY 1")).scalars().all()
        assert conn.execute(text("SELECT count(*) FROM delivery_in_flight")).scalar_one() == 0
    assert statuses == {1: "sent", 2: "superseded", 3: "superseded", 4: "superseded", 5: "superseded", 6: "pending"}
    assert doubted == ["k2", "k3", "k4", "k5"]
    engine.dispose()


def test_migration_0007_keeps_the_changes_and_their_partial_index(state_url: str) -> None:
    """Dropping the foreign key rebuilds ``diffs`` on SQLite: rows, ids and the partial index must survive."""
    engine = create_engine(state_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0006")
    with engine.begin() as conn:
        _insert_run(conn, 3)
        for diff_id, status in ((41, "sent"), (42, "pending")):
            _insert_change(conn, 3, f"u{diff_id}", status, diff_id)
    command.upgrade(cfg, "0007")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, status FROM diffs ORDER BY id")).all() == [(41, "sent"), (42, "pending")]
        _insert_change(conn, 3, "u43", "pending")
        assert conn.execute(text("SELECT count(DISTINCT id) FROM diffs")).scalar_one() == 3  # ids still generated
        if conn.dialect.name == "sqlite":
            index = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'ix_diffs_pending'")).scalar_one()
            assert index.endswith("WHERE status = 'pending'")
    command.downgrade(cfg, "0006")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 3
    engine.dispose()


def test_migration_0008_gives_held_locks_and_in_flight_notes_their_place_in_the_token_order(state_url: str) -> None:
    """A database upgraded while a run held a lock and had a chunk in flight: the lock keeps its row with token 0,
    its holder's machine unknown (taken over on its lease only, even with its pid dead), and the next acquisition's
    token is newer; the note, without a token, is recovered by whoever holds the lock next."""
    from audience_sync.store.outbox import recover_in_flight

    engine = create_engine(state_url)
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0007")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with engine.begin() as conn:
        _insert_run(conn, 7)
        _insert_change(conn, 7, "u1", "pending", 1)
        conn.execute(
            text(
                "INSERT INTO run_locks (name, holder, host, pid, run_id, acquired_at, expires_at) VALUES "
                "('destination:d', 'old', :host, :pid, 7, '2026-11-29 00:00:00', '2999-01-01 00:00:00')"
            ),
            {"host": socket.gethostname(), "pid": int(dead.stdout)},
        )
        conn.execute(text("INSERT INTO delivery_in_flight VALUES (7, 'd', 'u1', 1, 'u1', 1, '2026-11-29 00:00:00')"))
    command.upgrade(cfg, "0008")
    with engine.connect() as conn:
        lock = conn.execute(text("SELECT holder, run_id, token, boot_id, pid_ns FROM run_locks")).one()
        assert tuple(lock) == ("old", 7, 0, None, None)
        assert conn.execute(text("SELECT name, token FROM run_lock_tokens")).all() == [("destination:d", 0)]
        assert conn.execute(text("SELECT token, late FROM delivery_in_flight")).one() in ((None, False), (None, 0))
    with pytest.raises(LockHeld, match="run 7, pid"):  # a dead pid of an unknown machine proves nothing
        acquire(engine, ["destination:d"], "new", dt.timedelta(minutes=5))
    with engine.begin() as conn:
        conn.execute(text("UPDATE run_locks SET expires_at = '2000-01-01 00:00:00'"))
    tokens = acquire(engine, ["destination:d"], "new", dt.timedelta(minutes=5))
    assert tokens == {"destination:d": 1}
    with engine.begin() as conn:
        assert recover_in_flight(conn, 8, ["d"], {"d": 1}) == 1
        assert conn.execute(text("SELECT status FROM diffs")).scalar_one() == "superseded"
    release(engine, ["destination:d"], "new")
    command.downgrade(cfg, "0007")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 1
        columns = {c["name"] for c in inspect(conn).get_columns("run_locks")}
        assert "token" not in columns and "run_lock_tokens" not in inspect(conn).get_table_names()
    engine.dispose()


def test_the_head_known_without_alembic_is_alembics_head() -> None:
    """``migrate.HEAD`` lets a run on an up-to-date database skip importing Alembic: a new migration updates it."""
    assert ScriptDirectory(str(migrations_dir())).get_current_head() == HEAD, (
        "a migration was added: set HEAD in audience_sync/store/migrate.py to its revision"
    )


def test_a_database_at_head_is_checked_without_importing_alembic(state_url: str) -> None:
    engine = create_engine(state_url)
    upgrade(engine)
    engine.dispose()
    code = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from audience_sync.store.migrate import upgrade\n"
        f"print(upgrade(create_engine({state_url!r})), 'alembic' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == [HEAD, "False"]


@pytest.mark.parametrize(
    "rows", [["0001"], [HEAD, "0001"], []], ids=["an older revision", "two revisions", "an empty version table"]
)
def test_a_version_table_not_exactly_at_head_goes_through_alembic(state_url: str, rows: list[str]) -> None:
    """Only the one answer Alembic would also accept as current skips it; every other state is Alembic's to judge."""
    engine = create_engine(state_url)
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        for row in rows:
            conn.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": row})
    if len(rows) > 1:
        with pytest.raises(Exception, match="more than one head"):  # as before: Alembic refuses
            upgrade(engine)
    elif rows:
        assert upgrade(engine) == HEAD
        assert current_revision(engine) == HEAD
    else:  # no revision but the tables of 0001: Alembic starts from the beginning and meets them
        with pytest.raises(StoreError, match="migrating the state database"):
            upgrade(engine)
    engine.dispose()


def test_a_database_from_a_newer_version_is_refused(state_url: str) -> None:
    engine = create_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="schema revision '9999', which this version of audience-sync does not know"):
        upgrade(engine)
    engine.dispose()


def test_unreachable_state_database_is_a_clear_error() -> None:
    engine = create_engine("postgresql+psycopg://nobody:secretpw@127.0.0.1:1/none")
    with pytest.raises(StoreError, match=r"opening the state database .* failed") as err:
        upgrade(engine)
    assert "secretpw" not in str(err.value)


def test_second_holder_is_refused_until_release(state_url: str) -> None:
    engine = create_engine(state_url)
    upgrade(engine)
    acquire(engine, ["destination:a", "destination:b"], "first", dt.timedelta(minutes=5))
    with pytest.raises(LockHeld, match="another run holds the lock for destination:b"):
        acquire(engine, ["destination:b", "destination:c"], "second", dt.timedelta(minutes=5))
    # all-or-nothing: the refused holder did not keep destination:c
    acquire(engine, ["destination:c"], "third", dt.timedelta(minutes=5))
    release(engine, ["destination:a", "destination:b"], "first")
    acquire(engine, ["destination:b"], "second", dt.timedelta(minutes=5))
    engine.dispose()


def test_expired_lease_and_dead_holder_are_taken_over(state_url: str) -> None:
    engine = create_engine(state_url)
    upgrade(engine)
    acquire(engine, ["destination:a"], "stale", dt.timedelta(seconds=-1))  # already expired
    acquire(engine, ["destination:a"], "fresh", dt.timedelta(minutes=5))

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE run_locks SET pid = :pid, holder = 'dead' WHERE name = 'destination:a'"),
            {"pid": int(dead.stdout)},
        )
    acquire(engine, ["destination:a"], "after-dead", dt.timedelta(minutes=5))
    engine.dispose()


def test_held_lock_renews_its_lease_and_releases(state_url: str) -> None:
    import time

    engine = create_engine(state_url)
    upgrade(engine)

    def lease() -> tuple[dt.datetime, int | None]:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT expires_at, run_id FROM run_locks")).one()
        return row.expires_at, row.run_id

    with run_lock(engine, ["x"], lease=dt.timedelta(seconds=3)) as held:
        held.run_id = 42
        first, _ = lease()
        # wait for the heartbeat (every second for a 3 s lease) to have renewed the lease and noted the run: the
        # test acts on the renewal it sees, so a slow heartbeat on a loaded machine makes it wait, not fail
        deadline = time.monotonic() + 120
        while (current := lease())[1] is None or current[0] == first:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.05)
        assert current[1] == 42
        with pytest.raises(LockHeld):
            acquire(engine, ["destination:x"], "other", dt.timedelta(minutes=5))
    acquire(engine, ["destination:x"], "other", dt.timedelta(minutes=5))
    engine.dispose()


@pytest.mark.slow
def test_postgres_lock_is_released_by_the_server_when_its_holder_dies(pg_url: str) -> None:
    import os
    import signal
    import time

    from audience_sync.store.lock import HeldLock

    engine = create_engine(pg_url)
    upgrade(engine)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, datetime as dt; from sqlalchemy import create_engine; "
            "from audience_sync.store.lock import HeldLock; "
            "HeldLock(create_engine(sys.argv[1]), ['destination:d'], dt.timedelta(hours=1)).start(); "
            "print('held', flush=True); sys.stdin.read()",  # holds until killed (or this test is gone)
            pg_url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with engine.begin() as conn:  # as if it ran on another host: only the server can tell it is gone
            conn.execute(text("UPDATE run_locks SET host = 'elsewhere'"))
        with pytest.raises(LockHeld, match=r"pid .* on elsewhere"):
            HeldLock(engine, ["destination:d"], dt.timedelta(minutes=5)).start()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 120  # generous: a loaded machine is slow, not wrong
    while True:  # the server notices the dead connection within moments
        try:
            lock = HeldLock(engine, ["destination:d"], dt.timedelta(minutes=5)).start()
            break
        except LockHeld:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    lock.stop()
    engine.dispose()


@pytest.mark.postgres
def test_state_moves_from_sqlite_to_postgresql_and_runs_continue(
    tmp_path: Path, pg_url: str, warehouse: Warehouse
) -> None:
    from audience_sync.commands import copy_state_database
    from audience_sync.config import parse_config
    from audience_sync.run.sync import run_sync

    harness = Harness(tmp_path, f"sqlite:///{tmp_path / 'old.db'}", warehouse)
    warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    warehouse.set_trait("Score", {"u1": ("a@x.io", 1)})
    body = harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score")
    old = harness.config(body)
    run_sync(old)
    run_sync(old)
    harness.new_calls()

    copied = copy_state_database(old, pg_url)
    assert copied["snapshot"] == 3 and copied["sync_runs"] == 2 and copied["diffs"] == 3
    with pytest.raises(StoreError, match="already holds data in"):
        copy_state_database(old, pg_url)  # never merges into a used database

    new = parse_config(
        f'[state]\nurl = "{pg_url}"\n[source]\nurl = "{warehouse.url}"\n' + body, path=str(tmp_path / "new.toml")
    )
    warehouse.set_members("VIP", {"u1": "a@x.io", "u3": "c@x.io"})
    result = run_sync(new)
    assert result.run_id == 3  # ids continue after the copied runs
    assert harness.sent(harness.new_calls()) == {("u2", "vip"): False, ("u3", "vip"): True}  # only the changes
