"""Identifiers: users a destination cannot take, and emails that change or appear; on SQLite and PostgreSQL,
against the fake Gist and Segment."""

from __future__ import annotations

from pathlib import Path

from audience_sync.commands import list_diffs, list_runs
from audience_sync.config import Config
from audience_sync.ops.attempts import Attempt
from audience_sync.ops.postrun import after_run
from audience_sync.run.sync import RunResult
from tests.fakes.gist import FakeGist
from tests.harness import Harness
from tests.ops.test_operations import metric, samples

KEY_ENV = {"GIST_API_KEY": "gist-test-key"}


def gist_config(harness: Harness, gist: FakeGist, body: str) -> Config:
    dest = f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
    return harness.config(dest + body, environ=KEY_ENV)


def run_with_metrics(harness: Harness, config: Config, path: Path) -> RunResult:
    result = harness.run(config)
    scope = (tuple(d.name for d in config.destinations), tuple(c.key for c in config.computations))
    after_run(config, Attempt(*scope, result), metrics_file=path)
    return result


def test_a_user_gist_cannot_take_is_skipped_once_not_entered_every_run(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None, "u3": None})
    config = gist_config(harness, gist, harness.audience("VIP"))
    metrics = harness.tmp_path / "metrics.prom"

    first = run_with_metrics(harness, config, metrics)
    assert (first.counts["entered"], first.counts["sent"], first.counts["skipped"]) == (1, 1, 2)
    assert first.counts["destinations"]["gist"]["entered"] == 1
    assert first.counts["computations"]["vip"]["skipped"] == 2
    values = samples(metrics)
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="entered") == 1
    assert metric(values, "last_run_changes", destination="gist", computation="vip", kind="skipped") == 2
    assert set(gist.contacts) == {"u1"}

    # nothing changed: nothing entered, no new row; the skipped users are evaluated again all the same
    second = run_with_metrics(harness, config, metrics)
    assert (second.counts["entered"], second.counts["skipped"], second.status) == (0, 0, "succeeded")
    assert metric(samples(metrics), "last_run_changes", destination="gist", computation="vip", kind="entered") == 0
    _, rows = list_diffs(config, run_id=second.run_id)
    assert rows == []
    runs = list_runs(config)
    assert runs[0]["run_id"] == second.run_id and runs[0]["counts"]["entered"] == 0

    # u2 gains an email: entered and sent; u3 loses nothing and stays recorded once
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": None})
    third = harness.run(config)
    assert (third.counts["entered"], third.counts["sent"], third.counts["skipped"]) == (1, 1, 0)
    assert gist.contacts["u2"]["email"] == "b@x.io"
    _, rows = list_diffs(config, run_id=third.run_id)
    assert [(r["user_id"], r["change"], r["status"]) for r in rows] == [("u2", "entered", "sent")]
    _, rows = list_diffs(config, run_id=first.run_id, status="skipped")
    assert sorted((r["user_id"], r["change"]) for r in rows) == [("u2", "entered"), ("u3", "entered")]


def test_a_skipped_user_whose_value_changes_is_recorded_again(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_trait("Score", {"u1": (None, 1)})
    config = gist_config(harness, gist, harness.trait("Score"))
    assert harness.run(config).counts["skipped"] == 1
    assert harness.run(config).counts["skipped"] == 0
    harness.warehouse.set_trait("Score", {"u1": (None, 2)})
    changed = harness.run(config)
    assert (changed.counts["skipped"], changed.counts["entered"]) == (1, 0)
    # a dry run in between does not count as the user's latest state
    harness.run(config, dry_run=True)
    assert harness.run(config).counts["skipped"] == 0
