"""Gist over real HTTP on loopback: what is posted, who is skipped, and how failures are recorded."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from audience_sync.commands import list_diffs
from tests.fakes.gist import FakeGist
from tests.harness import Harness, toml_options

KEY_ENV = {"GIST_API_KEY": "gist-test-key"}


def gist_destination(fake: FakeGist, **options: object) -> str:
    extra = toml_options(options)
    head = '[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\n'
    return f'{head}endpoint = "{fake.url}"\n{extra}'


def test_identify_posts_contacts_with_all_changed_keys_of_a_user(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    harness.warehouse.set_trait("Lifetime Value", {"u1": ("a@x.io", 120.5)})
    config = harness.config(
        gist_destination(gist) + harness.audience("VIP") + harness.trait("Lifetime Value"), environ=KEY_ENV
    )
    result = harness.run(config)
    assert result.exit_code == 0 and result.counts["sent"] == 3
    bodies = sorted((json.loads(r["body"]) for r in gist.requests), key=lambda b: b["user_id"])
    assert bodies == [
        {"user_id": "u1", "email": "a@x.io", "custom_properties": {"vip": True, "lifetime_value": 120.5}},
        {"user_id": "u2", "email": "b@x.io", "custom_properties": {"vip": True}},
    ]
    assert all(r["headers"]["Authorization"] == "Bearer gist-test-key" for r in gist.requests)
    assert all(r["path"] == "/contacts" for r in gist.requests)

    harness.warehouse.set_members("VIP", {"u2": "b@x.io"})
    gist.requests.clear()
    harness.run(config)
    assert [json.loads(r["body"]) for r in gist.requests] == [
        {"user_id": "u1", "email": "a@x.io", "custom_properties": {"vip": False}}
    ]
    assert gist.properties("u1") == {"vip": False, "lifetime_value": 120.5}


def test_users_without_email_are_skipped_then_sent_once_they_have_one(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": None})
    config = harness.config(gist_destination(gist) + harness.audience("VIP"), environ=KEY_ENV)
    result = harness.run(config)
    assert result.exit_code == 0  # skipped is reported, not an error
    assert (result.counts["sent"], result.counts["skipped"]) == (1, 1)
    _, rows = list_diffs(config, run_id=result.run_id, status="skipped")
    assert rows[0]["user_id"] == "u2" and "requires user_id and email" in rows[0]["error"]
    assert set(gist.contacts) == {"u1"}

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    later = harness.run(config)
    assert later.counts["sent"] == 1
    assert gist.properties("u2") == {"vip": True}


def test_permanent_error_is_failed_with_gists_reason_and_retried_next_run(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    gist.user_faults["u1"] = __import__("tests.fakes.gist", fromlist=["Fault"]).Fault(
        422, {"errors": [{"code": "parameter_invalid", "message": "Email is invalid"}]}
    )
    config = harness.config(gist_destination(gist) + harness.audience("VIP"), environ=KEY_ENV)
    result = harness.run(config)
    assert result.exit_code == 3 and result.status == "partial"
    _, failed = list_diffs(config, run_id=result.run_id, status="failed")
    assert [(r["user_id"], r["error"]) for r in failed] == [("u1", "HTTP 422: Email is invalid")]
    assert set(gist.contacts) == {"u2"}

    del gist.user_faults["u1"]
    again = harness.run(config)
    assert again.exit_code == 0 and again.counts["sent"] == 1
    assert gist.properties("u1") == {"vip": True}


def test_transient_errors_are_retried_then_left_pending_for_the_next_run(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(gist_destination(gist, max_retries=1) + harness.audience("VIP"), environ=KEY_ENV)
    gist.fail_next(2, 503, headers={"Retry-After": "0"})
    result = harness.run(config)
    assert result.exit_code == 3
    _, pending = list_diffs(config, run_id=result.run_id, status="pending")
    assert len(pending) == 1 and "HTTP 503" in pending[0]["error"]
    assert gist.contacts == {}

    again = harness.run(config)
    assert again.exit_code == 0 and gist.properties("u1") == {"vip": True}
    _, old = list_diffs(config, run_id=result.run_id)
    assert old[0]["status"] == "superseded"  # the next run carried the change


def test_lost_answer_is_resent_and_converges(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(gist_destination(gist, max_retries=0) + harness.audience("VIP"), environ=KEY_ENV)
    gist.fail_next(1, 502, apply_first=True)  # Gist applied it, but we never heard
    first = harness.run(config)
    assert first.exit_code == 3  # not recorded as sent: it was not acknowledged
    harness.run(config)
    assert gist.properties("u1") == {"vip": True}
    assert len(gist.requests) == 2


def test_rejected_credentials_stop_the_destination_with_exit_1(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(30)})
    config = harness.config(
        gist_destination(gist) + harness.audience("VIP"), environ={"GIST_API_KEY": "wrong-key-value"}
    )
    result = harness.run(config)
    assert result.exit_code == 1 and result.status == "failed"
    assert "refused our credentials" in (result.error or "")
    assert len(gist.requests) <= 4  # stopped at once: at most the calls in flight (concurrency 4), not 30
    _, rows = list_diffs(config, run_id=result.run_id)
    assert {r["status"] for r in rows} == {"pending"}
    assert "wrong-key-value" not in json.dumps(result.to_dict())
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        dump = " ".join(
            str(row)
            for table in ("diffs", "sync_runs", "snapshot")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        )
    engine.dispose()
    assert "wrong-key-value" not in dump


def test_track_mode_posts_events(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 7)})
    config = harness.config(
        gist_destination(gist, send=["track"], entered_event="Joined VIP")
        + harness.audience("VIP")
        + harness.trait("Score"),
        environ=KEY_ENV,
    )
    assert harness.run(config).exit_code == 0
    events = sorted((json.loads(r["body"]) for r in gist.requests), key=lambda b: b["event_name"])
    assert [r["path"] for r in gist.requests] == ["/events", "/events"]
    assert all(isinstance(e.pop("occurred_at"), int) for e in events)
    assert events == [
        {
            "event_name": "Joined VIP",
            "email": "a@x.io",
            "user_id": "u1",
            "properties": {"audience_key": "vip", "vip": True},
        },
        {
            "event_name": "Trait Computed",
            "email": "a@x.io",
            "user_id": "u1",
            "properties": {"trait_key": "score", "score": 7},
        },
    ]
    assert sorted(({k: v for k, v in e.items() if k != "occurred_at"} for e in gist.events), key=str) == sorted(
        events, key=str
    )


def test_a_failing_destination_does_not_hold_up_another(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(10)})
    config = harness.config(
        gist_destination(gist, max_retries=0) + harness.jsonl_destination("file") + harness.audience("VIP"),
        environ=KEY_ENV,
    )
    gist.fail_next(100, 500)
    result = harness.run(config)
    assert result.exit_code == 3
    per_destination = result.counts["destinations"]
    assert per_destination["file"]["sent"] == 10 and per_destination["file"]["pending"] == 0
    assert per_destination["gist"]["pending"] == 10 and per_destination["gist"]["sent"] == 0
    assert len(harness.new_calls("file")) == 10


@pytest.mark.slow
def test_repeated_runs_converge_under_random_faults(harness: Harness, gist: FakeGist) -> None:
    """500s, 429s and answers lost after Gist applied the call: runs repeat until all is delivered; then Gist
    holds exactly the truth and nothing is recorded as sent that Gist did not apply."""
    import random

    from tests.fakes.gist import Fault

    rng = random.Random(11)
    truth_members = {f"u{i}": f"{i}@x.io" for i in range(40)}
    harness.warehouse.set_members("VIP", truth_members)
    harness.warehouse.set_trait("Score", {u: (e, rng.randint(0, 3)) for u, e in truth_members.items()})
    config = harness.config(
        gist_destination(gist, max_retries=1) + harness.audience("VIP") + harness.trait("Score"), environ=KEY_ENV
    )
    for round_ in range(3):
        if round_:
            members = {u: e for u, e in truth_members.items() if rng.random() < 0.7}
            harness.warehouse.set_members("VIP", members)
            harness.warehouse.set_trait(
                "Score", {u: (e, rng.randint(0, 3)) for u, e in truth_members.items() if rng.random() < 0.8}
            )
        for _ in range(30):
            gist.faults.clear()
            for _ in range(rng.randint(0, 6)):
                gist.faults.append(
                    rng.choice([Fault(500), Fault(429, headers={"Retry-After": "0"}), Fault(502, apply_first=True)])
                )
            outcome = harness.run(config)
            if outcome.exit_code == 0:
                break
        else:
            pytest.fail("runs did not converge")
        gist.faults.clear()
        # Gist holds the truth: members true, everyone else who was ever a member false; traits as computed
        engine = create_engine(harness.state_url)
        with engine.connect() as conn:
            snapshot = {
                (r[0], r[1]): r[2]
                for r in conn.execute(
                    text("SELECT user_id, computation_key, value FROM snapshot WHERE destination = 'gist'")
                )
            }
        engine.dispose()
        assert snapshot, "nothing was recorded"
        for (user, key), value in snapshot.items():
            # nothing recorded as sent that Gist did not apply
            assert gist.properties(user).get(key) == (json.loads(value) if value is not None else None)


def test_a_2xx_carrying_errors_is_not_an_acknowledgement(harness: Harness, gist: FakeGist) -> None:
    """Gist may answer 200 with an ``errors`` list: that call's changes are failed with its messages, not sent."""
    from tests.fakes.gist import Fault

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(gist_destination(gist) + harness.audience("VIP"), environ=KEY_ENV)
    gist.user_faults["u2"] = Fault(200, {"errors": [{"code": "parameter_invalid", "message": "email is invalid"}]})
    result = harness.run(config)
    assert result.status == "partial" and result.counts["sent"] == 1 and result.counts["failed"] == 1
    _, rows = list_diffs(config, run_id=result.run_id)
    failed = next(r for r in rows if r["user_id"] == "u2")
    assert failed["status"] == "failed" and "HTTP 200 with errors: email is invalid" in failed["error"]
    assert result.destinations["gist"]["last_error"] == failed["error"]
    gist.user_faults.clear()
    assert harness.run(config).status == "succeeded"  # not in the snapshot: the next run sends it again
    assert gist.properties("u2") == {"vip": True}


def test_track_events_carry_occurred_at_and_list_values_take_a_form_gist_takes() -> None:
    import time

    from audience_sync.config import parse_config
    from audience_sync.destinations.gist import GistContacts
    from audience_sync.model import Change, ChangeKind

    def destination(list_values: str) -> GistContacts:
        config = parse_config(
            '[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\n'
            f'send = ["identify", "track"]\nlist_values = "{list_values}"\n',
            environ=KEY_ENV,
        )
        return GistContacts(config.destinations[0])  # type: ignore[arg-type]

    changes = [
        Change(1, 1, "gist", "categories", "trait", "u1", "a@x.io", ChangeKind.CHANGED, None, ["tea", "B", 5], "m1"),
        Change(2, 1, "gist", "last_order", "trait", "u1", "a@x.io", ChangeKind.CHANGED, None, {"id": 3}, "m2"),
    ]
    before = int(time.time())
    joined, json_text = destination("join"), destination("json")
    try:
        (_, contact, _), *events = joined.calls(changes)
        assert contact["custom_properties"] == {"categories": "tea, B, 5", "last_order": '{"id":3}'}
        assert [path for path, _, _ in events] == ["/events", "/events"]
        assert all(before <= body["occurred_at"] <= int(time.time()) for _, body, _ in events)
        (_, contact, _), *_ = json_text.calls(changes)
        assert contact["custom_properties"]["categories"] == '["tea","B",5]'
    finally:
        joined.close()
        json_text.close()
