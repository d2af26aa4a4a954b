"""How a run ended: its status decided from what happened (a pure function), and its result as printed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..config import Config
from ..errors import AudienceSyncError
from ..model import RunCounts, RunStatus
from ..redact import scrub
from ..store.engine import store_error
from .deliver import DeliveryReport
from .guard import Hold


@dataclass
class RunResult:
    """The outcome of a run, as ``run --json`` prints it."""

    run_id: int
    mode: str
    status: RunStatus
    counts: RunCounts
    error: str | None = None
    duration_seconds: float = 0.0
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the instant builder computations were evaluated at (ISO 8601, UTC)
    as_of: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all delivered (or nothing to do), 3 some changes still pending or failed, 1 the run failed."""
        return {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 3}.get(self.status, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no secrets: only names, counts and the destinations' reasons)."""
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "status": self.status,
            "exit_code": self.exit_code,
            "counts": self.counts,
            "error": self.error,
            "duration_seconds": round(self.duration_seconds, 3),
            "destinations": self.destinations,
            "as_of": self.as_of,
        }


def failure_text(exc: BaseException, config: Config) -> str:
    """What a run row says about the error that stopped it: our own errors' messages as they are; anything else
    as its type and message, one line, with every secret of ``config`` (keys, tokens, URL passwords) masked."""
    if isinstance(exc, AudienceSyncError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (a second SIGINT/SIGTERM, or Ctrl-C)"
    if isinstance(exc, SQLAlchemyError):
        return str(store_error(exc, config.state_url))
    # the configuration's secrets are registered with the scrubber when it is parsed
    return scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000])


def decide_status(
    holds: Sequence[Hold], reports: Mapping[str, DeliveryReport], counts: Mapping[str, Any], *, dry_run: bool
) -> RunStatus:
    """The status a finished run closes with: ``failed`` when the guard held a computation or a destination
    rejected our credentials, ``partial`` when changes stay pending or failed or a destination stopped with an
    error, ``succeeded`` otherwise. A dry run sends nothing, so it always ``succeeded`` (its holds are in the
    counts and the error text)."""
    if dry_run:
        return RunStatus.SUCCEEDED
    if holds or any(r.credentials_rejected for r in reports.values()):
        return RunStatus.FAILED
    if counts.get("pending") or counts.get("failed") or any(r.error for r in reports.values()):
        return RunStatus.PARTIAL
    return RunStatus.SUCCEEDED
