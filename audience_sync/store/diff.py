"""The set-based diff: a run's staged truth against each destination's snapshot, into the outbox.

Every statement here is one ``INSERT ... SELECT`` or ``UPDATE`` over a whole computation; no member passes
through Python. Semantics (per destination and computation):

- audience: ``entered`` (new value ``true``) for a staged user the snapshot does not hold as ``true``;
  ``exited`` (``false``) for a snapshot ``true`` that is no longer staged.
- trait: ``entered`` for a staged value where the snapshot holds none; ``changed`` where it holds another;
  ``exited`` (new value NULL, sent as ``null``) where the snapshot holds a value that is no longer staged.
- resync: every staged user is written even when unchanged; exits as above. With ``users`` (``resync --user``),
  every key the snapshot holds for them is written again, ``false`` and NULL included.

A snapshot row ``in_doubt`` (its change was in flight when a run died) counts as different from everything,
so the current truth is sent again, including an exit when the user is no longer staged.

A user whose source row could not be staged (``staging_skips``: a NUL byte, a value with no JSON form...) is left
alone: no entry, change or exit, so the destination keeps what it has; instead the user gets a ``skipped``
change per destination, with the reason (``entered`` when the destination holds no value for them, ``changed``
when it does), so that every run counts and reports them until the source is fixed.

An ``identifiers`` change re-sends a user's current value when the staged email differs from the one the
destination last received (kept in the snapshot) or it received none: an email that changes or appears reaches
every key the destination holds for the user. An exit (a null) goes to the user's latest email: the one staged
for another key of the run, else the one the destination last received; other changes use the staged email,
falling back to the snapshot's. Each row gets its deterministic message id, computed in SQL
(``diff_rows.py``).

This module writes a run's changes per destination (the statements per class in ``diff_changes.py``, the skipped
users' in ``diff_skips.py``) and tends the outbox around them: unknown users, flap damping's clock, dry runs'
planned changes, earlier runs' pending changes superseded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import Connection, literal, select, update

from ..config import Computation
from ..model import DiffStatus
from ..values import TRUE
from .columns import UTCDateTime
from .diff_changes import write_group
from .diff_rows import Target
from .diff_skips import not_skipped, skip_unreachable, write_skips
from .install import install_id
from .schema import diffs, snapshot, staging, status_is, utcnow
from .staging import skipped_keys

__all__ = [
    "mark_planned",
    "note_missing",
    "skip_unreachable",
    "supersede_pending",
    "unknown_users",
    "write_changes",
]


def write_changes(
    conn: Connection,
    run_id: int,
    dest: str,
    comps: Sequence[Computation],
    *,
    resync: bool = False,
    users: Sequence[str] | None = None,
) -> Counter[str]:
    """Insert the changes of ``comps`` for destination ``dest`` into ``diffs`` as pending; return how many of each
    kind (``entered``, ``exited``, ``changed``, ``identifiers``).

    Two ``INSERT ... SELECT`` per computation class (and flap-damping setting) cover every computation of it:
    one over staging for its entries, changes and ``identifiers``, one over the snapshot for its exits; so
    staging and the snapshot are each read once per class, not once per computation or kind of change.
    ``users`` limits the diff to those user ids (for ``resync --user``). Users whose rows were skipped get a
    ``skipped`` change each instead (not counted in the result: nothing is owed to them).
    """
    groups: dict[tuple[str, float | None], list[str]] = {}
    for comp in comps:
        damping = comp.exit_after if comp.computation_class == "audience" else None
        groups.setdefault((comp.computation_class, damping), []).append(comp.key)
    written: Counter[str] = Counter()
    install = install_id(conn)
    with_skips = skipped_keys(conn, run_id)
    for (cls, damping), keys in groups.items():
        target = Target(run_id, install, dest, cls, f"resync:{run_id}" if resync else "", tuple(c.key for c in comps))
        skipped = [k for k in keys if k in with_skips]
        written += write_group(conn, target, keys, damping, resync=resync, users=users, skipped=skipped)
        if skipped:
            write_skips(conn, target, skipped, users)
    return written


def unknown_users(
    conn: Connection, run_id: int, dests: Sequence[str], keys: Sequence[str], users: Sequence[str]
) -> list[str]:
    """The ids of ``users`` neither staged by run ``run_id`` for ``keys`` nor held by the snapshot of ``dests``."""
    s = staging
    p = snapshot
    wanted = list(dict.fromkeys(users))
    staged = conn.execute(
        select(s.c.user_id).where(s.c.run_id == run_id, s.c.computation_key.in_(list(keys)), s.c.user_id.in_(wanted))
    ).scalars()
    held = conn.execute(
        select(p.c.user_id).where(
            p.c.destination.in_(list(dests)), p.c.computation_key.in_(list(keys)), p.c.user_id.in_(wanted)
        )
    ).scalars()
    known = set(staged) | set(held)
    return [u for u in wanted if u not in known]


def note_missing(conn: Connection, run_id: int, dest: str, comp: Computation) -> None:
    """Flap damping: start the clock for members missing from the source, stop it for those who are back.

    Guarantees: after it, no ``missing_since`` of this destination and computation is later than now. A
    ``missing_since`` in the future was written by a run whose clock was ahead; it counts as "missing since
    now" (the exit comes ``exit_after`` from now), so a wrong clock delays an exit by at most ``exit_after``
    instead of by however far it was ahead. A member whose source row was skipped is not missing: the clock
    does not start for them.
    """
    s = staging
    p = snapshot
    now = utcnow()
    staged = (
        select(s.c.user_id)
        .where(s.c.run_id == run_id, s.c.computation_key == comp.key, s.c.user_id == p.c.user_id)
        .exists()
    )
    mine = [p.c.destination == dest, p.c.computation_key == comp.key]
    moment = literal(now, UTCDateTime)
    conn.execute(update(p).where(*mine, p.c.missing_since > moment).values(missing_since=now))
    missing = [p.c.value == TRUE, p.c.missing_since.is_(None), ~staged]
    if comp.key in skipped_keys(conn, run_id):
        missing.append(not_skipped(run_id, p.c.computation_key, p.c.user_id))
    conn.execute(update(p).where(*mine, *missing).values(missing_since=now))
    conn.execute(update(p).where(*mine, p.c.missing_since.is_not(None), staged).values(missing_since=None))


def mark_planned(conn: Connection, run_id: int) -> int:
    """A dry run's changes that would be sent: ``pending`` becomes ``planned`` (never sent, never superseded)."""
    result = conn.execute(
        update(diffs)
        .where(diffs.c.run_id == run_id, diffs.c.status == DiffStatus.PENDING)
        .values(status=DiffStatus.PLANNED)
    )
    return result.rowcount


def supersede_pending(conn: Connection, run_id: int, dest: str, keys: Sequence[str]) -> int:
    """Mark earlier runs' still-pending changes of ``dest`` for ``keys`` as ``superseded``.

    This run has recomputed them from the source's truth and the snapshot, which those changes never
    advanced, so its own rows carry whatever is still owed.
    """
    result = conn.execute(
        update(diffs)
        .where(
            diffs.c.destination == dest,
            status_is("pending"),
            diffs.c.run_id < run_id,
            diffs.c.computation_key.in_(list(keys)),
        )
        .values(status=DiffStatus.SUPERSEDED, error=f"recomputed by run {run_id}")
    )
    return result.rowcount
