"""Identifiers: users a destination cannot take, and emails that change or appear; on SQLite and PostgreSQL,
against the fake Gist and Segment."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text

from audience_sync.commands import list_diffs, list_runs
from audience_sync.config import Config
from audience_sync.ops.attempts import Attempt
from audience_sync.ops.postrun import after_run
from audience_sync.run.sync import RunResult
from audience_sync.store.migrate import alembic_config, upgrade
from tests.destinations.test_segment import ENV as SEGMENT_ENV
from tests.destinations.test_segment import segment_destination
from tests.fakes.gist import FakeGist
from tests.fakes.segment import FakeSegment
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


def test_a_new_user_gist_cannot_take_is_recorded_beside_those_already_skipped(harness: Harness, gist: FakeGist) -> None:
    """Each user's own latest row decides whether a skip repeats, on every key: a newcomer without an email is
    recorded (and counted) although other users' latest rows are the same skip."""
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None})
    harness.warehouse.set_members("Fans", {"u1": "a@x.io", "u2": None})
    config = gist_config(harness, gist, harness.audience("VIP") + harness.audience("Fans"))
    assert harness.run(config).counts["skipped"] == 2
    assert harness.run(config).counts["skipped"] == 0

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None, "u9": None})
    harness.warehouse.set_members("Fans", {"u1": "a@x.io", "u2": None, "u9": None})
    third = harness.run(config)
    assert third.counts["skipped"] == 2 and third.counts["entered"] == 0
    _, rows = list_diffs(config, run_id=third.run_id)
    assert sorted((r["user_id"], r["computation_key"], r["status"]) for r in rows) == [
        ("u9", "fans", "skipped"),
        ("u9", "vip", "skipped"),
    ]
    assert harness.run(config).counts["skipped"] == 0


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


def contact_calls(gist: FakeGist) -> list[dict[str, object]]:
    calls = [json.loads(r["body"]) for r in gist.requests if r["path"] == "/contacts"]
    gist.requests.clear()
    return calls


def test_a_changed_email_reaches_gist_in_one_call_and_exits_follow_it(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5), "u2": ("b@x.io", 7)})
    config = gist_config(harness, gist, harness.audience("VIP") + harness.trait("Score"))
    harness.run(config)
    contact_calls(gist)

    # u1's email changes, nothing else: their current values are sent with it, in one call
    harness.warehouse.set_members("VIP", {"u1": "new@x.io", "u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("new@x.io", 5), "u2": ("b@x.io", 7)})
    result = harness.run(config)
    assert contact_calls(gist) == [
        {"user_id": "u1", "email": "new@x.io", "custom_properties": {"score": 5, "vip": True}}
    ]
    assert (result.counts["identifiers"], result.counts["entered"], result.counts["changed"]) == (2, 0, 0)
    assert result.counts["destinations"]["gist"]["identifiers"] == 2
    _, rows = list_diffs(config, run_id=result.run_id)
    assert sorted((r["user_id"], r["computation_key"], r["change"], r["email"], r["status"]) for r in rows) == [
        ("u1", "score", "identifiers", "new@x.io", "sent"),
        ("u1", "vip", "identifiers", "new@x.io", "sent"),
    ]
    assert harness.run(config).counts["identifiers"] == 0  # acknowledged: the snapshot holds the new email

    # u1 leaves VIP as their email changes again: the exit goes to the latest email, with the trait, in one call
    harness.warehouse.set_members("VIP", {"u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("last@x.io", 5), "u2": ("b@x.io", 7)})
    result = harness.run(config)
    assert contact_calls(gist) == [
        {"user_id": "u1", "email": "last@x.io", "custom_properties": {"score": 5, "vip": False}}
    ]
    assert (result.counts["exited"], result.counts["identifiers"]) == (1, 1)

    # u1 leaves every source: the trait's null goes to the email Gist last received
    harness.warehouse.set_trait("Score", {"u2": ("b@x.io", 7)})
    harness.run(config)
    assert contact_calls(gist) == [{"user_id": "u1", "email": "last@x.io", "custom_properties": {"score": None}}]


def test_an_email_that_appears_is_identified_at_segment(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None})
    config = harness.config(segment_destination(segment) + harness.audience("VIP"), environ=SEGMENT_ENV)
    harness.run(config)
    assert segment.profiles["u2"] == {"vip": True}
    harness.run(config)
    assert len(segment.messages) == 2  # an unchanged user without an email is not sent again

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    result = harness.run(config)
    assert segment.profiles["u2"] == {"vip": True, "email": "b@x.io"}
    assert (result.counts["identifiers"], result.counts["entered"], result.counts["sent"]) == (1, 0, 1)
    # an email that disappears from the source is no change: the destination keeps the one it has
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None})
    assert harness.run(config).counts["identifiers"] == 0
    assert len(segment.messages) == 3


def test_migration_0012_counts_the_identifiers_changes_of_existing_size_rows(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    harness.run(config)
    harness.warehouse.set_members("VIP", {"u1": "b@x.io", "u2": "c@x.io"})
    changed = harness.run(config)
    engine = create_engine(harness.state_url)
    query = text("SELECT run_id, identifiers FROM size_history ORDER BY run_id")
    with engine.connect() as conn:
        live = conn.execute(query).all()
    assert [tuple(r) for r in live] == [(changed.run_id - 1, 0), (changed.run_id, 2)]
    command.downgrade(alembic_config(engine), "0011")  # a database from before 0012, with its size rows
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM size_history")).scalar_one() == 2
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(query).all() == live
    engine.dispose()


def test_resync_of_a_user_sends_every_key_held_false_and_null_included(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 3), "u2": ("b@x.io", 4)})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score"))
    harness.run(config)
    harness.warehouse.set_members("VIP", {"u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u2": ("b@x.io", 4)})
    harness.run(config)  # u1 left both: the destination holds false and null for them
    harness.new_calls()

    # its dry run plans what the resync sends, and sends nothing
    preview = harness.run(config, mode="resync", users=["u1"], dry_run=True)
    _, planned = list_diffs(config, run_id=preview.run_id)
    assert sorted((r["user_id"], r["computation_key"], r["status"]) for r in planned) == [
        ("u1", "score", "planned"),
        ("u1", "vip", "planned"),
    ]
    assert harness.new_calls() == []

    result = harness.run(config, mode="resync", users=["u1"])
    calls = harness.new_calls()
    assert harness.sent(calls) == {("u1", "vip"): False, ("u1", "score"): None}
    assert all(c["traits"]["email"] == "a@x.io" for c in calls)
    assert (result.counts["exited"], result.counts["sent"]) == (2, 2)


def test_resync_of_an_unknown_user_is_an_error_and_sends_nothing(harness: Harness) -> None:
    import pytest

    from audience_sync.errors import ConfigError

    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    harness.run(config)
    harness.new_calls()
    with pytest.raises(ConfigError, match=r"unknown user id\(s\) 'nobody'") as caught:
        harness.run(config, mode="resync", users=["u1", "nobody"])
    assert caught.value.exit_code == 2
    assert harness.new_calls() == []
    assert list_runs(config)[0]["status"] == "failed"


def test_a_value_and_email_that_change_together_or_in_doubt_are_one_change_each(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": "c@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5), "u2": ("b@x.io", 7), "u3": ("c@x.io", 1)})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score"))
    harness.run(config)
    engine = create_engine(harness.state_url)
    with engine.begin() as conn:  # u2's last changes were in flight when their run died
        conn.execute(text("UPDATE snapshot SET in_doubt = TRUE WHERE user_id = 'u2'"))
    engine.dispose()

    # u1's score changes with their email; u2's email changes, their values do not
    harness.warehouse.set_members("VIP", {"u1": "new@x.io", "u2": "b2@x.io", "u3": "c@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("new@x.io", 6), "u2": ("b2@x.io", 7), "u3": ("c@x.io", 1)})
    result = harness.run(config)
    _, rows = list_diffs(config, run_id=result.run_id)
    assert sorted((r["user_id"], r["computation_key"], r["change"], r["email"], r["new_value"]) for r in rows) == [
        ("u1", "score", "changed", "new@x.io", 6),
        ("u1", "vip", "identifiers", "new@x.io", True),
        ("u2", "score", "changed", "b2@x.io", 7),
        ("u2", "vip", "entered", "b2@x.io", True),
    ]
    assert (result.counts["entered"], result.counts["changed"], result.counts["identifiers"]) == (1, 2, 1)
