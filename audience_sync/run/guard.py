"""The mass-exit guard: an audience that would lose too many members at once is held back, not sent.

That pattern is almost always an upstream outage (an empty or half-loaded table), not real churn. A held
computation's changes in the run get the status ``held``; nothing of it is sent, and the run fails (exit 1)
saying what it saw and how to proceed. ``--force`` skips the guard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from ..config import Computation
from ..store import holds


@dataclass(frozen=True)
class Hold:
    """Why one computation was held at one destination."""

    destination: str
    comp: Computation
    exits: int
    size: int
    staged: int

    @property
    def share(self) -> float:
        """The share of the destination's members that would exit."""
        return self.exits / self.size if self.size else 0.0

    def seen(self) -> str:
        """What was seen at this destination."""
        members = "members" if self.comp.computation_class == "audience" else "users with a value"
        if self.staged == 0:
            return (
                f"the source returned no rows, but destination {self.destination!r} holds {self.size} {members} "
                f"(an empty upstream table?)"
            )
        return (
            f"would lose {self.exits} of {self.size} {members} ({self.share:.0%}) at destination "
            f"{self.destination!r}, over its max_exit_share of {self.comp.max_exit_share:.0%}"
        )

    def message(self) -> str:
        """What was seen, that nothing was sent, and how to proceed."""
        return hold_message([self])


def hold_message(holds: Sequence[Hold]) -> str:
    """One message for the holds of one computation (at one or more destinations): what was seen at each, that
    nothing of it was sent, and how to proceed, said once."""
    comp = holds[0].comp
    what = comp.label
    seen = "; and ".join(h.seen() for h in holds)
    return (
        f"{what}{':' if holds[0].staged == 0 else ''} {seen}; nothing of it was sent. If this is real churn, run "
        f"again with --force, or raise `max_exit_share` for it"
    )


def hold_messages(holds: Sequence[Hold]) -> dict[str, str]:
    """Per held computation key, its one message (:func:`hold_message`), in the order the holds came."""
    by_key: dict[str, list[Hold]] = {}
    for held in holds:
        by_key.setdefault(held.comp.key, []).append(held)
    return {key: hold_message(group) for key, group in by_key.items()}


def find_mass_exits(
    conn: Connection, run_id: int, dest: str, comps: Sequence[Computation], staged: Mapping[str, int], *, min_size: int
) -> list[Hold]:
    """The computations of this run whose exits at ``dest`` trip the guard.

    Trips when the source returned no rows for a computation the destination holds members of, or when the
    exits exceed the computation's ``max_exit_share`` of its members there and it has at least ``min_size``.
    """
    exits = holds.exits_per_key(conn, run_id, dest)
    found = []
    for comp in comps:
        gone, now = exits.get(comp.key, 0), staged.get(comp.key, 0)
        if not gone:
            continue
        # members are counted only as far as the decision needs: with `enough` of them (a margin of one over
        # gone / share, against rounding) the exits are under the share whatever the rest
        enough = None if now == 0 else max(math.floor(gone / comp.max_exit_share) + 2, min_size)
        size = holds.members_at(conn, dest, comp.key, audience=comp.computation_class == "audience", limit=enough)
        if size and (now == 0 or (size >= min_size and gone / size > comp.max_exit_share)):
            found.append(Hold(dest, comp, gone, size, now))
    return found


def hold(conn: Connection, run_id: int, key: str, reason: str) -> int:
    """Set this run's changes of ``key`` (every destination) to ``held`` with ``reason``; none will be sent."""
    return holds.hold_changes(conn, run_id, key, reason)
