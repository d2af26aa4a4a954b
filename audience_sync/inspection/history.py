"""Sizes over time, behind ``audiences --history``: per run, destination and key, the size the destination held
after the run and the run's changes of it, as the run recorded them (``store/sizes.py``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from ..commands import audiences_overview, state_engine
from ..config import Config
from ..errors import ConfigError
from ..store import sizes


@dataclass(frozen=True)
class SizePoint:
    """One run's size of one key at one destination. ``mode`` and ``status`` are None once ``prune`` deleted
    the run (the size row outlives it)."""

    run_id: int
    recorded_at: dt.datetime
    started_at: dt.datetime | None
    mode: str | None
    status: str | None
    destination: str
    computation_key: str
    computation_class: str
    size: int
    entered: int
    exited: int
    changed: int
    sent: int
    failed: int
    skipped: int
    pending: int
    held: int
    identifiers: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The point as ``audiences --history --format json`` prints it (without the key it is listed under)."""
        out = asdict(self)
        del out["computation_key"], out["computation_class"]
        return out


def size_points(
    config: Config,
    *,
    keys: list[str] | None = None,
    destination: str | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
) -> list[SizePoint]:
    """The recorded sizes in run order (oldest first): of ``keys`` (default: all), at ``destination`` (default:
    all), of the newest ``limit`` runs that recorded any, recorded at or after ``since``."""
    with state_engine(config) as engine, engine.connect() as conn:
        rows = sizes.history(conn, keys=keys, destination=destination, since=since, limit=limit)
    return [SizePoint(**row) for row in rows]


def only(config: Config, overview: list[dict[str, Any]], audience: str | None) -> list[dict[str, Any]]:
    """The rows of ``overview`` whose key or name is ``audience`` (all when None); ConfigError when none is."""
    if audience is None:
        return overview
    kept = [row for row in overview if audience in (row["key"], row["name"])]
    if not kept:
        known = ", ".join(c.key for c in config.computations) or "none"
        raise ConfigError(
            f"{config.path}: no audience or trait with key {audience!r} (configured: {known}; retired keys are "
            f"listed by `audiences --history`)",
            path=config.path,
        )
    return kept


def audiences_with_history(
    config: Config, *, audience: str | None = None, limit: int | None = 20
) -> list[dict[str, Any]]:
    """``audiences --history``: every configured and retired key as ``audiences`` lists it (same fields), each
    with ``history``: its size points per run and destination, oldest first, of the newest ``limit`` runs.

    ``audience`` (a key or a name) keeps that one; ConfigError when no configured or recorded key matches.
    """
    overview = only(config, audiences_overview(config, include_retired=True), audience)
    points = size_points(config, keys=[row["key"] for row in overview], limit=limit)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        by_key.setdefault(point.computation_key, []).append(point.to_dict())
    return [{**row, "history": by_key.get(row["key"], [])} for row in overview]


#: columns of the history table and CSV (one row per run, destination and key)
HISTORY_COLUMNS = (
    "run_id",
    "recorded_at",
    "destination",
    "key",
    "class",
    "size",
    "entered",
    "exited",
    "changed",
    "sent",
    "failed",
    "skipped",
    "pending",
    "held",
    "identifiers",
)


def history_rows(overview: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``history`` of every key, flattened to one row per run, destination and key, in run order."""
    rows = [
        {**point, "key": row["key"], "name": row["name"], "class": row["class"]}
        for row in overview
        for point in row["history"]
    ]
    return sorted(rows, key=lambda r: (r["run_id"], r["destination"], r["key"]))
