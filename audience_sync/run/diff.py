"""The diff step: every change of the run written to the outbox in one transaction, with the guard's holds."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine

from ..config import Config
from ..errors import ConfigError
from ..store import registry
from ..store.dialect import analyze
from ..store.diff import mark_planned, note_missing, skip_unreachable, supersede_pending, unknown_users, write_changes
from .deliver import Fence
from .guard import Hold, find_mass_exits, hold, hold_messages
from .plan import RunPlan


def diff(
    engine: Engine, config: Config, plan: RunPlan, run_id: int, *, staged: Mapping[str, int], fence: Fence
) -> list[Hold]:
    """Write every change of the run in one transaction, with the guard's holds; return the holds. The transaction
    begins by confirming the run lock: a run that lost it writes no change (LockLost)."""
    dest_names, comps, dry_run, force, users = plan.dest_names, plan.comps, plan.dry_run, plan.force, plan.users
    resync = plan.resync
    holds: list[Hold] = []
    with engine.begin() as conn:
        fence.confirm(conn, dest_names)
        analyze(conn, "staging")
        if users is not None:
            unknown = unknown_users(conn, run_id, dest_names, [c.key for c in comps], users)
            if unknown:
                raise ConfigError(
                    f"unknown user id(s) {', '.join(repr(u) for u in unknown)}: in none of the run's audiences and "
                    f"traits and never sent to {', '.join(dest_names)}; nothing was sent"
                )
        for name in dest_names:
            dest = config.destination(name)
            targeted = [c for c in comps if name in c.destinations]
            if not dry_run:
                supersede_pending(conn, run_id, name, [c.key for c in targeted])
            written = write_changes(conn, run_id, name, targeted, resync=resync, users=users)
            for comp in targeted:
                if comp.exit_after is not None and not dry_run:
                    note_missing(conn, run_id, name, comp)
            required = dest.required_identifiers
            if required:
                skip_unreachable(
                    conn,
                    run_id,
                    name,
                    required,
                    f"no email: destination {name!r} ({dest.type}) requires {' and '.join(('user_id', *required))}",
                )
            if not force and written["exited"]:  # the guard has nothing to weigh without exits
                holds += find_mass_exits(conn, run_id, name, targeted, staged, min_size=config.guard.min_size)
        for key, message in hold_messages(holds).items():
            hold(conn, run_id, key, message)
        if dry_run:
            mark_planned(conn, run_id)
        else:
            registry.register(conn, comps)
        analyze(conn, "diffs")
    return holds
