"""The HTTP sender shared by the HTTP destinations: one pooled httpx client per destination.

Each attempt is one exchange ended by its deadline whatever the phase (:mod:`.deadline`): a 2xx counts once the
rest of the response arrived whole, and a refusal's body is read (up to :data:`MAX_ERROR_BODY` bytes) only for its
reason. What an answer then means and how a call is retried is the contract of ``answers.py``; the rate limit and
the worker pool are ``pool.py``'s. Their public names are importable from here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from ..errors import DestinationError, PermanentDestinationError, TransientDestinationError
from ..redact import scrub
from .answers import (
    MAX_ERROR_TEXT,
    NOT_RETRIED_5XX,
    NOTE,
    RetryPolicy,
    call_with_retries,
    check,
    error_text,
    is_transient_status,
    parse_retry_after,
)
from .deadline import deadline_client, within
from .pool import TokenBucket, WorkerPool

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_ERROR_TEXT",
    "NOTE",
    "NOT_RETRIED_5XX",
    "Content",
    "Headers",
    "HttpSender",
    "RetryPolicy",
    "TokenBucket",
    "WorkerPool",
    "call_with_retries",
    "check",
    "error_text",
    "is_transient_status",
    "parse_retry_after",
]

#: bytes of a refusal's body read for its reason; the rest is not read
MAX_ERROR_BODY = 64 * 1024
#: a request's body, or how to make it for each attempt (a batch's ``sentAt`` is the attempt's time)
Content = bytes | Callable[[], bytes]
#: extra headers, or how to make them from the attempt's body (a signature of that body)
Headers = Mapping[str, str] | Callable[[bytes], Mapping[str, str] | None] | None


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


class HttpSender(WorkerPool):
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
        super().__init__(destination, concurrency)

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

    def close(self) -> None:
        self.shutdown(wait=True)
        self.client.close()

    def abort(self) -> None:
        """Start no more calls and return without waiting for those under way (their threads end with them)."""
        self._stopped = TransientDestinationError(
            f"destination {self.destination!r}: stopped at once", destination=self.destination
        )
        self.shutdown(wait=False)
