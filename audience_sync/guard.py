"""The mass-exit guard: an audience that would lose too many members at once is held back, not sent.

That pattern is almost always an upstream outage (an empty or half-loaded table), not real churn. A held
computation's changes in the run get the status ``held``; nothing of it is sent, and the run fails (exit 1)
saying what it saw and how to proceed. ``--force`` skips the guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, literal_column, select, update

from .config import Computation
from .store.history import snapshot_sizes
from .store.schema import DiffRow, table_of

diffs = table_of(DiffRow)


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

    def message(self) -> str:
        """What was seen, that nothing was sent, and how to proceed."""
        what = f"{self.comp.computation_class} {self.comp.name!r} ({self.comp.key})"
        members = "members" if self.comp.computation_class == "audience" else "users with a value"
        if self.staged == 0:
            seen = (
                f"{what}: the source returned no rows, but destination {self.destination!r} holds "
                f"{self.size} {members} (an empty upstream table?)"
            )
        else:
            seen = (
                f"{what} would lose {self.exits} of {self.size} {members} ({self.share:.0%}) at destination "
                f"{self.destination!r}, over its max_exit_share of {self.comp.max_exit_share:.0%}"
            )
        return (
            f"{seen}; nothing of it was sent. If this is real churn, run again with --force, or raise "
            f"`max_exit_share` for it"
        )


def _exits(conn: Connection, run_id: int, dest: str) -> dict[str, int]:
    # grouped by an expression no index orders: SQLite's planner would otherwise walk ix_diffs_user, the whole
    # history of the destination, in computation order to save a sort of this run's few keys
    key = diffs.c.computation_key.concat(literal_column("''"))
    rows = conn.execute(
        select(key, func.count())
        .where(diffs.c.run_id == run_id, diffs.c.destination == dest, diffs.c.change == "exited")
        .group_by(key)
    ).all()
    return {str(row[0]): int(row[1]) for row in rows}


def find_mass_exits(
    conn: Connection, run_id: int, dest: str, comps: Sequence[Computation], staged: Mapping[str, int], *, min_size: int
) -> list[Hold]:
    """The computations of this run whose exits at ``dest`` trip the guard.

    Trips when the source returned no rows for a computation the destination holds members of, or when the
    exits exceed the computation's ``max_exit_share`` of its members there and it has at least ``min_size``.
    """
    exits = _exits(conn, run_id, dest)
    if not exits:  # nothing leaves: no need to count the members of anything
        return []
    sizes = {key: n for (_, key), n in snapshot_sizes(conn, destination=dest, keys=list(exits)).items()}
    holds = []
    for comp in comps:
        size, gone, now = sizes.get(comp.key, 0), exits.get(comp.key, 0), staged.get(comp.key, 0)
        if size and gone and (now == 0 or (size >= min_size and gone / size > comp.max_exit_share)):
            holds.append(Hold(dest, comp, gone, size, now))
    return holds


def hold(conn: Connection, run_id: int, key: str, reason: str) -> int:
    """Set this run's changes of ``key`` (every destination) to ``held`` with ``reason``; none will be sent."""
    result = conn.execute(
        update(diffs)
        .where(diffs.c.run_id == run_id, diffs.c.computation_key == key, diffs.c.status.in_(("pending", "skipped")))
        .values(status="held", error=reason)
    )
    return result.rowcount
