"""Segment's HTTP Tracking API: Engage-shaped messages in ``POST /v1/batch``, Basic auth with the write key."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ..changes import Change, Outcome
from ..config import SegmentDestination
from .base import Destination
from .batching import Encoded, body, encode, pack, send_halving
from .http import HttpSender
from .messages import MessageOptions, messages_for, timestamp

MAX_MESSAGE_BYTES = 32 * 1024


class SegmentBatch(Destination):
    """Sends one identify per (user, computation), as Engage does, plus track events when configured.

    Batches hold at most ``max_batch_messages`` messages and ``max_batch_bytes`` bytes; a message over 32 KB is
    failed without being sent; a batch refused with 400 is split until the bad message is isolated. Message ids
    are the changes' deterministic ids, so a re-send after a crash is dropped by Segment as a duplicate.
    """

    def __init__(self, config: SegmentDestination, *, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(config.name)
        self.config = config
        self.options = MessageOptions.of(config)
        self.sender = HttpSender.for_destination(
            config, base_url=config.endpoint, transport=transport, auth=(config.write_key.get_secret_value(), "")
        )

    def _post(self, items: Sequence[Encoded]) -> object:
        return self.sender.post("/v1/batch", content=body(items, timestamp()))

    def deliver(self, changes: Sequence[Change]) -> dict[int, Outcome]:
        results: list[tuple[int, Outcome]] = []
        encoded: list[Encoded] = []
        ts = timestamp()
        for change in changes:
            for message in messages_for(change, self.config.send, self.options, ts=ts):
                data = encode(message)
                if len(data) > MAX_MESSAGE_BYTES:
                    results.append(
                        (
                            change.diff_id,
                            Outcome("failed", f"message is {len(data):,} bytes, over Segment's 32 KB limit; not sent"),
                        )
                    )
                else:
                    encoded.append((change.diff_id, data))
        batches = pack(encoded, max_count=self.config.max_batch_messages, max_bytes=self.config.max_batch_bytes)
        return self.sender.settle(lambda batch: send_halving(self._post, batch), batches, earlier=results)

    def close(self) -> None:
        self.sender.close()
