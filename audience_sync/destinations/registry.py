"""The destination registry: each ``type`` a ``[[destinations]]`` table may name, with its config class, the
adapter that sends to it and the identifiers a change needs before it can go there.

Everything else is generated from :data:`REGISTRY`: the config union the loader validates against
(:data:`DestinationConfig`), the list of type names its errors quote (:data:`TYPE_NAMES`), and
:func:`build` behind :func:`audience_sync.destinations.build_destination`. Adding a destination is one config
class in ``config/destinations.py``, one adapter module here and one entry below (CONTRIBUTING.md).

The adapters are named by module path and imported only when one is built, so that loading a config (which
imports this module) does not load the HTTP client, and a run that writes a file never does. This module
imports nothing from the adapters, the store or the run: the config loader may import it.
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from ..config.destinations import (
    GistDestination,
    JsonlDestination,
    SegmentDestination,
    WebhookDestination,
    _DestinationBase,
)
from ..errors import ConfigError

if TYPE_CHECKING:
    from .base import Destination


@dataclass(frozen=True)
class DestinationType:
    """One destination type: its ``type`` tag, config class, adapter (``module:Class`` under this package)
    and the identifiers a change needs before that adapter can take it (``user_id`` always exists)."""

    name: str
    config: type[_DestinationBase]
    adapter: str
    required_identifiers: tuple[str, ...] = ()

    def factory(self) -> Callable[..., Destination]:
        """The adapter class, imported now.

        In a process that froze what its imports created (the command run as the program, :func:`gc.freeze`),
        what this import creates is frozen too: the adapter's modules (the HTTP client and its dependencies,
        about 13,000 objects) live until the process ends, and would otherwise be walked by every later full
        collection and by the interpreter's collections at exit. The freeze takes every object tracked at that
        moment, so what the run made before it and still holds (its config, engines, plan) is frozen with them.
        """
        module, _, attr = self.adapter.partition(":")
        refreeze = gc.get_freeze_count() > 0
        built: Callable[..., Destination] = getattr(importlib.import_module(module, __package__), attr)
        if refreeze:
            gc.freeze()
        return built


#: type tag -> its entry, in the order the documentation lists them
REGISTRY: dict[str, DestinationType] = {
    t.name: t
    for t in (
        DestinationType("gist", GistDestination, ".gist:GistContacts", required_identifiers=("email",)),
        DestinationType("segment", SegmentDestination, ".segment:SegmentBatch"),
        DestinationType("webhook", WebhookDestination, ".webhook:Webhook"),
        DestinationType("jsonl", JsonlDestination, ".jsonl:JsonlSink"),
    )
}


def _quoted(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


#: the type names as the config errors quote them: ``'gist', 'segment', 'webhook' or 'jsonl'``
TYPE_NAMES = _quoted(list(REGISTRY))

#: a destination's config, any registered type (what ``Config.destinations`` holds)
if TYPE_CHECKING:  # the checker needs the union spelled out; tests/destinations/test_registry.py checks it
    AnyDestination = GistDestination | SegmentDestination | WebhookDestination | JsonlDestination
else:
    AnyDestination = Union[tuple(t.config for t in REGISTRY.values())]  # noqa: UP007

#: the union as the loader validates it: the ``type`` key picks the class
DestinationConfig = Annotated[AnyDestination, Field(discriminator="type")]


def destination_type(name: str) -> DestinationType:
    """The registry's entry for ``name``; a :class:`ConfigError` (exit 2) naming it when no type is so named."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown destination type {name!r} (expected {TYPE_NAMES})") from None


def build(config: Any, *, before_attempt: Callable[[], None] | None = None) -> Destination:
    """The adapter for a destination's config, looked up by its ``type``; an unknown type is a
    :class:`ConfigError`, never a fall-through to some other adapter."""
    entry = destination_type(getattr(config, "type", ""))
    if not isinstance(config, entry.config):
        raise ConfigError(f"destination {getattr(config, 'name', '?')!r}: its config is not a {entry.config.__name__}")
    return entry.factory()(config, before_attempt=before_attempt)
