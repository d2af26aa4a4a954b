"""The shared nouns of delivery: one change of one user's value for one computation, what became of it, and the
shape of the messages that carry it (used by the store and the destinations alike)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

from .values import JsonValue


class ChangeKind(StrEnum):
    """What changed for a user (``diffs.change``). ``identifiers``: the user's email differs from the one the
    destination last received; their current value is sent again with it."""

    ENTERED = "entered"
    EXITED = "exited"
    CHANGED = "changed"
    IDENTIFIERS = "identifiers"


class OutcomeStatus(StrEnum):
    """What a destination did with a change (see :class:`Outcome`)."""

    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"


class DiffStatus(StrEnum):
    """Where a change stands (``diffs.status``): an outcome, or ``superseded`` (still pending, or in flight when
    its run died, when a later run recomputed it), ``held`` (kept back by the mass-exit guard, never sent),
    ``planned`` (a dry run's change: what a run would send; never sent, never superseded). A change being handed to
    its destination stays ``pending``, inside the range of a ``delivery_in_flight`` row."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"
    HELD = "held"
    PLANNED = "planned"


class RunStatus(StrEnum):
    """How a run stands (``sync_runs.status``): ``running`` until it closes ``succeeded`` (exit 0), ``partial``
    (some changes pending or failed: exit 3) or ``failed`` (exit 1)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"


#: the tallies of a run, per destination and computation and in total, in the order they are shown: the change
#: kinds, then what became of the changes (``held``: kept back by the mass-exit guard). Stored in
#: ``sync_runs.counts`` and ``size_history``, shown by ``run`` and ``runs``, exported as metrics.
COUNT_KEYS = ("entered", "exited", "changed", "sent", "failed", "skipped", "pending", "held", "planned", "identifiers")


class Tally(TypedDict):
    """A run's changes by kind and by what became of them (:data:`COUNT_KEYS`), in total or for one destination
    or computation."""

    entered: int
    exited: int
    changed: int
    sent: int
    failed: int
    skipped: int
    pending: int
    held: int
    planned: int
    identifiers: int


class SourceFigures(TypedDict):
    """What one computation's source gave a run: rows read, distinct users staged, rows dropped for a null user
    id or a null value, users skipped because the state database cannot take their rows."""

    rows: int
    members: int
    null_user_ids: int
    null_values: int
    skipped: int


class RunCounts(Tally):
    """A run's tallies as ``sync_runs.counts`` stores them and ``run --json`` prints them: the totals, the same
    per destination and per computation, each computation's source figures, and the instant builder
    computations were evaluated at (when the run had any)."""

    destinations: dict[str, Tally]
    computations: dict[str, Tally]
    sources: NotRequired[dict[str, SourceFigures]]
    as_of: NotRequired[str]


@dataclass(frozen=True, slots=True)
class Change:
    """A pending diff row, decoded: what to tell ``destination`` about ``user_id``."""

    diff_id: int
    run_id: int
    destination: str
    computation_key: str
    computation_class: Literal["audience", "trait"]
    user_id: str
    email: str | None
    change: ChangeKind
    old_value: JsonValue
    new_value: JsonValue
    message_id: str


@dataclass(frozen=True)
class Outcome:
    """What a destination did with a change.

    ``sent``: acknowledged, the snapshot advances. ``failed``: refused for good, with the destination's reason.
    ``skipped``: not deliverable to this destination (for example no email). ``pending``: not acknowledged
    (transient failure or not attempted); the next run sends it again.
    """

    status: OutcomeStatus
    error: str | None = None


SENT = Outcome(OutcomeStatus.SENT)
NOT_ATTEMPTED = Outcome(OutcomeStatus.PENDING, "not attempted")
_RANK = {OutcomeStatus.SENT: 0, OutcomeStatus.SKIPPED: 1, OutcomeStatus.PENDING: 2, OutcomeStatus.FAILED: 3}


def merge(outcomes: Iterable[tuple[int, Outcome]]) -> dict[int, Outcome]:
    """One outcome per change from the outcomes of its messages: the worst wins (failed > pending > sent)."""
    merged: dict[int, Outcome] = {}
    for diff_id, outcome in outcomes:
        known = merged.get(diff_id)
        if known is None or _RANK[outcome.status] > _RANK[known.status]:
            merged[diff_id] = outcome
    return merged


SEPARATOR = "\x1f"


def message_id(
    install_id: str,
    destination: str,
    key: str,
    user_id: str,
    new_value: str | None,
    base_run_id: int | None,
    salt: str = "",
) -> str:
    """A deterministic message id (43 characters) for a change; the diff computes the same one in SQL.

    The same change computed again after a crash (same snapshot base, same new value) gets the same id, so a
    re-send dedupes at destinations that honour message ids; a later change of the same user gets another.
    ``install_id`` (the state database's own, :mod:`audience_sync.store.install`) keeps two installs' ids
    apart: Segment deduplicates across sources and workspaces. ``salt`` separates deliberate re-sends (a resync
    run) from the original. ``new_value`` is the canonical JSON text, None for "no value".
    """
    base = "" if base_run_id is None else str(base_run_id)
    text = SEPARATOR.join((install_id, destination, key, user_id, new_value or "null", base, salt))
    return "as-" + hashlib.sha256(text.encode()).hexdigest()[:40]


#: (diff_id, the message as compact JSON bytes): what the outbox hands a destination that takes encoded messages
Encoded = tuple[int, bytes]


@dataclass(frozen=True)
class MessageOptions:
    """What a destination's config says about message shape: personas ids, event names, integrations."""

    space_id: str = "audience-sync"
    entered_event: str = "Audience Entered"
    exited_event: str = "Audience Exited"
    trait_event: str = "Trait Computed"
    integrations: dict[str, bool] | None = None

    @property
    def space(self) -> str:
        """The space id as Engage sends it in both ``context.personas.space_id`` and ``namespace``: ``spa_`` and
        the configured ``space_id`` (kept as it is when it already starts with ``spa_``)."""
        return self.space_id if self.space_id.startswith("spa_") else f"spa_{self.space_id}"

    @classmethod
    def of(cls, config: Any) -> MessageOptions:
        """Options from a destination config (any object with those attributes)."""
        return cls(
            space_id=config.space_id,
            entered_event=config.entered_event,
            exited_event=config.exited_event,
            trait_event=config.trait_event,
            integrations=getattr(config, "integrations", None),
        )


def timestamp(now: dt.datetime | None = None) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``, as Segment's libraries write it."""
    return (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
