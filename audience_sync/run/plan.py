"""What one run covers and how it behaves, decided before anything is read: the run's plan."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import Computation, Config
from ..destinations import DestinationFactory, build_destination
from ..errors import ConfigError
from ..store import sizes

Mode = Literal["incremental", "resync"]


def select_targets(
    config: Config, destinations: Sequence[str] | None, audiences: Sequence[str] | None
) -> tuple[list[str], list[Computation]]:
    """The destination names and computations a run covers; ConfigError for an unknown name or key."""
    dest_names = (
        [config.destination(d).name for d in destinations] if destinations else [d.name for d in config.destinations]
    )
    comps = [config.computation(k) for k in audiences] if audiences else list(config.computations)
    comps = [c for c in comps if set(c.destinations) & set(dest_names)]
    if not dest_names:
        raise ConfigError(f"{config.path}: no destinations configured: add a [[destinations]] table")
    return dest_names, comps


@dataclass(frozen=True)
class RunFilters:
    """What a caller narrows or changes of a run: the options ``run`` and ``resync`` share, passed on to
    :func:`~audience_sync.run.sync.run_sync` in one place (empty filters mean everything)."""

    destinations: Sequence[str] | None = None
    audiences: Sequence[str] | None = None
    users: Sequence[str] | None = None
    dry_run: bool = False
    force: bool = False
    wait: float = 0.0
    as_of: dt.datetime | None = None


@dataclass(frozen=True)
class RunPlan:
    """What one run covers and how it behaves."""

    dest_names: list[str]
    comps: list[Computation]
    mode: str
    users: Sequence[str] | None
    trigger: str
    force: bool
    full: bool  # no filters: computations missing from the config are retired afterwards
    stop: threading.Event | None = None
    as_of: dt.datetime | None = None  # builder computations are evaluated at this instant
    #: every current value again, not only the changes; also on a dry run of a resync (mode ``dry_run``), so the
    #: preview plans what the resync would send
    resync: bool = False
    #: builds each destination's adapter for the delivery; another than the registry's lets a test put an
    #: in-process, fault-injecting destination (destinations/dummy.py) behind a real run
    destination_factory: DestinationFactory = build_destination

    @property
    def dry_run(self) -> bool:
        """Whether the run stores its diff and sends nothing."""
        return self.mode == "dry_run"

    def pairs(self) -> list[sizes.Pair]:
        """The destinations and computations of the run, as the size history records them."""
        return [
            sizes.Pair(name, comp.key, comp.computation_class)
            for name in self.dest_names
            for comp in self.comps
            if name in comp.destinations
        ]
