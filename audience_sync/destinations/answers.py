"""What an HTTP destination's answer means, and how a call is retried: one retry policy, one error mapping.

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
The sender (``http.py``) reads each attempt's answer by this contract.
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

from ..errors import CredentialsRejected, PermanentDestinationError, RetryAfterTooLong, TransientDestinationError
from ..redact import scrub

NOT_RETRIED_5XX = frozenset({501, 505})
MAX_ERROR_TEXT = 500
#: the response extension holding what could not be read of a refusal, for its reason
NOTE = "audience_sync.note"


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
