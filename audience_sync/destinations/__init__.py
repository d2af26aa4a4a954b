"""Destination adapters, built from their config."""

from __future__ import annotations

from ..config import AnyDestination, GistDestination, JsonlDestination, SegmentDestination
from .base import Destination

__all__ = ["Destination", "build_destination"]


def build_destination(config: AnyDestination) -> Destination:
    """The adapter for a destination's config. Adapters are imported here, when built: a run that writes a file
    does not load the HTTP client."""
    if isinstance(config, GistDestination):
        from .gist import GistContacts

        return GistContacts(config)
    if isinstance(config, SegmentDestination):
        from .segment import SegmentBatch

        return SegmentBatch(config)
    if isinstance(config, JsonlDestination):
        from .jsonl import JsonlSink

        return JsonlSink(config)
    from .webhook import Webhook

    return Webhook(config)
