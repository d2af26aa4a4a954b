"""The HTTP layer shared by the HTTP destinations: one client, one retry policy, one error mapping.

What an attempt's answer means, for every HTTP destination:

- **Acknowledged**: a 2xx status line, then the rest of the response arrived whole (its headers and its body as
  framed by ``Content-Length`` or chunking), by the deadline. No destination needs a 2xx body (Gist reports
  errors with 4xx statuses), so it is read but not decoded: a 2xx whose body cannot be decoded (a
  ``Content-Encoding: gzip`` that is not gzip, text that is not JSON) is still acknowledged.
- **Transient** (retried with exponential backoff and full jitter, honouring ``Retry-After``; then the change
  stays pending): network errors; the ``timeout`` passing in any phase (it is a deadline for the whole request:
  connecting, sending, waiting for the status line, reading the body, see :mod:`.deadline`); a response that did
  not arrive whole, even after a 2xx status line (the connection closed or the framing broke mid-body, the
  deadline passed while a body trickled); 408, 429 and 5xx except 501 and 505.
- **Permanent**: every other 4xx, with the destination's own reason. A refusal's body is read only for that
  reason: when it cannot be read or decoded the status still decides, and the reason says so.
- 401 and 403 raise :class:`CredentialsRejected`, and a ``Retry-After`` longer than the cap raises
  :class:`RetryAfterTooLong`: both stop the destination for the rest of the run (``stops_destination``).

Nothing raised by httpx escapes as itself: every failure is one of the errors above, so none ends in a traceback.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ..errors import (
    CredentialsRejected,
    DestinationError,
    PermanentDestinationError,
    RetryAfterTooLong,
    TransientDestinationError,
)
from ..model import Outcome, merge
from ..redact import scrub
from .batching import Encoded, send_halving, unacknowledged
from .deadline import deadline_client, within

T = TypeVar("T")
R = TypeVar("R")

NOT_RETRIED_5XX = frozenset({501, 505})
MAX_ERROR_TEXT = 500
#: bytes of a refusal's body read for its reason; the rest is not read
MAX_ERROR_BODY = 64 * 1024
#: the response extension holding what could not be read of a refusal, for its reason
NOTE = "audience_sync.note"
#: a request's body, or how to make it for each attempt (a batch's ``sentAt`` is the attempt's time)
Content = bytes | Callable[[], bytes]
#: extra headers, or how to make them from the attempt's body (a signature of that body)
Headers = Mapping[str, str] | Callable[[bytes], Mapping[str, str] | None] | None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried."""

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): Retry-After if given, else jittered."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        return rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


def is_transient_status(status: int) -> bool:
    """True for the statuses worth retrying: 408, 429 and 5xx except 501/505."""
    return status in (408, 429) or (500 <= status < 600 and status not in NOT_RETRIED_5XX)


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def error_text(response: httpx.Response) -> str:
    """The destination's own reason: Gist-style ``errors[].message``, a ``message``/``error`` field, or text;
    scrubbed of our secrets (a destination may echo our request back)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    reason = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            parts = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
            reason = "; ".join(p for p in parts if p and p != "None") or None
        reason = reason or body.get("message") or body.get("error")
    text = scrub(str(reason) if reason else " ".join(response.text.split()))[:MAX_ERROR_TEXT]
    text = " ".join(t for t in (text, response.extensions.get(NOTE, "")) if t)
    return f"HTTP {response.status_code}: {text}" if text else f"HTTP {response.status_code}"


def check(response: httpx.Response, destination: str) -> httpx.Response:
    """Return a 2xx response; raise the error its status maps to otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return response
    if status in (401, 403):
        raise CredentialsRejected(
            f"destination {destination!r} refused our credentials ({error_text(response)}): "
            f"check the key in the environment variable the config names",
            destination=destination,
            status_code=status,
        )
    if is_transient_status(status):
        raise TransientDestinationError(
            f"destination {destination!r}: {error_text(response)}",
            destination=destination,
            status_code=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise PermanentDestinationError(f"{error_text(response)}", destination=destination, status_code=status)


def call_with_retries(
    send: Callable[[], httpx.Response],
    *,
    destination: str,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    before_attempt: Callable[[], None] | None = None,
) -> httpx.Response:
    """Call ``send`` until it succeeds, fails permanently, or ``policy.max_retries`` retries are spent.

    ``before_attempt`` is called right before every attempt, the first included; what it raises ends the call
    at once, unretried. Guarantees: returns only a 2xx response; raises TransientDestinationError (the last
    failure) when retries ran out, RetryAfterTooLong as soon as the destination asks to wait longer than
    ``policy.retry_after_cap`` (never retrying earlier than it asked), PermanentDestinationError or
    CredentialsRejected at once; an httpx error becomes a TransientDestinationError.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        if before_attempt is not None:
            before_attempt()
        try:
            return check(send(), destination)
        except httpx.HTTPError as exc:
            failure = TransientDestinationError(
                f"destination {destination!r}: {type(exc).__name__}: {scrub(str(exc))}", destination=destination
            )
        except TransientDestinationError as exc:
            failure = exc
        if failure.retry_after is not None and failure.retry_after > policy.retry_after_cap:
            raise RetryAfterTooLong(
                f"{failure}: the destination asked to wait {failure.retry_after:g} s (Retry-After), more than the "
                f"{policy.retry_after_cap:g} s cap; nothing more is sent to it in this run and the changes left "
                f"stay pending for the next run",
                destination=destination,
                status_code=failure.status_code,
                retry_after=failure.retry_after,
            ) from None
        attempt += 1
        if attempt > policy.max_retries:
            if not policy.max_retries:
                raise failure
            raise TransientDestinationError(  # the reason a change stays pending says how hard we tried
                f"{failure} (after {policy.max_retries} retries)",
                destination=destination,
                status_code=failure.status_code,
                retry_after=failure.retry_after,
            ) from None
        sleep(policy.delay(attempt, failure.retry_after, rng))


def _drain(chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def _whole_body(chunks: Iterator[bytes]) -> bytes:
    """Read an answer to its end (an error on the way is raised, as :func:`_drain` does) and keep its first
    :data:`MAX_ERROR_BODY` bytes."""
    body = b""
    for chunk in chunks:
        if len(body) < MAX_ERROR_BODY:
            body += chunk
    return body[:MAX_ERROR_BODY]


def _refusal_body(response: httpx.Response) -> tuple[bytes, str]:
    """Up to :data:`MAX_ERROR_BODY` bytes of a refusal's raw body, and a note when it could not all be read."""
    body = b""
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                return body[:MAX_ERROR_BODY], ""
    except httpx.HTTPError as exc:
        return body, f"(its body could not be read: {type(exc).__name__})"
    return body, ""


def _answer(status: int, headers: httpx.Headers, body: bytes, note: str) -> httpx.Response:
    """The answer as a read response: a refusal's body decoded when it can be (as sent otherwise, with a note)."""
    if 200 <= status < 300 and not body:  # acknowledged: the body is not needed, so it is not decoded
        kept = [(k, v) for k, v in headers.multi_items() if k.lower() != "content-encoding"]
        return httpx.Response(status, headers=kept)
    try:
        response = httpx.Response(status, headers=headers, content=body)
    except httpx.DecodingError:
        kept = [(k, v) for k, v in headers.multi_items() if k.lower() != "content-encoding"]
        response = httpx.Response(status, headers=kept, content=body)
        note = note or f"(its body is not the {headers.get('Content-Encoding')} it claims to be)"
    if note:
        response.extensions[NOTE] = note
    return response


class TokenBucket:
    """Paces calls to ``rate`` per second, allowing bursts of ``burst`` calls; safe to share between threads.

    Over any long stretch the number of calls is at most ``rate * seconds + burst``.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until a call may be made, then take its token."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


class HttpSender:
    """One pooled httpx client per destination, with its retry policy, rate limit and worker pool.

    ``post`` is safe to call from many threads; ``map`` runs a function over items on at most
    ``concurrency`` threads. ``timeout`` is a deadline for each attempt as a whole. ``before_attempt`` is called
    right before every attempt (after the rate limit let it go; what it raises ends the call unretried). Once
    :meth:`stop` is called (credentials refused, a Retry-After over the cap), attempts not yet started raise the
    stored error instead of going out.
    """

    def __init__(
        self,
        *,
        destination: str,
        base_url: str,
        timeout: float,
        concurrency: int,
        policy: RetryPolicy,
        rate_limit: float | None = None,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        before_attempt: Callable[[], None] | None = None,
    ) -> None:
        self.destination = destination
        self.policy = policy
        self.concurrency = concurrency
        self.timeout = timeout
        self.bucket = TokenBucket(rate_limit, burst=1.0, sleep=sleep) if rate_limit else None
        self.before_attempt = before_attempt
        #: keep (up to MAX_ERROR_BODY bytes of) a 2xx answer's body, for a destination whose 2xx can still carry
        #: ``errors`` (Gist); others only need it to have arrived whole
        self.keep_answers = False
        self._sleep = sleep
        self._stopped: DestinationError | None = None
        base = base_url.rstrip("/")
        options: dict[str, Any] = {
            "base_url": base,
            "headers": {"User-Agent": "audience-sync", **(headers or {})},
            "auth": auth,
            "timeout": timeout,
            "limits": httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        }
        # the real transport bounds each attempt by ``timeout`` as a whole; a test's transport is taken as given
        self.client = (
            deadline_client(proxy_for=base, **options)
            if transport is None
            else httpx.Client(transport=transport, **options)
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"send-{destination}")

    @classmethod
    def for_destination(
        cls, config: Any, *, base_url: str, transport: httpx.BaseTransport | None = None, **extra: Any
    ) -> HttpSender:
        """A sender with a destination config's ``timeout``, ``concurrency``, ``max_retries`` and ``rate_limit``."""
        return cls(
            destination=config.name,
            base_url=base_url,
            timeout=config.timeout,
            concurrency=config.concurrency,
            policy=RetryPolicy(max_retries=config.max_retries),
            rate_limit=config.rate_limit,
            transport=transport,
            **extra,
        )

    def settle(
        self,
        fn: Callable[[T], list[tuple[int, Outcome]]],
        items: Iterable[T],
        earlier: Sequence[tuple[int, Outcome]] = (),
    ) -> dict[int, Outcome]:
        """Run ``fn`` over ``items`` on the pool and merge the outcomes per change (with ``earlier`` ones).

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is raised
        carrying the merged outcomes of what completed, so that the caller records them.
        """
        done, refused = self.map_settled(fn, items)
        outcomes = merge([*earlier, *done])
        if refused is not None:
            refused.partial = outcomes
            raise refused
        return outcomes

    def settle_batches(
        self,
        post: Callable[[Sequence[Encoded]], object],
        batches: Sequence[Sequence[Encoded]],
        earlier: Sequence[tuple[int, Outcome]] = (),
    ) -> dict[int, Outcome]:
        """Post ``batches`` on the pool with :func:`~.batching.send_halving`; return the outcome of each change
        that was not acknowledged (merged with ``earlier`` ones): every other change of the batches was.

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is raised with
        that same mapping as its ``partial``, the changes of batches that did not complete counting as not attempted.
        """
        done, refused = self.map_settled(lambda item: [(item[0], send_halving(post, item[1]))], enumerate(batches))
        outcomes = unacknowledged(batches, done, earlier)
        if refused is not None:
            refused.partial = outcomes
            raise refused
        return outcomes

    def stop(self, error: DestinationError) -> None:
        """Refuse every call not yet started with ``error``."""
        self._stopped = error

    def post(self, path: str, *, content: Content, headers: Headers = None) -> httpx.Response:
        """POST JSON ``content`` with retries; a 2xx response or the error its failure maps to.

        ``content`` and ``headers`` may be functions, called for every attempt, so that what depends on the moment
        of sending (a batch's ``sentAt``, and a signature of the body) is the attempt's own.
        """

        def attempt() -> httpx.Response:
            body = content() if callable(content) else content
            extra = headers(body) if callable(headers) else headers
            return self._exchange(path, body, {"Content-Type": "application/json", **(extra or {})})

        try:
            return call_with_retries(
                attempt, destination=self.destination, policy=self.policy, sleep=self._sleep, before_attempt=self._ready
            )
        except DestinationError as exc:
            if exc.stops_destination:
                self.stop(exc)
            raise

    def get(self, path: str, *, params: dict[str, Any] | None = None) -> httpx.Response | None:
        """GET ``path`` with the same retries, rate limit and 429 / ``Retry-After`` handling as :meth:`post`: the
        2xx response (read whole), None for a 404 (the thing is not there), or the error its failure maps to."""

        def attempt() -> httpx.Response:
            try:
                return self.client.get(path, params=params)
            except httpx.TimeoutException as exc:
                raise TransientDestinationError(
                    f"destination {self.destination!r}: no answer within the {self.timeout:g} s timeout "
                    f"({type(exc).__name__})",
                    destination=self.destination,
                ) from None

        try:
            return call_with_retries(
                attempt, destination=self.destination, policy=self.policy, sleep=self._sleep, before_attempt=self._ready
            )
        except PermanentDestinationError as exc:
            if exc.status_code == 404:
                return None
            raise
        except DestinationError as exc:
            if exc.stops_destination:
                self.stop(exc)
            raise

    def _ready(self) -> None:
        """Before every attempt: refuse it when the destination was stopped, pace it, then the caller's check."""
        if self._stopped is not None:
            raise self._stopped
        if self.bucket is not None:
            self.bucket.acquire()
        if self.before_attempt is not None:
            self.before_attempt()

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """One attempt, ended by the deadline whatever its phase; the answer as read (see the module's contract).

        Raises TransientDestinationError for every failure before the answer arrived whole.
        """
        request = self.client.build_request("POST", path, content=body, headers=headers)
        phase = "connecting, sending or waiting for the status line"
        try:
            with within(self.timeout):
                response = self.client.send(request, stream=True)
                if response.is_stream_consumed:  # built in memory (a test's transport): nothing left to read
                    return response
                try:
                    phase = "reading the answer's body"
                    if 200 <= response.status_code < 300 and self.keep_answers:
                        refusal, note = _whole_body(response.iter_raw()), ""  # arrived whole: acknowledged
                    elif 200 <= response.status_code < 300:
                        _drain(response.iter_raw())  # arrived whole: acknowledged
                        refusal, note = b"", ""
                    else:
                        refusal, note = _refusal_body(response)
                finally:
                    response.close()
        except httpx.TimeoutException as exc:
            raise TransientDestinationError(
                f"destination {self.destination!r}: no complete answer within the {self.timeout:g} s timeout "
                f"({type(exc).__name__} while {phase})",
                destination=self.destination,
            ) from None
        except httpx.HTTPError as exc:
            raise TransientDestinationError(
                f"destination {self.destination!r}: {type(exc).__name__} while {phase}: {scrub(str(exc))}",
                destination=self.destination,
            ) from None
        return _answer(response.status_code, response.headers, refusal, note)

    def map_settled(self, fn: Callable[[T], list[R]], items: Iterable[T]) -> tuple[list[R], DestinationError | None]:
        """Run ``fn`` over ``items`` on the worker pool and concatenate the results of the calls that finished.

        When an error stopped the destination (credentials refused, a Retry-After over the cap), it is returned
        beside the results of the items that completed, so that what was delivered before it can still be recorded.
        """

        def run(item: T) -> tuple[list[R], DestinationError | None]:
            try:
                return fn(item), None
            except DestinationError as exc:
                if not exc.stops_destination:
                    raise
                return [], exc

        done: list[R] = []
        refused: DestinationError | None = None
        for results, error in self._pool.map(run, items):
            done.extend(results)
            refused = refused or error
        return done, refused

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def abort(self) -> None:
        """Start no more calls and return without waiting for those under way (their threads end with them)."""
        self._stopped = TransientDestinationError(
            f"destination {self.destination!r}: stopped at once", destination=self.destination
        )
        self._pool.shutdown(wait=False, cancel_futures=True)
