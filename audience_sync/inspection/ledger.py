"""Who held a key at an instant, and one user's whole story: the shaping behind ``members`` and ``user``.

The queries live in ``store/ledger.py`` and ``store/history.py``; this module picks destinations, checks the
key and the horizon, and merges the ledger (acknowledged values, kept past ``prune``) with the diff rows (every
change with its status and reason, while retention keeps them) into one history per destination and key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..commands import state_engine
from ..config import Config
from ..errors import ConfigError
from ..store import history, ledger
from ..values import decode


def _destinations(config: Config, destination: str | None) -> list[str]:
    return [config.destination(destination).name] if destination else [d.name for d in config.destinations]


def _key(config: Config, conn: Any, key: str) -> str:
    comp = config.find_computation(key)  # a retired key is not in the config but may still have members
    comp_key = comp.key if comp is not None else key
    if comp is None and not ledger.known_key(conn, comp_key):
        configured = ", ".join(c.key for c in config.computations) or "none"
        raise ConfigError(
            f"{config.path}: unknown audience or trait key {key!r}: not in the config and never synced "
            f"(configured: {configured})",
            path=config.path,
        )
    return comp_key


def members(
    config: Config, key: str, *, at: dt.datetime | None = None, destination: str | None = None
) -> list[dict[str, Any]]:
    """The users whose acknowledged value of ``key`` held something (audiences: ``true``; traits: a value) at
    ``at`` (default: now, from the snapshot), per destination, each with ``since``: when that value was
    acknowledged. ConfigError (exit 2) for a key never configured nor synced, or an instant before the horizon."""
    dests = _destinations(config, destination)
    with state_engine(config) as engine, engine.connect() as conn:
        comp_key = _key(config, conn, key)
        if at is None:
            return [{**r, "since": r["updated_at"]} for r in history.members(conn, comp_key, dests)]
        since = ledger.complete_since(conn)
        if since is not None and at < since:
            raise ConfigError(
                f"the membership ledger answers from {since.isoformat(timespec='seconds')} on: the history before "
                f"it was pruned (or predates the ledger), so who held {comp_key!r} at "
                f"{at.isoformat(timespec='seconds')} is not known"
            )
        rows = ledger.members_at(conn, comp_key, dests, at)
    return sorted(rows, key=lambda r: (r["destination"], history.id_order(r["user_id"])))  # as `members` now


def user(config: Config, user_id: str) -> dict[str, Any]:
    """``user_id``'s acknowledged value per destination and key now, and every change: the diff rows (any status,
    with the reason) and the acknowledged values whose diff rows ``prune`` deleted (or that were adopted)."""
    with state_engine(config) as engine, engine.connect() as conn:
        current = history.user_snapshot(conn, user_id)
        changes = history.user_diffs(conn, user_id)
        kept = ledger.user_ledger(conn, user_id)
    seen = {c["id"] for c in changes}
    events: list[dict[str, Any]] = []
    for c in changes:
        events.append(
            {
                "destination": c["destination"],
                "computation_key": c["computation_key"],
                "run_id": c["run_id"],
                "time": c["sent_at"] or c["created_at"],
                "change": c["change"],
                "old_value": decode(c["old_value"]),
                "new_value": decode(c["new_value"]),
                "status": c["status"],
                "reason": c["error"],
            }
        )
    for row in kept:
        if row["diff_id"] is not None and row["diff_id"] in seen:
            continue
        events.append(
            {
                "destination": row["destination"],
                "computation_key": row["computation_key"],
                "run_id": row["run_id"],
                "time": row["acknowledged_at"],
                "change": None,
                "old_value": decode(row["old_value"]),
                "new_value": decode(row["new_value"]),
                "status": "sent" if row["source"] == "sent" else row["source"],
                "reason": {
                    "sent": "acknowledged (its diff row was pruned)",
                    "adopted": "read from the destination by adopt",
                    "baseline": "held when the ledger began",
                }.get(row["source"]),
            }
        )
    events.sort(key=lambda e: (e["destination"], e["computation_key"], e["time"], e["run_id"] or 0))
    return {"user_id": user_id, "current": current, "history": events}
