"""Message ids are unique per install and deterministic within one.

Segment drops a message whose ``messageId`` it has seen in the last day or so, across sources and workspaces, so
two installs (a staging and a production one, or a state database rebuilt from scratch) syncing the same source
must never make the same id, while one install must make the same id again when it re-sends a change. The fake
Segment deduplicates by ``messageId`` as Segment does.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from audience_sync.commands import copy_state_database
from audience_sync.config import Config, parse_config
from audience_sync.errors import StoreError
from audience_sync.run.sync import run_sync
from audience_sync.store.migrate import alembic_config, upgrade
from tests.fakes.segment import FakeSegment
from tests.harness import Harness, Warehouse
from tests.processes import Cli

ENV = {"SEGMENT_WRITE_KEY": "segment-write-key"}


@pytest.fixture
def other_state_url(request: pytest.FixtureRequest, state_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, separate state database on the same backend as ``state_url``."""
    if state_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other-state.db'}"
        return
    server = str(request.getfixturevalue("pg_server"))
    schema = f"as_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def body(segment: FakeSegment, **options: Any) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in options.items())
    return (
        f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
        f'endpoint = "{segment.url}"\n{extra}' + Harness.audience("VIP") + Harness.trait("Score")
    )


def config(state_url: str, warehouse: Warehouse, text_: str, tmp_path: Path) -> Config:
    toml = f'[state]\nurl = "{state_url}"\n[source]\nurl = "{warehouse.url}"\n' + text_
    return parse_config(toml, path=str(tmp_path / "test.toml"), environ=ENV)


def message_ids(state_url: str, run_id: int | None = None) -> dict[tuple[str, str], str]:
    """``{(user_id, computation_key): message_id}`` of a run's changes (default: every change)."""
    engine = create_engine(state_url)
    where = "" if run_id is None else f" WHERE run_id = {run_id}"
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT user_id, computation_key, message_id FROM diffs{where}")).all()
    engine.dispose()
    return {(u, k): m for u, k, m in rows}


def install_id(state_url: str) -> str:
    engine = create_engine(state_url)
    with engine.connect() as conn:
        value = str(conn.execute(text("SELECT install_id FROM install")).scalar_one())
    engine.dispose()
    return value


def fill(warehouse: Warehouse, n: int) -> None:
    warehouse.set_members("VIP", {f"u{i:03d}": f"{i}@x.io" for i in range(n)})
    warehouse.set_trait("Score", {f"u{i:03d}": (f"{i}@x.io", i) for i in range(0, n, 2)})


def test_two_installs_syncing_one_source_make_disjoint_ids_and_segment_takes_both(
    tmp_path: Path, state_url: str, other_state_url: str, warehouse: Warehouse, segment: FakeSegment
) -> None:
    fill(warehouse, 30)
    staging = config(state_url, warehouse, body(segment), tmp_path)
    production = config(other_state_url, warehouse, body(segment), tmp_path)
    assert run_sync(staging).counts["sent"] == 45
    assert run_sync(production).counts["sent"] == 45
    assert install_id(state_url) != install_id(other_state_url)
    ours, theirs = message_ids(state_url), message_ids(other_state_url)
    assert set(ours) == set(theirs) and len(set(ours.values())) == 45
    assert not set(ours.values()) & set(theirs.values())
    # Segment kept both installs' whole first syncs: nothing was dropped as a duplicate
    assert segment.duplicates == 0 and len(segment.messages) == 90
    assert all(len(m) < 100 for m in segment.messages)

    # resyncs: each install's are new ids of its own, again disjoint from the other install's
    first_ids = set(segment.messages)
    ours_resync = run_sync(staging, mode="resync")
    theirs_resync = run_sync(production, mode="resync")
    resync_ours = set(message_ids(state_url, ours_resync.run_id).values())
    resync_theirs = set(message_ids(other_state_url, theirs_resync.run_id).values())
    assert len(resync_ours) == len(resync_theirs) == 45
    assert not resync_ours & resync_theirs and not (resync_ours | resync_theirs) & first_ids
    assert segment.duplicates == 0 and len(segment.messages) == 180


def test_a_database_rebuilt_from_scratch_is_a_new_install(
    tmp_path: Path, state_url: str, warehouse: Warehouse, segment: FakeSegment
) -> None:
    """The state database is lost and created again: its first sync must not be dropped as the old one's."""
    fill(warehouse, 10)
    cfg = config(state_url, warehouse, body(segment), tmp_path)
    run_sync(cfg)
    before = install_id(state_url)
    engine = create_engine(state_url)
    command.downgrade(alembic_config(engine), "base")  # every table dropped: the database is empty again
    engine.dispose()
    assert run_sync(cfg).counts["sent"] == 15
    assert install_id(state_url) != before
    assert segment.duplicates == 0 and len(segment.messages) == 30


@pytest.mark.postgres
def test_copying_the_state_keeps_the_install_and_its_ids(
    tmp_path: Path, pg_url: str, warehouse: Warehouse, segment: FakeSegment
) -> None:
    """``db copy`` moves an install: the target takes the source's install id, so a change re-sent after the
    move gets the id it had before and dedupes at Segment."""
    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    fill(warehouse, 10)
    old = config(old_url, warehouse, body(segment, max_retries=0), tmp_path)
    segment.fail_next(1, 503, apply_first=True)  # Segment took the batch, the answer was lost: all pending
    assert run_sync(old).exit_code == 3
    pending = message_ids(old_url)
    copy_state_database(old, pg_url)
    assert install_id(pg_url) == install_id(old_url)
    new = config(pg_url, warehouse, body(segment, max_retries=0), tmp_path)
    result = run_sync(new)
    assert result.exit_code == 0 and result.counts["sent"] == 15
    assert message_ids(pg_url, result.run_id) == pending  # recomputed after the move: the same ids
    assert segment.duplicates == 15 and len(segment.messages) == 15


@pytest.mark.parametrize("rows", [0, 2])
def test_a_broken_install_table_is_refused(
    tmp_path: Path, state_url: str, warehouse: Warehouse, segment: FakeSegment, rows: int
) -> None:
    """No install id (or two) is a store error before any change is written: an id made up on the spot would
    not dedupe with the ones this install made before."""
    fill(warehouse, 4)
    cfg = config(state_url, warehouse, body(segment), tmp_path)
    engine = create_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM install"))
        for i in range(rows):
            conn.execute(text(f"INSERT INTO install VALUES ('id{i}', CURRENT_TIMESTAMP)"))
    with pytest.raises(StoreError, match=f"install table holds {rows} rows instead of one"):
        run_sync(cfg)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM sync_runs")).scalars().all() == ["failed"]
        assert conn.execute(text("SELECT count(*) FROM diffs")).scalar_one() == 0
    engine.dispose()
    assert segment.requests == []


class GatedSegment(FakeSegment):
    """A Segment that holds the next request until its gate opens: the chunk that reached it is in flight.

    The request is held inside the fake's lock, so every later request is taken only after it was accepted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate: threading.Event | None = None
        self.arrived = threading.Event()

    def hold_next(self) -> threading.Event:
        self.arrived.clear()
        self.gate = threading.Event()
        return self.gate

    def _check(self, headers: Any, raw: bytes) -> tuple[int, str] | list[dict[str, Any]]:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.arrived.set()
            gate.wait(timeout=60)
        return super()._check(headers, raw)


def _killed_mid_chunk(path: Path, segment: GatedSegment) -> None:
    """Run the CLI (forked ready-imported, tests/processes.py) and SIGKILL it while its first chunk is at Segment,
    unanswered."""
    with Cli(["run", "--config", str(path)], cwd=path.parent, env=ENV) as cli:
        deadline = time.monotonic() + 120
        while not segment.arrived.wait(0.05):
            assert cli.proc.poll() is None, cli.stderr
            assert time.monotonic() < deadline, "the run never reached Segment"
        assert cli.kill() == -signal.SIGKILL, cli.stderr


def test_ids_repeat_within_an_install_after_a_kill_and_in_doubt_resends_stay_apart_across_installs(
    tmp_path: Path, state_url: str, other_state_url: str, warehouse: Warehouse
) -> None:
    """Two installs are each killed with their first chunk in flight. Within an install, the changes that were
    not in flight are sent again with the ids the killed run gave them; the in-flight chunk is re-sent with new
    ids (its base is the dead run), and those must differ between the two installs, whose dead runs share a
    number. Segment ends up holding every change of both installs."""
    fill(warehouse, 12)  # 18 changes; chunks of 5: one chunk in flight, the rest pending
    segment = GatedSegment().start()
    gates: list[threading.Event] = []
    try:
        resent: list[dict[tuple[str, str], str]] = []
        for i, url in enumerate((state_url, other_state_url)):
            text_ = body(segment, chunk_size=5, concurrency=1, max_retries=0)
            path = tmp_path / f"install{i}.toml"
            path.write_text(f'[state]\nurl = "{url}"\n[source]\nurl = "{warehouse.url}"\n' + text_)
            gates.append(segment.hold_next())
            _killed_mid_chunk(path, segment)
            killed = message_ids(url)
            assert len(killed) == 18
            gates[-1].set()  # Segment applies the killed run's chunk; the run never learns it
            result = run_sync(config(url, warehouse, text_, tmp_path))
            assert result.exit_code == 0
            again = message_ids(url, result.run_id)
            assert set(again) == set(killed)
            kept = {k for k in killed if again[k] == killed[k]}
            assert len(kept) == 18 - 5  # everything but the chunk in flight keeps its id
            resent.append({k: v for k, v in again.items() if k not in kept})
        assert set(resent[0]) == set(resent[1])  # the same users were in flight in both installs
        assert not set(resent[0].values()) & set(resent[1].values())
        # both installs' truth arrived whole: 2 x 18 changes, plus what each killed run had in flight
        assert len(segment.messages) == 2 * (18 + 5)
    finally:
        for gate in gates:
            gate.set()
        segment.stop()


def test_migration_gives_an_existing_database_an_install_id_and_its_owed_changes_still_deliver(
    tmp_path: Path, state_url: str, warehouse: Warehouse, segment: FakeSegment
) -> None:
    """A database at revision 0007 (before install ids) with a change still pending and a chunk left in flight by
    a dead run: after the upgrade it has an install id, and the next run delivers both, the in-flight users' current
    values included."""
    engine = create_engine(state_url)
    command.upgrade(alembic_config(engine), "0007")
    ts = "'2026-11-29 00:00:00'"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO computations (key, name, computation_class, definition_hash, first_synced_at, "
                f"updated_at) VALUES ('vip', 'VIP', 'audience', 'x', {ts}, {ts})"
            )
        )
        for run_id, status in ((1, "succeeded"), (2, "running")):
            conn.execute(
                text(
                    "INSERT INTO sync_runs (id, mode, trigger, status, started_at, destinations, computations, "
                    f"counts, host, pid) VALUES ({run_id}, 'incremental', 'cli', '{status}', {ts}, "
                    "'[\"segment\"]', '[\"vip\"]', '{}', 'h', 1)"
                )
            )
        # run 1 delivered u1 and u2; run 2 died with u3 in flight and u4 still pending, u2 leaving
        for user in ("u1", "u2"):
            conn.execute(
                text(
                    "INSERT INTO snapshot (destination, computation_key, user_id, value, email, run_id, updated_at, "
                    f"in_doubt) VALUES ('segment', 'vip', '{user}', 'true', '{user}@x.io', 1, {ts}, false)"
                )
            )
        for diff_id, user, change, value in ((10, "u2", "exited", "false"), (11, "u3", "entered", "true")):
            conn.execute(
                text(
                    "INSERT INTO diffs (id, run_id, destination, computation_key, computation_class, user_id, email, "
                    "change, new_value, status, attempts, message_id, created_at) VALUES "
                    f"({diff_id}, 2, 'segment', 'vip', 'audience', '{user}', '{user}@x.io', '{change}', '{value}', "
                    f"'pending', 0, 'as-old{diff_id}', {ts})"
                )
            )
        conn.execute(
            text(
                "INSERT INTO diffs (id, run_id, destination, computation_key, computation_class, user_id, email, "
                "change, new_value, status, attempts, message_id, created_at) VALUES "
                f"(12, 2, 'segment', 'vip', 'audience', 'u4', 'u4@x.io', 'entered', 'true', 'pending', 0, "
                f"'as-old12', {ts})"
            )
        )
        conn.execute(
            text(
                "INSERT INTO delivery_in_flight (run_id, destination, first_user_id, first_diff_id, last_user_id, "
                f"last_diff_id, started_at) VALUES (2, 'segment', 'u2', 10, 'u3', 11, {ts})"
            )
        )
        if conn.dialect.name == "postgresql":  # rows given their ids: the sequences continue after them
            for table in ("sync_runs", "diffs"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"))
    upgrade(engine)
    with engine.connect() as conn:
        installs = conn.execute(text("SELECT install_id FROM install")).scalars().all()
    engine.dispose()
    assert len(installs) == 1 and len(installs[0]) == 32

    warehouse.set_members("VIP", {"u1": "u1@x.io", "u3": "u3@x.io", "u4": "u4@x.io"})  # u2 left
    cfg = config(state_url, warehouse, body(segment).split("[[computed_traits]]")[0], tmp_path)
    result = run_sync(cfg)
    assert result.exit_code == 0
    assert {u: p["vip"] for u, p in segment.profiles.items()} == {"u2": False, "u3": True, "u4": True}
    assert all(not m.startswith("as-old") for m in segment.messages)  # recomputed, with the install's ids
    assert install_id(state_url) == installs[0]
