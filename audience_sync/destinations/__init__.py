"""Destination adapters, built from their config."""

from __future__ import annotations

from ..config import AnyDestination, GistDestination, JsonlDestination, SegmentDestination
from .base import Destination
from .gist import GistContacts
from .jsonl import JsonlSink
from .segment import SegmentBatch
from .webhook import Webhook

__all__ = ["Destination", "build_destination"]


def build_destination(config: AnyDestination) -> Destination:
    """The adapter for a destination's config."""
    if isinstance(config, GistDestination):
        return GistContacts(config)
    if isinstance(config, SegmentDestination):
        return SegmentBatch(config)
    if isinstance(config, JsonlDestination):
        return JsonlSink(config)
    return Webhook(config)
