"""Batched delivery for Segment-spec destinations: packing messages into size-limited batches, and isolating
the message a batch was refused for by splitting it in halves."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import DestinationError, PermanentDestinationError
from ..model import NOT_ATTEMPTED, Encoded, Outcome, OutcomeStatus, merge

__all__ = ["Encoded", "body", "encode", "pack", "send_halving", "unacknowledged"]

_ENVELOPE = len(b'{"batch":[],"sentAt":"2026-01-01T00:00:00.000Z"}') + 16
#: a batch refused with one of these is split to find the bad message; other refusals fail the whole batch
SPLIT_ON = frozenset({400, 413})


def encode(message: dict[str, Any]) -> bytes:
    """Compact JSON bytes of a message."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def body(items: Sequence[Encoded], sent_at: str) -> bytes:
    """The ``{"batch": [...], "sentAt": ...}`` envelope around already-encoded messages."""
    return b'{"batch":[' + b",".join(m for _, m in items) + b'],"sentAt":"' + sent_at.encode() + b'"}'


def pack(items: Iterable[Encoded], *, max_count: int, max_bytes: int) -> list[list[Encoded]]:
    """Group messages, in order, into batches of at most ``max_count`` messages and ``max_bytes`` of body."""
    batches: list[list[Encoded]] = []
    current: list[Encoded] = []
    size = _ENVELOPE
    for item in items:
        added = len(item[1]) + 1
        if current and (len(current) >= max_count or size + added > max_bytes):
            batches.append(current)
            current, size = [], _ENVELOPE
        current.append(item)
        size += added
    if current:
        batches.append(current)
    return batches


def send_halving(post: Callable[[Sequence[Encoded]], object], items: Sequence[Encoded]) -> list[tuple[int, Outcome]]:
    """Post ``items`` as one batch; when it is refused as a whole (400/413), split it until the culprits are
    alone, and fail only them. Transient failures leave the batch pending; an error that stops the destination
    (CredentialsRejected, RetryAfterTooLong) propagates.

    Returns the outcome of each message that was **not** acknowledged (the others were), so that a batch taken
    whole costs no per-message work.
    """
    try:
        post(items)
    except DestinationError as exc:
        if exc.stops_destination:
            raise
        if isinstance(exc, PermanentDestinationError):
            if exc.status_code in SPLIT_ON and len(items) > 1:
                half = len(items) // 2
                return send_halving(post, items[:half]) + send_halving(post, items[half:])
            return [(i, Outcome(OutcomeStatus.FAILED, str(exc))) for i, _ in items]
        return [(i, Outcome(OutcomeStatus.PENDING, str(exc))) for i, _ in items]
    return []


def unacknowledged(
    batches: Sequence[Sequence[Encoded]],
    done: Iterable[tuple[int, list[tuple[int, Outcome]]]],
    earlier: Iterable[tuple[int, Outcome]] = (),
) -> dict[int, Outcome]:
    """The outcome of each change that was not acknowledged, merged per change (the worst wins), from
    ``earlier`` outcomes and the batches that were sent (``done``: a batch's index in ``batches`` and what
    :func:`send_halving` returned for it). The changes of batches missing from ``done`` were not attempted."""
    done = list(done)
    finished = {index for index, _ in done}
    missing = [(i, NOT_ATTEMPTED) for index, batch in enumerate(batches) if index not in finished for i, _ in batch]
    return merge([*earlier, *(o for _, outcomes in done for o in outcomes), *missing])
