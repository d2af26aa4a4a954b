"""The HTTP layer shared by the HTTP destinations: one client, one retry policy, one error mapping.

Transient (retried with exponential backoff and full jitter, honouring ``Retry-After``): network errors,
timeouts, 408, 429 and 5xx except 501 and 505. Permanent: every other 4xx, with the destination's own
reason. 401 and 403 raise :class:`CredentialsRejected`, which stops the destination's run at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ..changes import Outcome, merge
from ..errors import CredentialsRejected, DestinationError, PermanentDestinationError, TransientDestinationError
from .batching import Encoded, send_halving, unacknowledged

T = TypeVar("T")
R = TypeVar("R")

NOT_RETRIED_5XX = frozenset({501, 505})
MAX_ERROR_TEXT = 500


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
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def error_text(response: httpx.Response) -> str:
    """The destination's own reason: Gist-style ``errors[].message``, a ``message``/``error`` field, or text."""
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
    text = str(reason) if reason else " ".join(response.text.split())
    return f"HTTP {response.status_code}: {text[:MAX_ERROR_TEXT]}" if text else f"HTTP {response.status_code}"


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
) -> httpx.Response:
    """Call ``send`` until it succeeds, fails permanently, or ``policy.max_retries`` retries are spent.

    Guarantees: returns only a 2xx response; raises TransientDestinationError (the last failure) when
    retries ran out, PermanentDestinationError or CredentialsRejected at once.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return check(send(), destination)
        except httpx.TransportError as exc:
            failure = TransientDestinationError(
                f"destination {destination!r}: {type(exc).__name__}: {exc}", destination=destination
            )
        except TransientDestinationError as exc:
            failure = exc
        attempt += 1
        if attempt > policy.max_retries:
            raise failure
        sleep(policy.delay(attempt, failure.retry_after, rng))


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
    ``concurrency`` threads. Once :meth:`stop` is called (credentials refused), calls not yet started raise
    the stored error instead of going out.
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
        #: called right before every attempt goes out, retries included (the run lock's fence check)
        self.before_attempt = before_attempt or (lambda: None)
        self.policy = policy
        self.concurrency = concurrency
        self.bucket = TokenBucket(rate_limit, burst=1.0, sleep=sleep) if rate_limit else None
        self._sleep = sleep
        self._stopped: DestinationError | None = None
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"User-Agent": "audience-sync", **(headers or {})},
            auth=auth,
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
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

        When the destination refused our credentials, the refusal is raised carrying the merged outcomes of what
        completed, so that the caller records them.
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

        When the destination refused our credentials, the refusal is raised with that same mapping as its
        ``partial``, the changes of batches that did not complete counting as not attempted.
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

    def post(self, path: str, *, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``content`` (JSON bytes) with retries; a 2xx response or the error its failure maps to."""

        def send() -> httpx.Response:
            if self._stopped is not None:
                raise self._stopped
            if self.bucket is not None:
                self.bucket.acquire()
            self.before_attempt()  # after any wait: the last moment before the request goes out
            return self.client.post(
                path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
            )

        try:
            return call_with_retries(send, destination=self.destination, policy=self.policy, sleep=self._sleep)
        except CredentialsRejected as exc:
            self.stop(exc)
            raise

    def map_settled(self, fn: Callable[[T], list[R]], items: Iterable[T]) -> tuple[list[R], CredentialsRejected | None]:
        """Run ``fn`` over ``items`` on the worker pool and concatenate the results of the calls that finished.

        When the destination refused our credentials, the refusal is returned beside the results of the items
        that completed, so that what was delivered before it can still be recorded.
        """

        def run(item: T) -> tuple[list[R], CredentialsRejected | None]:
            try:
                return fn(item), None
            except CredentialsRejected as exc:
                return [], exc

        done: list[R] = []
        refused: CredentialsRejected | None = None
        for results, error in self._pool.map(run, items):
            done.extend(results)
            refused = refused or error
        return done, refused

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()
