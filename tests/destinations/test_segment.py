"""Segment's batch API over real HTTP on loopback: envelope, Engage message shape, limits, splitting, dedupe."""

from __future__ import annotations

import base64
import json

from audience_sync.commands import list_diffs
from tests.fakes.segment import FakeSegment
from tests.harness import Harness, toml_options

ENV = {"SEGMENT_WRITE_KEY": "segment-write-key"}


def segment_destination(fake: FakeSegment, **options: object) -> str:
    extra = toml_options(options)
    return (
        f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
        f'endpoint = "{fake.url}"\n{extra}'
    )


def test_identify_messages_are_engage_shaped(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("Café VIPs ☕", {"u1": "a@x.io", "u2": None})
    harness.warehouse.set_trait("Lifetime Value", {"u1": ("a@x.io", 12.5)})
    config = harness.config(
        segment_destination(segment, integrations={"All": False, "Gist": True}, space_id="spa_demo")
        + harness.audience("Café VIPs ☕")
        + harness.trait("Lifetime Value"),
        environ=ENV,
    )
    result = harness.run(config)
    assert result.exit_code == 0 and result.counts["sent"] == 3  # Segment needs no email: nobody skipped
    request = segment.requests[0]
    assert request["path"] == "/v1/batch"
    assert request["headers"]["Authorization"] == "Basic " + base64.b64encode(b"segment-write-key:").decode()
    assert request["headers"]["Content-Type"] == "application/json"
    body = json.loads(request["body"])
    assert set(body) == {"batch", "sentAt"}
    by_key = {(m["userId"], next(k for k in m["traits"] if k != "email")): m for m in body["batch"]}
    vip = by_key[("u1", "cafe_vips")]
    assert vip["type"] == "identify" and vip["traits"] == {"cafe_vips": True, "email": "a@x.io"}
    assert vip["context"]["personas"] == {
        "computation_class": "audience",
        "computation_id": "aud_cafe_vips",
        "computation_key": "cafe_vips",
        "namespace": "spa_demo",  # both carry the same spa_ value, as Engage sends them
        "space_id": "spa_demo",
    }
    assert vip["integrations"] == {"All": False, "Gist": True}
    assert vip["timestamp"].endswith("Z") and len(vip["messageId"]) < 100
    assert by_key[("u2", "cafe_vips")]["traits"] == {"cafe_vips": True}  # no email known: none sent
    assert by_key[("u1", "lifetime_value")]["context"]["personas"]["computation_class"] == "trait"
    assert segment.profiles["u1"] == {"cafe_vips": True, "lifetime_value": 12.5, "email": "a@x.io"}


def test_track_events_for_entered_exited_and_traits(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.warehouse.set_trait("Score", {"u1": ("a@x.io", 3)})
    config = harness.config(
        segment_destination(segment, send=["identify", "track"]) + harness.audience("VIP") + harness.trait("Score"),
        environ=ENV,
    )
    harness.run(config)
    harness.warehouse.set_members("VIP", {})
    harness.run(config, force=True)  # the audience really is empty now: past the mass-exit guard
    events = sorted(json.dumps([e["event"], e["properties"], e["context"]["traits"]]) for e in segment.events)
    assert events == sorted(
        json.dumps(e)
        for e in [
            ["Audience Entered", {"audience_key": "vip", "vip": True}, {"email": "a@x.io"}],
            ["Trait Computed", {"trait_key": "score", "score": 3}, {"email": "a@x.io"}],
            ["Audience Exited", {"audience_key": "vip", "vip": False}, {"email": "a@x.io"}],
        ]
    )
    assert len(segment.messages) == 6  # an identify and a track per change


def test_batches_respect_count_and_size_limits(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {f"user-{i:04d}": f"{i}@x.io" for i in range(25)})
    config = harness.config(segment_destination(segment, max_batch_messages=10) + harness.audience("VIP"), environ=ENV)
    assert harness.run(config).counts["sent"] == 25
    assert sorted(len(json.loads(r["body"])["batch"]) for r in segment.requests) == [5, 10, 10]

    harness.warehouse.set_members("VIP", {f"user-{i:04d}": f"{i}@x.io" for i in range(25, 60)})
    segment.requests.clear()
    config = harness.config(segment_destination(segment, max_batch_bytes=4000) + harness.audience("VIP"), environ=ENV)
    assert harness.run(config).counts["sent"] == 60  # 25 exits and 35 entries
    assert all(len(r["body"]) <= 4000 for r in segment.requests) and len(segment.requests) > 1


def test_oversized_message_is_failed_and_never_sent(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_trait("Notes", {"u1": ("a@x.io", "x" * 40_000), "u2": ("b@x.io", "short")})
    config = harness.config(segment_destination(segment) + harness.trait("Notes"), environ=ENV)
    result = harness.run(config)
    assert result.exit_code == 3
    _, failed = list_diffs(config, run_id=result.run_id, status="failed")
    assert [r["user_id"] for r in failed] == ["u1"] and "over Segment's 32 KB limit" in failed[0]["error"]
    assert set(segment.profiles) == {"u2"}


def test_a_refused_batch_is_split_until_the_bad_message_is_alone(harness: Harness, segment: FakeSegment) -> None:
    members = {f"u{i:02d}": f"{i}@x.io" for i in range(16)} | {"poison": "p@x.io"}
    harness.warehouse.set_members("VIP", members)
    config = harness.config(segment_destination(segment) + harness.audience("VIP"), environ=ENV)
    result = harness.run(config)
    assert result.exit_code == 3
    _, rows = list_diffs(config, run_id=result.run_id)
    assert {r["user_id"] for r in rows if r["status"] == "failed"} == {"poison"}
    assert "HTTP 400: invalid message" in next(r["error"] for r in rows if r["status"] == "failed")
    assert set(segment.profiles) == set(members) - {"poison"}
    assert len(segment.requests) <= 2 * 5 + 1  # a binary search, not one request per message


def test_lost_answers_are_resent_with_the_same_message_ids(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(5)})
    config = harness.config(segment_destination(segment, max_retries=0) + harness.audience("VIP"), environ=ENV)
    segment.fail_next(1, 503, apply_first=True)  # Segment took the batch, the answer was lost
    assert harness.run(config).exit_code == 3
    assert harness.run(config).exit_code == 0
    assert segment.duplicates == 5 and len(segment.messages) == 5  # the re-send deduplicated


def test_429_retry_after_is_honoured(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(segment_destination(segment, max_retries=2) + harness.audience("VIP"), environ=ENV)
    segment.fail_next(2, 429, headers={"Retry-After": "0"})
    assert harness.run(config).exit_code == 0
    assert len(segment.requests) == 3 and segment.profiles["u1"]["vip"] is True


def test_bad_write_key_stops_with_exit_1(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(
        segment_destination(segment) + harness.audience("VIP"), environ={"SEGMENT_WRITE_KEY": "not-the-key"}
    )
    result = harness.run(config)
    assert result.exit_code == 1 and "refused our credentials" in (result.error or "")
    assert "not-the-key" not in json.dumps(result.to_dict())


def test_space_id_and_namespace_carry_the_same_spa_value() -> None:
    """Engage sends ``context.personas.space_id`` and ``namespace`` as one ``spa_…`` value; the Python builder and
    the database's agree."""
    from audience_sync.destinations.messages import MessageOptions, personas_context
    from audience_sync.model import Change, ChangeKind

    change = Change(1, 1, "s", "vip", "audience", "u1", None, ChangeKind.ENTERED, None, True, "m")
    for configured, sent in (("audience-sync", "spa_audience-sync"), ("spa_x1", "spa_x1")):
        personas = personas_context(change, MessageOptions(space_id=configured))
        assert personas["space_id"] == personas["namespace"] == sent
