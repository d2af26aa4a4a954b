"""A destination cannot hang a run: ``timeout`` is a deadline for a whole request, in every phase, for every HTTP
destination; every transport-level failure is an acknowledgement or transient, never a traceback; a Retry-After
longer than the cap leaves the changes pending instead of being cut short; ``sentAt`` is each attempt's own.

Real loopback servers throughout (tests/fakes/faulty.py misbehaves on raw sockets)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audience_sync.commands import list_diffs, list_runs
from audience_sync.run.sync import RunResult
from tests.fakes.capture import CaptureServer
from tests.fakes.faulty import FaultyServer, Mode
from tests.fakes.gist import FakeGist
from tests.fakes.segment import FakeSegment
from tests.harness import Harness, toml_options
from tests.processes import run_cli

ENV = {"GIST_API_KEY": "gist-test-key", "SEGMENT_WRITE_KEY": "segment-write-key", "HOOK_SECRET": "hmac-secret"}
TIMEOUT = 1.0
#: the timeout of a destination that never gives a whole answer (nothing it does can beat the deadline, so a
#: short one tests the same and keeps the suite quick); one that answers gets :data:`TIMEOUT`
STALLED = 0.4
MAX_RETRIES = 1
#: the longest one call may take: every attempt up to its deadline, plus the first backoff's most (0.5 s)
CALL_BOUND = (MAX_RETRIES + 1) * TIMEOUT + 0.5
#: the run must end well inside this (generous, so a loaded machine does not fail it)
RUN_BOUND = 10 * CALL_BOUND
#: a hung run is given this long before the test calls it hung (a trickle lasts more than an hour)
HUNG = 120.0


def destination(kind: str, url: str, **options: Any) -> str:
    """A destination of ``kind`` at ``url`` with this module's timeout and retries."""
    options = {"timeout": TIMEOUT, "max_retries": MAX_RETRIES, **options}
    if kind == "gist":
        head = f'type = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{url}"\n'
    elif kind == "segment":
        head = f'type = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\nendpoint = "{url}"\n'
    else:
        head = f'type = "webhook"\nurl = "{url}/hook"\nsigning_secret_env = "HOOK_SECRET"\n'
    return f'[[destinations]]\nname = "{kind}"\n{head}' + toml_options(options)


def run_bounded(harness: Harness, config: Any, limit: float = HUNG) -> tuple[RunResult, float]:
    """Run a sync on a thread; fail (rather than hang) when it is still running after ``limit`` seconds."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = harness.run(config)
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the run was still going after {limit:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], outcome["elapsed"]


@pytest.fixture
def faulty(request: pytest.FixtureRequest) -> Iterator[Callable[..., FaultyServer]]:
    servers: list[FaultyServer] = []

    def make(mode: Mode, **kwargs: Any) -> FaultyServer:
        servers.append(FaultyServer(mode, **kwargs).start())
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kind", ["gist", "segment", "webhook"])
@pytest.mark.parametrize("mode", ["trickle_body", "trickle_headers", "silent", "unaccepted"])
def test_a_stalling_destination_cannot_hold_the_run_past_its_deadline(
    harness: Harness, faulty: Callable[..., FaultyServer], kind: str, mode: Mode
) -> None:
    server = faulty(mode)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(destination(kind, server.url, timeout=STALLED) + harness.audience("VIP"), environ=ENV)
    result, elapsed = run_bounded(harness, config)
    assert elapsed < RUN_BOUND, f"{elapsed:.1f} s"
    assert result.exit_code == 3 and result.status == "partial"
    assert result.counts["pending"] == 2 and result.counts["sent"] == 0
    _, rows = list_diffs(config, run_id=result.run_id)
    assert {r["status"] for r in rows} == {"pending"}
    assert all(f"no complete answer within the {STALLED:g} s timeout" in (r["error"] or "") for r in rows), rows
    if mode != "unaccepted":  # each call was tried at most once and retried at most once: no retry storm
        # not exactly that many: an attempt's deadline covers connecting and sending too, and on a loaded machine
        # an attempt can end before its request was written (the timeout error above says attempts were made)
        calls = {"gist": 2, "segment": 1, "webhook": 2}[kind]
        assert len(server.requests) <= calls * (MAX_RETRIES + 1)


def test_a_trickling_answer_leaves_the_changes_for_the_next_run(
    harness: Harness, faulty: Callable[..., FaultyServer], gist: FakeGist
) -> None:
    """On both state databases: pending after the stalled run, delivered once the destination answers again."""
    server = faulty("trickle_body")
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    stalled, elapsed = run_bounded(
        harness, harness.config(destination("gist", server.url, timeout=STALLED) + harness.audience("VIP"), environ=ENV)
    )
    assert elapsed < RUN_BOUND and stalled.exit_code == 3 and stalled.counts["pending"] == 2
    config = harness.config(destination("gist", gist.url) + harness.audience("VIP"), environ=ENV)
    again = harness.run(config)
    assert again.exit_code == 0 and again.counts["sent"] == 2
    assert gist.properties("u1") == gist.properties("u2") == {"vip": True}


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("kind", ["gist", "segment", "webhook"])
def test_a_2xx_whose_body_cannot_be_decoded_is_acknowledged(
    harness: Harness, faulty: Callable[..., FaultyServer], kind: str
) -> None:
    """The status line said 2xx and the whole answer arrived; no destination needs a 2xx body, so it counts."""
    server = faulty("lying_gzip", status=200)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(destination(kind, server.url) + harness.audience("VIP"), environ=ENV)
    result, _ = run_bounded(harness, config)
    assert result.exit_code == 0 and result.counts["sent"] == 2


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("status", "outcome"), [(400, "failed"), (503, "pending")])
def test_a_refusal_whose_body_cannot_be_decoded_keeps_its_status(
    harness: Harness, faulty: Callable[..., FaultyServer], status: int, outcome: str
) -> None:
    server = faulty("lying_gzip", status=status, body=b"plain words, not gzip")
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(destination("segment", server.url) + harness.audience("VIP"), environ=ENV)
    result, _ = run_bounded(harness, config)
    assert result.exit_code == 3 and dict(result.counts)[outcome] == 1
    _, rows = list_diffs(config, run_id=result.run_id)
    assert rows[0]["status"] == outcome
    assert f"HTTP {status}: plain words, not gzip (its body is not the gzip it claims to be)" in rows[0]["error"]


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", "c.toml", cwd=project, env=ENV, timeout=HUNG)


# on SQLite state only: what the command line prints of a transport fault does not depend on the state database,
# and the stalled-then-mended delivery is run on both by test_a_trickling_answer_leaves_the_changes_for_the_next_run
@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("kind", "mode", "status", "code", "count"),
    [
        ("gist", "trickle_body", 200, 3, "pending"),
        ("webhook", "trickle_headers", 200, 3, "pending"),
        ("segment", "lying_gzip", 200, 0, "sent"),
        ("gist", "lying_gzip", 422, 3, "failed"),
        ("webhook", "lying_gzip", 502, 3, "pending"),
    ],
)
def test_the_command_line_reports_transport_faults_without_a_traceback(
    harness: Harness,
    faulty: Callable[..., FaultyServer],
    gist: FakeGist,
    receiver: CaptureServer,
    kind: str,
    mode: Mode,
    status: int,
    code: int,
    count: str,
) -> None:
    server = faulty(mode, status=status)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    timeout = STALLED if mode.startswith("trickle") else TIMEOUT
    body = destination(kind, server.url, timeout=timeout) + harness.audience("VIP")
    harness.config_file(body, name="c.toml")
    proc = cli(harness.tmp_path, "run")
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    # what the command recorded, read in-process (the ``runs`` command's own output is tests/cli's)
    assert list_runs(harness.config(body, environ=ENV))[0]["counts"][count] == 2
    if code:  # the destination mends: the next run (in-process: the command line's part was above) delivers it
        mended = {"gist": gist.url, "webhook": receiver.url}[kind]
        assert (
            harness.run(harness.config(destination(kind, mended) + harness.audience("VIP"), environ=ENV)).exit_code == 0
        )
        assert set(gist.contacts) == {"u1", "u2"} if kind == "gist" else len(receiver.requests) == 2


def test_a_retry_after_longer_than_the_cap_leaves_the_changes_pending(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(5)})
    config = harness.config(
        destination("gist", gist.url, concurrency=1, max_retries=5) + harness.audience("VIP"), environ=ENV
    )
    gist.fail_next(1, 429, headers={"Retry-After": "3600"})
    result, elapsed = run_bounded(harness, config, limit=60)  # waiting out even the 120 s cap fails this
    assert elapsed < RUN_BOUND
    assert result.exit_code == 3 and result.status == "partial" and result.counts["pending"] == 5
    assert len(gist.requests) == 1  # not retried early, and nothing more was sent to a destination that said wait
    _, rows = list_diffs(config, run_id=result.run_id)
    assert {r["status"] for r in rows} == {"pending"}
    assert "asked to wait 3600 s (Retry-After), more than the 120 s cap" in (result.error or "")
    assert all("asked to wait 3600 s" in (r["error"] or "") for r in rows), rows
    again = harness.run(config)
    assert again.exit_code == 0 and again.counts["sent"] == 5 and set(gist.contacts) == {f"u{i}" for i in range(5)}


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_a_retry_after_date_past_the_cap_stops_segment_too(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(destination("segment", segment.url, max_retries=5) + harness.audience("VIP"), environ=ENV)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    segment.fail_next(1, 503, headers={"Retry-After": later.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    result, _ = run_bounded(harness, config, limit=60)
    assert result.exit_code == 3 and result.counts["pending"] == 1 and len(segment.requests) == 1
    assert list_runs(config)[0]["status"] == "partial"


def sent_at(request: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(json.loads(request["body"])["sentAt"].replace("Z", "+00:00"))


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_segment_sent_at_is_each_attempts_own(harness: Harness, segment: FakeSegment) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(destination("segment", segment.url) + harness.audience("VIP"), environ=ENV)
    segment.fail_next(1, 503, headers={"Retry-After": "1"})  # the retry goes out at least 1 s after the first try
    assert harness.run(config).exit_code == 0
    first, second = segment.requests
    assert sent_at(second) - sent_at(first) >= dt.timedelta(seconds=1)
    assert json.loads(first["body"])["batch"] == json.loads(second["body"])["batch"]  # the same messages


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_webhook_batch_sent_at_and_signature_are_each_attempts_own(harness: Harness) -> None:
    hook = FakeSegment(path="/hook").start()  # Segment's checks, as a webhook receiver
    try:
        harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
        auth = "Basic " + base64.b64encode(b"segment-write-key:").decode()
        config = harness.config(
            destination("webhook", hook.url, batch_size=10, headers_env={"Authorization": "HOOK_AUTH"})
            + harness.audience("VIP"),
            environ={**ENV, "HOOK_AUTH": auth},
        )
        hook.fail_next(1, 500, headers={"Retry-After": "1"})
        assert harness.run(config).exit_code == 0
        first, second = hook.requests
    finally:
        hook.stop()
    assert sent_at(second) - sent_at(first) >= dt.timedelta(seconds=1)
    for request in (first, second):
        expected = "sha256=" + hmac.new(b"hmac-secret", request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Signature-256"] == expected


@pytest.mark.parametrize("state_url", ["sqlite"], indirect=True)
def test_the_environments_proxy_is_still_used(
    harness: Harness, receiver: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline's transport takes the proxy httpx would have taken from the environment, and NO_PROXY."""
    direct = CaptureServer().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", receiver.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
        proxied = destination("webhook", "http://hooks.example.invalid") + harness.audience("VIP")
        assert harness.run(harness.config(proxied, environ=ENV)).exit_code == 0
        assert [r["path"] for r in receiver.requests] == ["http://hooks.example.invalid/hook"]  # via the proxy
        harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
        direct_config = harness.config(destination("webhook", direct.url) + harness.audience("VIP"), environ=ENV)
        assert harness.run(direct_config).exit_code == 0
        assert len(receiver.requests) == 1 and [r["path"] for r in direct.requests] == ["/hook"]  # not via it
    finally:
        direct.stop()
