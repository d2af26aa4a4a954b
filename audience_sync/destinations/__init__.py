"""Destination adapters, built from their config."""

from __future__ import annotations

from ..config import GistDestination, JsonlDestination
from .base import Destination
from .gist import GistContacts
from .jsonl import JsonlSink

__all__ = ["Destination", "build_destination"]


def build_destination(config: GistDestination | JsonlDestination) -> Destination:
    """The adapter for a destination's config."""
    if isinstance(config, GistDestination):
        return GistContacts(config)
    return JsonlSink(config)
