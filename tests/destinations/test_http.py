"""Unit tests of the retry policy, the rate limiter and batch splitting, over httpx.MockTransport."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Sequence

import httpx
import pytest

from audience_sync.destinations.batching import body, encode, pack, send_halving
from audience_sync.destinations.http import (
    HttpSender,
    RetryPolicy,
    TokenBucket,
    call_with_retries,
    error_text,
    parse_retry_after,
)
from audience_sync.errors import (
    CredentialsRejected,
    PermanentDestinationError,
    RetryAfterTooLong,
    TransientDestinationError,
)
from audience_sync.model import SENT, Outcome, OutcomeStatus, merge


def sender(handler: httpx.MockTransport, sleeps: list[float], retries: int = 3) -> HttpSender:
    return HttpSender(
        destination="d",
        base_url="http://127.0.0.1:9",
        timeout=1,
        concurrency=2,
        policy=RetryPolicy(max_retries=retries),
        transport=handler,
        sleep=sleeps.append,
    )


def scripted(*statuses: int, headers: dict[str, str] | None = None) -> tuple[httpx.MockTransport, list[int]]:
    seen: list[int] = []
    script = list(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        status = script.pop(0) if script else 200
        seen.append(status)
        return httpx.Response(status, headers=headers or {}, json={"errors": [{"code": "x", "message": f"s{status}"}]})

    return httpx.MockTransport(handle), seen


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    transport, seen = scripted(status, status)
    sleeps: list[float] = []
    with_sender = sender(transport, sleeps)
    assert with_sender.post("/x", content=b"{}").status_code == 200
    assert seen == [status, status, 200] and len(sleeps) == 2
    with_sender.close()


@pytest.mark.parametrize("status", [400, 404, 409, 422, 501, 505])
def test_permanent_statuses_are_not_retried(status: int) -> None:
    transport, seen = scripted(status)
    with_sender = sender(transport, [])
    with pytest.raises(PermanentDestinationError, match=f"HTTP {status}: s{status}") as err:
        with_sender.post("/x", content=b"{}")
    assert seen == [status] and err.value.status_code == status
    with_sender.close()


def test_credentials_rejected_stops_every_later_call() -> None:
    transport, seen = scripted(401)
    with_sender = sender(transport, [])
    with pytest.raises(CredentialsRejected):
        with_sender.post("/x", content=b"{}")
    with pytest.raises(CredentialsRejected):
        with_sender.post("/x", content=b"{}")
    assert seen == [401]  # the second call never went out
    with_sender.close()


def test_retries_run_out_and_the_last_failure_is_raised() -> None:
    transport, seen = scripted(503, 503, 503)
    sleeps: list[float] = []
    with_sender = sender(transport, sleeps, retries=2)
    with pytest.raises(TransientDestinationError, match="HTTP 503"):
        with_sender.post("/x", content=b"{}")
    assert len(seen) == 3 and len(sleeps) == 2
    with_sender.close()


def test_network_errors_are_retried() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    sleeps: list[float] = []
    assert (
        call_with_retries(
            lambda: httpx.Client(transport=httpx.MockTransport(handle)).get("http://127.0.0.1/"),
            destination="d",
            policy=RetryPolicy(max_retries=3),
            sleep=sleeps.append,
        ).status_code
        == 200
    )
    assert len(calls) == 3 and len(sleeps) == 2


def test_retry_after_seconds_and_dates_are_honoured() -> None:
    transport, _ = scripted(429, headers={"Retry-After": "7"})
    sleeps: list[float] = []
    sender(transport, sleeps).post("/x", content=b"{}")
    assert sleeps == [7.0]
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_retry_after_over_the_cap_is_never_cut_short_and_stops_the_destination() -> None:
    transport, seen = scripted(429, headers={"Retry-After": "3600"})
    sleeps: list[float] = []
    with_sender = sender(transport, sleeps, retries=5)
    with pytest.raises(RetryAfterTooLong, match=r"asked to wait 3600 s .* more than the 120 s cap") as err:
        with_sender.post("/x", content=b"{}")
    assert isinstance(err.value, TransientDestinationError) and err.value.stops_destination
    assert sleeps == [] and seen == [429]  # not retried early
    with pytest.raises(RetryAfterTooLong):
        with_sender.post("/y", content=b"{}")
    assert seen == [429]  # nothing more went out in this run
    with_sender.close()


def test_before_attempt_is_called_before_every_attempt_and_may_stop_it() -> None:
    transport, seen = scripted(503, 503)
    calls: list[int] = []
    with_sender = HttpSender(
        destination="d",
        base_url="http://127.0.0.1:9",
        timeout=1,
        concurrency=1,
        policy=RetryPolicy(max_retries=3),
        transport=transport,
        sleep=lambda _: None,
        before_attempt=lambda: calls.append(len(seen)),
    )
    with_sender.post("/x", content=b"{}")
    assert calls == [0, 1, 2] and seen == [503, 503, 200]  # right before each attempt, retries included

    class Fenced(Exception):
        pass

    def refuse() -> None:
        raise Fenced

    with_sender.before_attempt = refuse
    with pytest.raises(Fenced):
        with_sender.post("/x", content=b"{}")
    assert len(seen) == 3  # what it raised stopped the attempt before it went out, unretried
    with_sender.close()


def test_content_and_headers_are_made_for_every_attempt() -> None:
    bodies: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        assert request.headers["X-Sig"] == request.content.decode().upper()
        return httpx.Response(503 if len(bodies) == 1 else 200)

    counter = iter(range(100))
    with_sender = sender(httpx.MockTransport(handle), [])
    with_sender.post(
        "/x", content=lambda: f"attempt-{next(counter)}".encode(), headers=lambda b: {"X-Sig": b.decode().upper()}
    )
    assert bodies == [b"attempt-0", b"attempt-1"]
    with_sender.close()


def test_backoff_grows_exponentially_with_jitter_under_a_cap() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=4)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert max(delays) <= ceiling and min(delays) >= 0
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


def test_error_text_reads_gist_and_plain_bodies() -> None:
    gist = httpx.Response(422, json={"errors": [{"code": "a", "message": "Email is invalid"}, {"code": "b"}]})
    assert error_text(gist) == "HTTP 422: Email is invalid; b"
    assert error_text(httpx.Response(400, text="bad\n request")) == "HTTP 400: bad request"
    assert error_text(httpx.Response(500)) == "HTTP 500"


def test_token_bucket_paces_to_the_rate() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    bucket = TokenBucket(10, burst=1, clock=lambda: clock[0], sleep=sleep)
    for _ in range(101):
        bucket.acquire()
    assert clock[0] == pytest.approx(10.0)  # 100 intervals of 1/10 s after the first call


def test_pack_respects_count_and_bytes() -> None:
    items = [(i, encode({"n": i, "pad": "x" * 50})) for i in range(30)]
    batches = pack(items, max_count=8, max_bytes=10_000)
    assert [len(b) for b in batches] == [8, 8, 8, 6]
    small = pack(items, max_count=100, max_bytes=400)
    assert all(len(body(b, "2026-01-01T00:00:00.000Z")) <= 400 for b in small)
    assert [i for b in small for i, _ in b] == list(range(30))


def test_halving_isolates_the_bad_messages() -> None:
    posted: list[int] = []

    def post(items: Sequence[tuple[int, bytes]]) -> None:
        posted.append(len(items))
        if any(json.loads(m)["bad"] for _, m in items):
            raise PermanentDestinationError("HTTP 400: invalid", destination="d", status_code=400)

    items = [(i, encode({"bad": i in (3, 11)})) for i in range(16)]
    unacknowledged = dict(send_halving(post, items))  # only what was not acknowledged: the other 14 were
    assert {i: o.status for i, o in unacknowledged.items()} == {3: "failed", 11: "failed"}
    assert "HTTP 400: invalid" in (unacknowledged[3].error or "")
    assert len(posted) < 16


def test_other_permanent_errors_fail_the_batch_and_transient_ones_keep_it_pending() -> None:
    def refuse(items: object) -> None:
        raise PermanentDestinationError("HTTP 404", destination="d", status_code=404)

    def flaky(items: object) -> None:
        raise TransientDestinationError("HTTP 503", destination="d", status_code=503)

    items = [(1, b"{}"), (2, b"{}")]
    assert {o.status for _, o in send_halving(refuse, items)} == {"failed"}
    assert {o.status for _, o in send_halving(flaky, items)} == {"pending"}


def test_merge_keeps_the_worst_outcome_per_change() -> None:
    pending, failed = Outcome(OutcomeStatus.PENDING, "t"), Outcome(OutcomeStatus.FAILED, "x")
    merged = merge([(1, SENT), (1, pending), (2, SENT), (3, failed), (3, SENT)])
    assert merged == {1: pending, 2: SENT, 3: failed}
    assert Outcome(OutcomeStatus.SENT) == SENT and SENT.status == "sent"  # statuses are their stored text
