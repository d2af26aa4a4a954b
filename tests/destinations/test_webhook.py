"""The generic webhook: Segment-spec JSON, single or batched, secret headers and an HMAC signature."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from typing import Any

from tests.fakes.capture import CaptureServer
from tests.harness import Harness, toml_options

ENV = {"HOOK_TOKEN": "tok-123", "HOOK_SECRET": "hmac-secret"}


def webhook(url: str, **options: Any) -> str:
    return f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{url}/hook"\n' + toml_options(options)


def test_single_messages_are_signed_and_carry_secret_headers(harness: Harness, receiver: CaptureServer) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(
        webhook(receiver.url, signing_secret_env="HOOK_SECRET", headers_env={"Authorization": "HOOK_TOKEN"})
        + harness.audience("VIP"),
        environ=ENV,
    )
    assert harness.run(config).exit_code == 0
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        assert request["path"] == "/hook"
        assert request["headers"]["Authorization"] == "tok-123"
        expected = "sha256=" + hmac.new(b"hmac-secret", request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Signature-256"] == expected
        message = json.loads(request["body"])
        assert message["type"] == "identify" and message["traits"]["vip"] is True
    assert "hmac-secret" not in repr(config) and "tok-123" not in repr(config)


def test_batched_messages(harness: Harness, receiver: CaptureServer) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(7)})
    config = harness.config(webhook(receiver.url, batch_size=3, send=["track"]) + harness.audience("VIP"), environ=ENV)
    assert harness.run(config).exit_code == 0
    batches = [json.loads(r["body"]) for r in receiver.requests]
    assert sorted(len(b["batch"]) for b in batches) == [1, 3, 3]
    assert {m["event"] for b in batches for m in b["batch"]} == {"Audience Entered"}
    assert all("X-Signature-256" not in r["headers"] for r in receiver.requests)


def test_refusing_receiver_marks_changes_failed(harness: Harness) -> None:
    server = CaptureServer(status=410).start()
    try:
        harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
        result = harness.run(harness.config(webhook(server.url) + harness.audience("VIP"), environ=ENV))
    finally:
        server.stop()
    assert result.exit_code == 3 and result.counts["failed"] == 1


def test_segment_peer_library_sends_the_envelope_we_send(receiver: CaptureServer, harness: Harness) -> None:
    """The official segment-analytics-python client, pointed at a capture server, against our batch request."""
    from segment.analytics.client import Client  # type: ignore[import-untyped]

    client = Client("segment-write-key", host=receiver.url, sync_mode=True, gzip=False)
    client.identify("u1", {"vip": True, "email": "a@x.io"})
    client.flush()
    theirs = receiver.requests[0]
    theirs_body = json.loads(gzip.decompress(theirs["body"]) if theirs["body"][:2] == b"\x1f\x8b" else theirs["body"])

    from tests.destinations.test_segment import segment_destination

    class Stub:
        url = receiver.url

    receiver.requests.clear()
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    harness.run(
        harness.config(
            segment_destination(Stub()) + harness.audience("VIP"),  # type: ignore[arg-type]
            environ={"SEGMENT_WRITE_KEY": "segment-write-key"},
        )
    )
    ours = receiver.requests[0]
    ours_body = json.loads(ours["body"])

    assert ours["path"] == theirs["path"] == "/v1/batch"
    assert ours["headers"]["Authorization"] == theirs["headers"]["Authorization"]
    assert ours["headers"]["Content-Type"] == theirs["headers"]["Content-Type"] == "application/json"
    assert set(theirs_body) <= set(ours_body) | {"writeKey"}  # the library repeats the key in the body
    mine, peer = ours_body["batch"][0], theirs_body["batch"][0]
    for field in ("messageId", "timestamp", "type", "userId", "traits", "context"):
        assert field in mine and field in peer
        assert type(mine[field]) is type(peer[field])
    assert mine["type"] == peer["type"] == "identify" and mine["userId"] == peer["userId"] == "u1"
    assert mine["traits"] == peer["traits"] == {"vip": True, "email": "a@x.io"}
    assert mine["timestamp"][:4] == peer["timestamp"][:4]
