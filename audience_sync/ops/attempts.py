"""What one invocation of a run ended with: its result, or the error that stopped it.

The scheduler and the CLI hand an :class:`Attempt` to what happens after a run (metrics, alerts, retention),
so those see the same facts whether the run finished or raised.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import Config
from ..errors import AudienceSyncError
from ..run.sync import RunResult, select_targets
from ..store.schema import utcnow


@dataclass(frozen=True)
class Attempt:
    """One run attempt over ``destinations`` and ``computations``: exactly one of ``result`` or ``error``."""

    destinations: tuple[str, ...]
    computations: tuple[str, ...]
    result: RunResult | None = None
    error: AudienceSyncError | None = None
    dry_run: bool = False
    finished_at: dt.datetime = field(default_factory=utcnow)

    @property
    def exit_code(self) -> int:
        """The exit code ``audience-sync run`` gives for this attempt."""
        if self.result is not None:
            return self.result.exit_code
        return self.error.exit_code if self.error is not None else 1

    @property
    def status(self) -> str:
        """The run's status (``succeeded``, ``partial``, ``failed``), or ``error`` when it raised."""
        return self.result.status if self.result is not None else "error"


def attempt_of(
    config: Config, destinations: Sequence[str] | None, audiences: Sequence[str] | None, *, dry_run: bool = False
) -> Callable[..., Attempt]:
    """A maker of :class:`Attempt` for a run with these filters (``result=`` or ``error=`` to complete it);
    ConfigError for an unknown destination or key, as :func:`~.sync.run_sync` would raise."""
    dest_names, comps = select_targets(config, destinations, audiences)
    return functools.partial(Attempt, tuple(dest_names), tuple(c.key for c in comps), dry_run=dry_run)
