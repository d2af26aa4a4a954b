"""Segment's HTTP Tracking API: Engage-shaped messages in ``POST /v1/batch``, Basic auth with the write key."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx

from ..config import SegmentDestination
from ..model import Outcome, OutcomeStatus
from .base import MessageDestination
from .batching import Encoded, body, pack
from .http import HttpSender
from .messages import MessageOptions, timestamp

MAX_MESSAGE_BYTES = 32 * 1024


class SegmentBatch(MessageDestination):
    """Sends one identify per (user, computation), as Engage does, plus track events when configured.

    Batches hold at most ``max_batch_messages`` messages and ``max_batch_bytes`` bytes; a message over 32 KB is
    failed without being sent; a batch refused with 400 is split until the bad message is isolated. Message ids
    are the changes' deterministic ids, so a re-send after a crash is dropped by Segment as a duplicate.
    """

    def __init__(
        self,
        config: SegmentDestination,
        *,
        transport: httpx.BaseTransport | None = None,
        before_attempt: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config.name, before_attempt=before_attempt)
        self.config = config
        self.send = config.send
        self.options = MessageOptions.of(config)
        self.sender = HttpSender.for_destination(
            config,
            base_url=config.endpoint,
            transport=transport,
            auth=(config.write_key.get_secret_value(), ""),
            before_attempt=self.check_fence,
        )

    def _post(self, items: Sequence[Encoded]) -> object:
        # the envelope is made for every attempt: ``sentAt`` is when this attempt is sent, as Segment reads it
        return self.sender.post("/v1/batch", content=lambda: body(items, timestamp()))

    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        oversized = [item for item in messages if len(item[1]) > MAX_MESSAGE_BYTES]
        if oversized:
            messages = [item for item in messages if len(item[1]) <= MAX_MESSAGE_BYTES]
        refused = [
            (i, Outcome(OutcomeStatus.FAILED, f"message is {len(data):,} bytes, over Segment's 32 KB limit; not sent"))
            for i, data in oversized
        ]
        batches = pack(messages, max_count=self.config.max_batch_messages, max_bytes=self.config.max_batch_bytes)
        return self.sender.settle_batches(self._post, batches, earlier=refused)

    def close(self) -> None:
        self.sender.close()

    def abort(self) -> None:
        self.sender.abort()
