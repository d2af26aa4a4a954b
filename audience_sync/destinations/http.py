"""The HTTP layer shared by the HTTP destinations: one client, one retry policy, one error mapping.

Transient (retried with exponential backoff and full jitter, honouring ``Retry-After``): network errors,
timeouts, 408, 429 and 5xx except 501 and 505. Permanent: every other 4xx, with the destination's own
reason. 401 and 403 raise :class:`CredentialsRejected`, which stops the destination's run at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import CredentialsRejected, PermanentDestinationError, TransientDestinationError

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
