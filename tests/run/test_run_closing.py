"""No run is left ``running``: whatever escapes a run closes its row as failed with the error (secrets masked), and
a run that vanished (SIGKILL) is closed by the next one with counts of what it had delivered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from audience_sync.destinations.gist import GistContacts
from audience_sync.model import Change, Outcome
from tests.fakes.gist import FakeGist
from tests.harness import Harness

ENV = {"GIST_API_KEY": "gist-test-key"}
USERS = ("u1", "u2", "u3", "u4", "u5")


def body(gist: FakeGist) -> str:
    """Five VIPs to a fake Gist, two changes per chunk, one request at a time."""
    return (
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        f"concurrency = 1\nchunk_size = 2\n" + Harness.audience("VIP")
    )


def run_row(state_url: str, run_id: int | None = None) -> Any:
    engine = create_engine(state_url)
    with engine.connect() as conn:
        run_id = run_id or conn.execute(text("SELECT min(id) FROM sync_runs")).scalar_one()
        row = conn.execute(text("SELECT status, error, counts FROM sync_runs WHERE id = :id"), {"id": run_id}).one()
        running = conn.execute(text("SELECT count(*) FROM sync_runs WHERE status = 'running'")).scalar_one()
    engine.dispose()
    assert running == 0
    counts = json.loads(row.counts) if isinstance(row.counts, str) else row.counts
    return SimpleNamespace(status=row.status, error=row.error, counts=counts)


def test_an_unexpected_error_mid_delivery_closes_the_run_as_failed_with_its_counts(
    harness: Harness, gist: FakeGist, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in USERS})
    config = harness.config(body(gist), environ=ENV)
    real = GistContacts.deliver
    chunks: list[int] = []

    def deliver(self: GistContacts, changes: Sequence[Change]) -> dict[int, Outcome]:
        """The first chunk for real; then a bug of ours, whose message happens to carry the API key."""
        chunks.append(len(changes))
        if len(chunks) == 2:
            raise RuntimeError(f"adapter bug while holding {self.config.api_key.get_secret_value()}")
        return real(self, changes)

    monkeypatch.setattr(GistContacts, "deliver", deliver)
    with pytest.raises(RuntimeError):
        harness.run(config)
    row = run_row(harness.state_url)
    assert row.status == "failed"
    assert row.error == "RuntimeError: adapter bug while holding ***"
    assert row.counts["sent"] == 2 and row.counts["pending"] == 3 and row.counts["entered"] == 5
    assert len(gist.contacts) == 2

    monkeypatch.undo()
    result = harness.run(config)  # the chunk that was in flight is in doubt: its users get their value again
    assert result.status == "succeeded" and result.counts["sent"] == 3
    assert {u for u, c in gist.contacts.items() if c["custom_properties"].get("vip") is True} == set(USERS)


def test_an_abandoned_run_counts_what_it_had_delivered(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {u: f"{u}@x.io" for u in USERS})
    path = harness.config_file(body(gist))
    # the first request of the second chunk: by then the first chunk is recorded (in the transaction that noted
    # the second one in flight, before it went out)
    second_chunk = gist.trap(lambda path, body: body.get("user_id") == "u3", hold=True, times=1)
    killed = subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    try:
        second_chunk.wait()
        killed.kill()
        killed.wait(120)
    finally:
        gist.release_all()
    result = harness.run(harness.config(body(gist), environ=ENV))
    assert result.status == "succeeded"
    row = run_row(harness.state_url, result.run_id - 1)
    assert row.status == "failed" and row.error.startswith("abandoned")
    assert row.counts["sent"] == 2 and row.counts["pending"] == 3
    assert row.counts["destinations"]["gist"]["sent"] == 2
