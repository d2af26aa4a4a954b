"""What is sent, to whom, and when: the sync semantics end to end, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, func, select

from audience_sync.commands import list_diffs, list_runs
from audience_sync.errors import KeyCollisionError, SourceError
from audience_sync.store.schema import DiffRow, SnapshotRow, StagingRow, table_of
from tests.harness import Harness


def test_initial_sync_sends_every_member_then_nothing(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": None})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))

    first = harness.run(config)
    assert first.status == "succeeded" and first.exit_code == 0
    assert harness.sent(harness.new_calls()) == {("u1", "vip"): True, ("u2", "vip"): True, ("u3", "vip"): True}
    assert (first.counts["entered"], first.counts["sent"]) == (3, 3)

    second = harness.run(config)
    assert harness.new_calls() == []
    assert second.counts["entered"] == second.counts["sent"] == 0
    assert second.exit_code == 0


def test_churn_sends_exactly_the_changed_users(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": "c@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    harness.run(config)
    harness.new_calls()

    harness.warehouse.set_members("VIP", {"u2": "b@x.io", "u3": "c@x.io", "u4": "d@x.io"})
    result = harness.run(config)
    calls = harness.new_calls()
    assert harness.sent(calls) == {("u1", "vip"): False, ("u4", "vip"): True}
    assert (result.counts["entered"], result.counts["exited"], result.counts["changed"]) == (1, 1, 0)
    exit_call = next(c for c in calls if c["userId"] == "u1")
    assert exit_call["traits"]["email"] == "a@x.io"  # the exit goes to the identifiers last sent
    assert exit_call["context"]["personas"]["computation_key"] == "vip"

    # a user who exits and comes back is sent again, with a new message id
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": "c@x.io", "u4": "d@x.io"})
    harness.run(config)
    again = harness.new_calls()
    assert harness.sent(again) == {("u1", "vip"): True}
    first_ids = {c["messageId"] for c in calls}
    assert again[0]["messageId"] not in first_ids


def test_trait_changes_nulls_and_falsy_values(harness: Harness) -> None:
    harness.warehouse.set_trait(
        "Score", {"u1": ("a@x.io", 10), "u2": ("b@x.io", 0), "u3": ("c@x.io", ""), "u4": ("d@x.io", None)}
    )
    config = harness.config(harness.jsonl_destination() + harness.trait("Score"))
    first = harness.run(config)
    # 0 and "" are values and are sent; NULL means "no value" and is not
    assert harness.sent(harness.new_calls()) == {("u1", "score"): 10, ("u2", "score"): 0, ("u3", "score"): ""}
    assert first.counts["sources"]["score"]["null_values"] == 1

    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 10), "u2": ("b@x.io", 0.5), "u4": ("d@x.io", "x")})
    result = harness.run(config)
    assert harness.sent(harness.new_calls()) == {("u2", "score"): 0.5, ("u3", "score"): None, ("u4", "score"): "x"}
    assert (result.counts["entered"], result.counts["changed"], result.counts["exited"]) == (1, 1, 1)

    # after the null was acknowledged, the user is gone for good: nothing more is sent
    harness.run(config)
    assert harness.new_calls() == []


def test_zero_and_false_are_different_values(harness: Harness, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    path = tmp_path / "flags.parquet"
    pd.DataFrame({"user_id": ["u1", "u2"], "email": ["a@x.io", "b@x.io"], "value": [0, 1]}).to_parquet(path)
    config = harness.config(harness.jsonl_destination() + f'[[computed_traits]]\nname = "Flag"\nfile = "{path}"\n')
    harness.run(config)
    assert harness.sent(harness.new_calls()) == {("u1", "flag"): 0, ("u2", "flag"): 1}
    pd.DataFrame({"user_id": ["u1", "u2"], "email": ["a@x.io", "b@x.io"], "value": [False, True]}).to_parquet(path)
    result = harness.run(config)
    sent = harness.sent(harness.new_calls())
    assert sent == {("u1", "flag"): False, ("u2", "flag"): True}
    assert sent[("u1", "flag")] is False and result.counts["changed"] == 2


def test_new_destination_and_new_audience_get_a_full_initial_sync(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    harness.warehouse.set_members("Churned", {"u9": "z@x.io"})
    one = harness.config(harness.jsonl_destination("one") + harness.audience("VIP"))
    harness.run(one)
    assert harness.sent(harness.new_calls("one")) == {("u1", "vip"): True, ("u2", "vip"): True}

    both = harness.config(
        harness.jsonl_destination("one")
        + harness.jsonl_destination("two")
        + harness.audience("VIP")
        + harness.audience("Churned")
    )
    harness.run(both)
    assert harness.sent(harness.new_calls("one")) == {("u9", "churned"): True}
    assert harness.sent(harness.new_calls("two")) == {("u1", "vip"): True, ("u2", "vip"): True, ("u9", "churned"): True}


def test_audience_destinations_limit_where_it_goes(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(
        harness.jsonl_destination("one")
        + harness.jsonl_destination("two")
        + harness.audience("VIP", destinations=["two"])
    )
    harness.run(config)
    assert harness.new_calls("one") == []
    assert harness.sent(harness.new_calls("two")) == {("u1", "vip"): True}


def test_dry_run_stores_the_diff_and_sends_nothing(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    result = harness.run(config, dry_run=True)
    assert result.mode == "dry_run" and result.exit_code == 0
    assert harness.new_calls() == []
    _, rows = list_diffs(config, run_id=result.run_id)
    # planned: what a run would send; pending would mean "not delivered, retried next run"
    assert {(r["user_id"], r["change"], r["status"]) for r in rows} == {
        ("u1", "entered", "planned"),
        ("u2", "entered", "planned"),
    }
    assert (result.counts["planned"], result.counts["pending"]) == (2, 0)
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(table_of(SnapshotRow))).scalar_one() == 0
    engine.dispose()
    # the real run afterwards still sends everyone
    real = harness.run(config)
    assert real.counts["sent"] == 2
    assert harness.sent(harness.new_calls()) == {("u1", "vip"): True, ("u2", "vip"): True}


def test_resync_resends_current_values_and_exits(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 5)})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score"))
    harness.run(config)
    originals = {c["messageId"] for c in harness.new_calls()}

    harness.warehouse.set_members("VIP", {"u2": "b@x.io"})
    result = harness.run(config, mode="resync")
    calls = harness.new_calls()
    assert harness.sent(calls) == {("u1", "vip"): False, ("u2", "vip"): True, ("u1", "score"): 5}
    assert result.mode == "resync"
    assert not originals & {c["messageId"] for c in calls}  # a resync is not deduplicated away

    # resync limited to one user
    harness.run(config, mode="resync", users=["u2"])
    assert harness.sent(harness.new_calls()) == {("u2", "vip"): True}


def test_runs_and_diff_rows_are_inspectable(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    first = harness.run(config)
    harness.warehouse.set_members("VIP", {"u2": "b@x.io"})
    second = harness.run(config)

    runs = list_runs(config)
    assert [r["run_id"] for r in runs] == [second.run_id, first.run_id]
    assert runs[0]["mode"] == "incremental" and runs[0]["status"] == "succeeded"
    assert runs[0]["counts"]["entered"] == 1 and runs[0]["counts"]["exited"] == 1
    assert runs[0]["finished_at"] >= runs[0]["started_at"]

    rid, rows = list_diffs(config)
    assert rid == second.run_id
    assert sorted((r["user_id"], r["change"], r["old_value"], r["new_value"], r["status"]) for r in rows) == [
        ("u1", "exited", True, False, "sent"),
        ("u2", "entered", None, True, "sent"),
    ]


def test_source_failure_stores_no_diff_and_marks_the_run_failed(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(
        harness.jsonl_destination()
        + harness.audience("VIP")
        + '[[audiences]]\nname = "Broken"\nsql = "SELECT user_id FROM no_such_table"\n'
    )
    with pytest.raises(SourceError, match=r"'Broken' \(broken\): query failed: .*no_such_table"):
        harness.run(config)
    runs = list_runs(config)
    assert runs[0]["status"] == "failed" and "no_such_table" in runs[0]["error"]
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        for table in (DiffRow, StagingRow, SnapshotRow):
            assert conn.execute(select(func.count()).select_from(table_of(table))).scalar_one() == 0
    engine.dispose()
    assert harness.new_calls() == []


def test_trait_with_two_values_for_one_user_fails_naming_both(harness: Harness) -> None:
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 1)})
    with harness.warehouse._db() as db:
        db.execute("INSERT INTO trait_values VALUES ('Score', 'u1', 'a@x.io', 2)")
    config = harness.config(harness.jsonl_destination() + harness.trait("Score"))
    with pytest.raises(SourceError, match=r"trait 'Score' \(score\): user 'u1' has two different values \(1 and 2\)"):
        harness.run(config)


def test_duplicates_count_once_and_null_ids_are_dropped(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    with harness.warehouse._db() as db:
        db.execute("INSERT INTO members VALUES ('VIP', 'u1', 'a@x.io')")
        db.execute("INSERT INTO members VALUES ('VIP', NULL, 'ghost@x.io')")
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    result = harness.run(config)
    counted = {"rows": 3, "members": 1, "null_user_ids": 1, "null_values": 0, "skipped": 0}
    assert result.counts["sources"]["vip"] == counted
    assert harness.sent(harness.new_calls()) == {("u1", "vip"): True}


def test_removed_key_is_retired_and_not_silently_reused(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.warehouse.set_members("Other", {"u2": "b@x.io"})
    harness.run(harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.audience("Other")))
    harness.new_calls()
    # VIP removed from the config: nothing is sent for it (Engage keeps the key on profiles)
    harness.run(harness.config(harness.jsonl_destination() + harness.audience("Other")))
    assert harness.new_calls() == []
    # a different audience may not take the retired key
    with pytest.raises(KeyCollisionError, match=r"'vip'.*retired"):
        harness.run(
            harness.config(
                harness.jsonl_destination()
                + harness.audience("Other")
                + '[[audiences]]\nname = "Very Important"\nkey = "vip"\nsql = "SELECT 1 AS user_id"\n'
            )
        )


def test_renaming_with_an_explicit_key_keeps_the_snapshot(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.run(harness.config(harness.jsonl_destination() + harness.audience("VIP")))
    harness.new_calls()
    renamed = harness.config(
        harness.jsonl_destination()
        + f'[[audiences]]\nname = "Top Customers"\nkey = "vip"\nsql = "{harness.warehouse.audience_sql("VIP")}"\n'
    )
    result = harness.run(renamed)
    assert harness.new_calls() == [] and result.counts["entered"] == 0


def test_postgres_source_is_the_state_database_by_default(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from audience_sync.config import parse_config
    from audience_sync.run.sync import run_sync

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE shop_users (id integer, email text, score numeric, tags text[])"))
        conn.execute(
            text(
                "INSERT INTO shop_users VALUES (1, 'a@x.io', 12.50, ARRAY['a','b']), "
                "(2, 'b@x.io', 3, ARRAY[]::text[]), (3, NULL, NULL, NULL)"
            )
        )
    engine.dispose()
    out = tmp_path / "out.jsonl"
    config = parse_config(
        f'''
[state]
url = "{pg_url}"
[[destinations]]
name = "file"
type = "jsonl"
path = "{out}"
[[audiences]]
name = "Has Email"
sql = "SELECT id AS user_id, email FROM shop_users WHERE email LIKE '%@%'"
[[computed_traits]]
name = "Score"
sql = "SELECT id AS user_id, email, score AS value FROM shop_users"
[[computed_traits]]
name = "Tags"
sql = "SELECT id AS user_id, email, tags AS value FROM shop_users"
''',
        environ={},
    )
    result = run_sync(config)
    assert result.exit_code == 0
    sent = Harness.sent([__import__("json").loads(line) for line in out.read_text().splitlines()])
    assert sent == {
        ("1", "has_email"): True,
        ("2", "has_email"): True,
        ("1", "score"): 12.5,
        ("2", "score"): 3,
        ("1", "tags"): ["a", "b"],
        ("2", "tags"): [],
    }


def test_message_ids_are_computed_in_sql_as_defined_and_repeat_after_a_lost_run(harness: Harness) -> None:
    from sqlalchemy import text

    from audience_sync.model import message_id

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "ü2": "b@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", "x")})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.trait("Score"))
    first = harness.run(config)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.run(config, dry_run=True)
    resync = harness.run(config, mode="resync")
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.destination, d.computation_key, d.user_id, d.new_value, d.base_run_id, "
                "d.message_id, r.mode, d.run_id FROM diffs d JOIN sync_runs r ON r.id = d.run_id"
            )
        ).all()
        install = conn.execute(text("SELECT install_id FROM install")).scalar_one()
    engine.dispose()
    assert len(rows) == 3 + 1 + 3
    for dest, key, user, new, base, mid, mode, run_id in rows:
        salt = f"resync:{run_id}" if mode == "resync" else ""
        assert mid == message_id(install, dest, key, user, new, base, salt)
        assert len(mid) < 100
    dry = [r for r in rows if r.mode == "dry_run"]
    real_exit = [r for r in rows if r.run_id == resync.run_id and r.user_id == "ü2"]
    assert dry[0].message_id != real_exit[0].message_id  # resync ids are salted
    assert first.run_id < resync.run_id
