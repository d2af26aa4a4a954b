"""What one invocation of a run ended with: its result, or the error that stopped it.

The scheduler and the CLI hand an :class:`Attempt` to what happens after a run (metrics, alerts, retention),
so those see the same facts whether the run finished or raised.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .errors import AudienceSyncError
from .store.schema import utcnow
from .sync import RunResult


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
