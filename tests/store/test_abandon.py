"""A run that takes a lock over marks the runs it finds still ``running`` as abandoned, but never overwrites the
account a run gave of its own end in the meantime (it noticed its lost lock and closed its row itself)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from audience_sync.store import runs
from audience_sync.store.engine import create_state_engine
from audience_sync.store.migrate import upgrade

OWN = "run 1 lost the lock for destination 'gist': its PostgreSQL session ended"


@pytest.mark.postgres
def test_a_row_closed_while_the_successor_waits_for_it_keeps_its_own_reason(pg_url: str) -> None:
    """A closes its row (the update holds the row); B selects it as running, then waits for A's row lock in its
    update; A commits. B's update must find the row no longer running: A's reason stays, B reports nothing."""
    engine = create_state_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        run_id = runs.open_run(conn, mode="incremental", trigger="cli", destinations=["gist"], computations=["vip"])
    a = engine.connect()
    a.begin()
    a.execute(text("UPDATE sync_runs SET status = 'failed', error = :e WHERE id = :id"), {"e": OWN, "id": run_id})
    abandoned: list[list[int]] = []
    pids: list[int] = []

    def successor() -> None:
        with engine.begin() as b:
            pids.append(int(b.execute(text("SELECT pg_backend_pid()")).scalar_one()))
            abandoned.append(runs.abandon_stale_runs(b, ["gist"], reason="abandoned: its process stopped"))

    thread = threading.Thread(target=successor)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        with engine.connect() as watch:  # until B waits for the row A holds
            while (
                not pids
                or not watch.execute(
                    text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"), {"pid": pids[0]}
                ).scalar_one()
            ):
                assert thread.is_alive() and time.monotonic() < deadline, "the successor never waited for the row"
                time.sleep(0.01)
        a.commit()
    finally:
        a.close()
        thread.join(60)
    with engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM sync_runs WHERE id = :id"), {"id": run_id}).one()
    engine.dispose()
    assert (status, error) == ("failed", OWN)
    assert abandoned == [[]]


def test_a_run_still_running_is_abandoned(state_url: str) -> None:
    engine = create_state_engine(state_url)
    upgrade(engine)
    with engine.begin() as conn:
        run_id = runs.open_run(conn, mode="incremental", trigger="cli", destinations=["gist"], computations=["vip"])
        other = runs.open_run(conn, mode="incremental", trigger="cli", destinations=["hook"], computations=["vip"])
    with engine.begin() as conn:
        assert runs.abandon_stale_runs(conn, ["gist"], reason="abandoned: gone") == [run_id]
        rows = {int(i): str(s) for i, s in conn.execute(text("SELECT id, status FROM sync_runs"))}
    engine.dispose()
    assert rows == {run_id: "failed", other: "running"}
