"""Destination adapters, built from their config through the registry (:mod:`.registry`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from .base import Destination
from .registry import REGISTRY, build

if TYPE_CHECKING:
    from .registry import AnyDestination

__all__ = ["REGISTRY", "Destination", "DestinationFactory", "build_destination"]

#: what builds the adapter of one configured destination for a run: :func:`build_destination` unless the caller
#: of ``run_sync`` gives another (a test's :class:`~.dummy.DummyDestination`, say). Either kind of adapter will
#: do: a :class:`~.base.MessageDestination` is a :class:`~.base.Destination`
DestinationFactory: TypeAlias = "Callable[[AnyDestination], Destination]"


def build_destination(config: AnyDestination, *, before_attempt: Callable[[], None] | None = None) -> Destination:
    """The adapter for a destination's config. Adapters are imported here, when built: a run that writes a file
    does not load the HTTP client. A config whose ``type`` the registry does not know is a ``ConfigError``.

    ``before_attempt`` is called right before every attempt to send (each HTTP attempt, retries included; each
    chunk the JSONL sink writes); what it raises stops that send unretried and propagates.
    """
    return build(config, before_attempt=before_attempt)
