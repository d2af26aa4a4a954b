"""A generic webhook: Segment-spec JSON, one message per request or ``{"batch": [...]}``, optionally signed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

import httpx

from ..config import WebhookDestination
from ..model import Outcome
from .base import MessageDestination
from .batching import Encoded, body, pack
from .http import HttpSender
from .messages import MessageOptions, timestamp

SIGNATURE_PREFIX = "sha256="


def signature(secret: bytes, payload: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of the exact request body."""
    return SIGNATURE_PREFIX + hmac.new(secret, payload, hashlib.sha256).hexdigest()


class Webhook(MessageDestination):
    """POSTs Engage-shaped messages to ``url``.

    With ``batch_size = 0`` each message is its own request (body: the message); otherwise up to
    ``batch_size`` messages go in ``{"batch": [...], "sentAt": ...}``. With ``signing_secret_env`` every
    request carries ``<signature_header>: sha256=<hex HMAC-SHA256 of the body>``.
    """

    def __init__(
        self,
        config: WebhookDestination,
        *,
        transport: httpx.BaseTransport | None = None,
        before_attempt: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config.name, before_attempt=before_attempt)
        self.config = config
        self.send = config.send
        self.options = MessageOptions.of(config)
        secret = config.signing_secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self.sender = HttpSender.for_destination(
            config,
            base_url=config.url,
            transport=transport,
            before_attempt=self.check_fence,
            headers={k: v.get_secret_value() for k, v in config.secret_headers.items()},
        )

    def _payload(self, items: Sequence[Encoded]) -> bytes:
        return items[0][1] if self.config.batch_size == 0 else body(items, timestamp())

    def _signed(self, payload: bytes) -> dict[str, str] | None:
        return {self.config.signature_header: signature(self._secret, payload)} if self._secret else None

    def _post(self, items: Sequence[Encoded]) -> object:
        # made for every attempt: a batch's ``sentAt`` is the attempt's, and the signature is of that very body
        return self.sender.post(self.config.url, content=lambda: self._payload(items), headers=self._signed)

    def deliver_messages(self, messages: Sequence[Encoded]) -> dict[int, Outcome]:
        if self.config.batch_size == 0:
            batches = [[item] for item in messages]
        else:
            batches = pack(messages, max_count=self.config.batch_size, max_bytes=500_000)
        return self.sender.settle_batches(self._post, batches)

    def close(self) -> None:
        self.sender.close()

    def abort(self) -> None:
        self.sender.abort()
