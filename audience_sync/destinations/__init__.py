"""Destination adapters, built from their config through the registry (:mod:`.registry`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import Destination
from .registry import REGISTRY, build

if TYPE_CHECKING:
    from .registry import AnyDestination

__all__ = ["REGISTRY", "Destination", "build_destination"]


def build_destination(config: AnyDestination, *, before_attempt: Callable[[], None] | None = None) -> Destination:
    """The adapter for a destination's config. Adapters are imported here, when built: a run that writes a file
    does not load the HTTP client. A config whose ``type`` the registry does not know is a ``ConfigError``.

    ``before_attempt`` is called right before every attempt to send (each HTTP attempt, retries included; each
    chunk the JSONL sink writes); what it raises stops that send unretried and propagates.
    """
    return build(config, before_attempt=before_attempt)
