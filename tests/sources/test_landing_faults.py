"""Landing a PostgreSQL source when things go wrong under it, through the real command line: the source's
connection terminated in the middle of its COPY, the run killed or interrupted while its COPY runs.

Each run's query waits on an advisory lock the test holds, after the probe that types its columns (a ``LIMIT 0``
reads no row): the COPY has begun and sits there until the test acts, which it does once the database shows the
COPY waiting, never after a delay.
"""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from tests.processes import Cli
from tests.sources.test_pushdown import _pg_exec, pg_schema_url

assert pg_schema_url  # a fixture of these tests too

pytestmark = pytest.mark.postgres

USERS = 500


@dataclass
class BlockedSource:
    """A PostgreSQL source whose query waits on the advisory lock ``key`` while ``admin`` holds it."""

    url: str
    app: str
    key: int
    admin: Connection
    copy: str = ""

    def query(self) -> str:
        return f"SELECT user_id, email, value FROM src WHERE pg_advisory_xact_lock_shared({self.key}) IS NOT NULL"

    def copy_waiting(self, timeout: float = 60.0) -> int:
        """The pid of the source backend whose COPY waits on the lock, once there is one (its statement kept in
        :attr:`copy`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.admin.execute(
                text(
                    "SELECT pid, query FROM pg_stat_activity WHERE application_name = :app AND query LIKE 'COPY %' "
                    "AND wait_event_type = 'Lock'"
                ),
                {"app": self.app},
            ).first()
            if row is not None:
                self.copy = str(row.query)
                return int(row.pid)
            time.sleep(0.02)  # polling the database for the state it is in, not waiting for time to pass
        raise AssertionError("no COPY of the source waited on the lock")

    def release(self) -> None:
        self.admin.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


@pytest.fixture
def blocked(pg_schema_url: Any, pg_server: str, tmp_path: Path) -> Iterator[BlockedSource]:
    url = pg_schema_url(tmp_path)
    _pg_exec(
        url,
        "CREATE TABLE src AS SELECT 'u' || g AS user_id, 'u' || g || '@x.io' AS email, g::bigint AS value "
        f"FROM generate_series(1, {USERS}) AS g",
    )
    app = f"as_landing_{uuid.uuid4().hex[:10]}"
    url = make_url(url).update_query_dict({"application_name": app}).render_as_string(hide_password=False)
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        key = random.randrange(1, 1 << 40)
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield BlockedSource(url, app, key, conn)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
    admin.dispose()


def _config(tmp: Path, state: str, source: BlockedSource) -> Path:
    path = tmp / "landing.toml"
    path.write_text(
        f"[state]\nurl = {json.dumps(state)}\n[source]\nurl = {json.dumps(source.url)}\n"
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp / "out.jsonl"}"\n'
        f'[[computed_traits]]\nname = "Score"\nsql = {json.dumps(source.query())}\n'
    )
    return path


def _run(config: Path) -> Cli:
    return Cli(["run", "--json", "--log-level", "info", "--config", str(config)], cwd=config.parent)


def _state_url(kind: str, tmp: Path, pg_schema_url: Any) -> str:
    return f"sqlite:///{tmp / 'state.db'}" if kind == "sqlite" else str(pg_schema_url(tmp))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_source_connection_terminated_mid_copy_is_streamed_without_a_traceback(
    blocked: BlockedSource, pg_schema_url: Any, tmp_path: Path, kind: str
) -> None:
    """The source's backend is terminated while its COPY runs: the landing gives up, the computation is streamed on
    a new connection, and the dead one is dropped, not handed back to the pool (whose reset would fail on it and
    print a traceback)."""
    config = _config(tmp_path, _state_url(kind, tmp_path, pg_schema_url), blocked)
    with _run(config) as cli:
        pid = blocked.copy_waiting()
        assert blocked.admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        cli.wait_for_line(r"score: landing failed \(terminating connection due to administrator command\)")
        blocked.release()
        assert cli.wait() == 0, cli.stderr
    assert json.loads(cli.stdout)["counts"]["sources"]["score"]["members"] == USERS
    assert "Traceback" not in cli.stderr, cli.stderr


def _state(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                "runs": [tuple(r) for r in conn.execute(text("SELECT id, status, error FROM sync_runs ORDER BY id"))],
                "staging": conn.execute(text("SELECT count(*) FROM staging")).scalar_one(),
                "diffs": conn.execute(text("SELECT count(*) FROM diffs")).scalar_one(),
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigterm_while_a_source_is_landed_cancels_its_query_and_stores_no_diff(
    blocked: BlockedSource, pg_schema_url: Any, tmp_path: Path, kind: str
) -> None:
    """The first SIGTERM asks for a clean stop: a landing waiting on its source (or moving rows for an hour) does not
    go on until its query ends. Its query is cancelled, nothing is staged nor any diff stored (exit 3, as when
    streaming is stopped between chunks), and the lock the source query waits on is never released meanwhile."""
    url = _state_url(kind, tmp_path, pg_schema_url)
    config = _config(tmp_path, url, blocked)
    with _run(config) as cli:
        blocked.copy_waiting()
        cli.signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 3, cli.stderr
    # a PostgreSQL state: the COPY stopped is the source's normalised one, piped straight into staging
    assert ("ELSE 1 END, 'score', n.u, n.e, n.v FROM (SELECT" in blocked.copy) == (kind == "postgres"), blocked.copy
    assert "asked to stop (SIGTERM/SIGINT) while reading score; nothing was sent and no diff stored" in cli.stderr
    assert "Traceback" not in cli.stderr, cli.stderr
    state = _state(url)
    assert state["staging"] == state["diffs"] == 0
    assert [status for _, status, _ in state["runs"]] == ["failed"]
    blocked.release()
    with _run(config) as cli:
        assert cli.wait() == 0, cli.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_run_killed_while_a_source_is_landed_is_recovered_by_the_next(
    blocked: BlockedSource, pg_schema_url: Any, tmp_path: Path, kind: str
) -> None:
    """SIGKILL in the middle of the COPY: the landed table and the uncommitted staging die with the process; the
    next run takes the lock over, calls the killed run abandoned and stages everything."""
    url = _state_url(kind, tmp_path, pg_schema_url)
    config = _config(tmp_path, url, blocked)
    with _run(config) as cli:
        blocked.copy_waiting()
        assert cli.kill() == -signal.SIGKILL
    blocked.release()
    with _run(config) as cli:
        assert cli.wait() == 0, cli.stderr
    assert json.loads(cli.stdout)["counts"]["sources"]["score"]["members"] == USERS
    state = _state(url)
    assert state["runs"] == [(1, "failed", "abandoned: its process stopped before finishing"), (2, "succeeded", None)]
    assert state["staging"] == 0 and state["diffs"] == USERS
