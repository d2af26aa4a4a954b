"""Destination adapters, built from their config."""

from __future__ import annotations

from collections.abc import Callable

from ..config import AnyDestination, GistDestination, JsonlDestination, SegmentDestination
from .base import Destination

__all__ = ["Destination", "build_destination"]


def build_destination(config: AnyDestination, *, before_attempt: Callable[[], None] | None = None) -> Destination:
    """The adapter for a destination's config. Adapters are imported here, when built: a run that writes a file
    does not load the HTTP client.

    ``before_attempt`` is called right before every attempt to send (each HTTP attempt, retries included; each
    chunk the JSONL sink writes); what it raises stops that send unretried and propagates.
    """
    if isinstance(config, GistDestination):
        from .gist import GistContacts

        return GistContacts(config, before_attempt=before_attempt)
    if isinstance(config, SegmentDestination):
        from .segment import SegmentBatch

        return SegmentBatch(config, before_attempt=before_attempt)
    if isinstance(config, JsonlDestination):
        from .jsonl import JsonlSink

        return JsonlSink(config, before_attempt=before_attempt)
    from .webhook import Webhook

    return Webhook(config, before_attempt=before_attempt)
