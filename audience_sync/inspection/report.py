"""The HTML report's data, assembled as plain typed values (rendering is ``html.py``'s and ``charts.py``'s job).

What the report shows: runs over time (sent / failed / skipped / held / pending per run), each audience's and
trait's size and entered / exited per run, the latest failed changes with the destinations' reasons, runs that
ended with an error, the pending outbox, and the guard's holds. What it caps, so that a state database with
thousands of runs and hundreds of keys gives a page a browser opens at once: the newest ``limit`` runs are
charted, at most ``MAX_CHARTED_KEYS`` keys get charts (all are listed), tables show at most ``MAX_ROWS`` rows;
each cap that applies is said on the page (``ReportData.notes``).

New kinds of data join as another :class:`Table` in ``ReportData.tables`` (rendered generically), or, for a
time series per key, as fields of :class:`KeySeries`: the renderer needs no query of its own.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import __version__
from ..commands import state_engine
from ..config import Config, parse_duration
from ..store import registry, reporting, sizes
from ..store.schema import utcnow
from .history import SizePoint

#: keys charted at most (the others are listed in the table of keys)
MAX_CHARTED_KEYS = 24
#: rows per table at most
MAX_ROWS = 50
#: keys listed at most
MAX_KEY_ROWS = 1000
#: runs charted by default
DEFAULT_RUNS = 200

Cell = str | int | float | bool | dt.datetime | None


@dataclass(frozen=True)
class RunBar:
    """One run's totals (for ``destination`` when the report is limited to one)."""

    run_id: int
    mode: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    entered: int
    exited: int
    changed: int
    sent: int
    failed: int
    skipped: int
    held: int
    pending: int
    error: str | None


@dataclass(frozen=True)
class KeySeries:
    """One key: what it is, its latest recorded size per destination, and its size points in the charted runs."""

    key: str
    name: str
    computation_class: str
    status: str
    destinations: tuple[str, ...]
    latest: dict[str, int]
    points: tuple[SizePoint, ...] = ()


@dataclass(frozen=True)
class Table:
    """A titled table of plain cells; ``total`` rows exist of which ``rows`` are shown."""

    anchor: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    total: int
    empty: str
    intro: str = ""


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; no query is left to the renderer."""

    generated_at: dt.datetime
    version: str
    config_path: str
    destinations: tuple[str, ...]
    destination: str | None
    since: dt.datetime | None
    runs: tuple[RunBar, ...]  # charted, oldest first
    runs_total: int
    keys: tuple[KeySeries, ...]  # every key, charted ones first
    charted_keys: int
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO 8601 instant (``2026-05-01T00:00Z``; without a zone, UTC) or a duration back from
    ``now`` (``7d``, ``12h``). ValueError saying what is accepted otherwise."""
    try:
        return (now or utcnow()) - dt.timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 instant (2026-05-01T00:00Z) nor a duration (7d, 12h)"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _run_bar(row: dict[str, Any], destination: str | None) -> RunBar:
    counts = row.get("counts") or {}
    if destination is not None:
        counts = (counts.get("destinations") or {}).get(destination, {})

    def n(k: str) -> int:
        return int(counts.get(k, 0) or 0)

    return RunBar(
        run_id=row["id"],
        mode=row["mode"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        entered=n("entered"),
        exited=n("exited"),
        changed=n("changed"),
        sent=n("sent"),
        failed=n("failed"),
        skipped=n("skipped"),
        held=n("held"),
        pending=n("pending"),
        error=row.get("error"),
    )


def _table(anchor: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]], **kw: Any) -> Table:
    return Table(anchor, title, tuple(columns), tuple(tuple(r) for r in rows[:MAX_ROWS]), total=len(rows), **kw)


def build_report(
    config: Config,
    *,
    destination: str | None = None,
    since: dt.datetime | None = None,
    limit: int = DEFAULT_RUNS,
    audiences: Sequence[str] = (),
) -> ReportData:
    """Read everything the report shows from the state database (migrated first) into a :class:`ReportData`.

    ``destination`` limits every part to that destination (ConfigError for an unknown one); ``since`` to runs
    started at or after it; ``limit``: runs charted; ``audiences`` (keys or names): chart these keys first.
    Secrets never enter it: only names, keys, user ids, counts and the destinations' reasons, which the runs
    stored already redacted. The snapshot is not counted: sizes are the ones the runs recorded.
    """
    dest = config.destination(destination).name if destination else None
    picked = [config.computation(a).key for a in audiences]
    with state_engine(config) as engine, engine.connect() as conn:
        run_rows, runs_total = reporting.window_runs(conn, since=since, destination=dest, limit=limit)
        keys = _keys(config, registry.list_computations(conn), sizes.latest(conn, destination=dest), dest, picked)
        bars = [_run_bar(r, dest) for r in run_rows]  # newest first
        failures = reporting.changes_of_runs(
            conn, [b.run_id for b in bars if b.failed], "failed", destination=dest, limit=MAX_ROWS
        )
        holds = reporting.held_groups(conn, [b.run_id for b in bars if b.held], destination=dest)
        pending = reporting.pending_groups(conn, destination=dest)
        charted_runs = [b for b in reversed(bars) if b.mode != "dry_run"]  # oldest first
        chart = [k.key for k in keys if k.latest][:MAX_CHARTED_KEYS]
        rows = sizes.history(conn, keys=chart, destination=dest, since=since, limit=limit) if chart else []
    first = charted_runs[0].run_id if charted_runs else None
    points: dict[str, list[SizePoint]] = {}
    for row in rows:
        if first is not None and row["run_id"] >= first:
            points.setdefault(row["computation_key"], []).append(SizePoint(**row))
    keys = [replace(k, points=tuple(points.get(k.key, ()))) for k in keys]
    keys.sort(key=lambda k: not k.points)  # charted keys first, each group in its order
    return ReportData(
        generated_at=utcnow(),
        version=__version__,
        config_path=config.path,
        destinations=tuple(d.name for d in config.destinations) if dest is None else (dest,),
        destination=dest,
        since=since,
        runs=tuple(charted_runs),
        runs_total=runs_total,
        keys=tuple(keys),
        charted_keys=sum(1 for k in keys if k.points),
        tables=(
            _runs_table(bars),
            _keys_table(keys, config),
            _failures_table(failures),
            _table(
                "run-errors",
                "Runs that ended with an error",
                ("run", "started", "status", "error"),
                [(b.run_id, b.started_at, b.status, b.error) for b in bars if b.error],
                empty="No run in this window ended with an error.",
            ),
            _outbox_table(pending),
            _holds_table(holds),
        ),
        notes=_notes(len(bars), len(charted_runs), runs_total, keys, limit),
    )


def _keys(
    config: Config,
    known: list[dict[str, Any]],
    latest: dict[tuple[str, str], dict[str, Any]],
    dest: str | None,
    picked: list[str],
) -> list[KeySeries]:
    """Every key: the ones asked for first, then the configured ones in config order, then the others (retired)."""
    registered = {row["key"]: row for row in known}
    out = []
    for comp in config.computations:
        row = registered.get(comp.key)
        status = "new" if row is None else ("retired" if row["retired_at"] else "active")
        dests = tuple(d for d in comp.destinations if dest is None or d == dest)
        out.append(KeySeries(comp.key, comp.name, comp.computation_class, status, dests, _latest(latest, comp.key)))
    configured = {c.key for c in config.computations}
    for key, row in registered.items():
        if key not in configured:
            recorded = _latest(latest, key)
            status = "retired" if row["retired_at"] else "unconfigured"
            out.append(KeySeries(key, row["name"], row["computation_class"], status, tuple(sorted(recorded)), recorded))
    rank = {key: i for i, key in enumerate(picked)}
    return sorted(out, key=lambda k: rank.get(k.key, len(rank)))  # stable: config order otherwise


def _latest(latest: dict[tuple[str, str], dict[str, Any]], key: str) -> dict[str, int]:
    return {d: int(row["size"]) for (d, k), row in sorted(latest.items()) if k == key}


def _notes(shown: int, charted: int, total: int, keys: Sequence[KeySeries], limit: int) -> tuple[str, ...]:
    notes = []
    if total > shown:
        notes.append(f"Only the newest {shown} of {total} runs are shown (`report --limit N` shows more).")
    if shown > charted:
        notes.append(f"{shown - charted} dry runs are left out of the charts: they send nothing.")
    synced = sum(1 for k in keys if k.latest)
    if synced > MAX_CHARTED_KEYS:
        notes.append(
            f"{MAX_CHARTED_KEYS} of {synced} synced audiences and traits are charted; all are in the table "
            f"(`report --audience KEY` charts a key first)."
        )
    if len(keys) > MAX_KEY_ROWS:
        notes.append(f"The table lists the first {MAX_KEY_ROWS} of {len(keys)} keys.")
    return tuple(notes)


def _runs_table(newest: Sequence[RunBar]) -> Table:
    return _table(
        "latest-runs",
        "Latest runs",
        ("run", "mode", "status", "started", *COUNT_COLUMNS),
        [(b.run_id, b.mode, b.status, b.started_at, *(getattr(b, c) for c in COUNT_COLUMNS)) for b in newest],
        empty="No runs yet: `audience-sync run` makes the first.",
        intro=f"Newest first (at most {MAX_ROWS}).",
    )


COUNT_COLUMNS = ("entered", "exited", "changed", "sent", "failed", "skipped", "held", "pending")


def _keys_table(keys: Sequence[KeySeries], config: Config) -> Table:
    def changes(k: KeySeries, name: str) -> int | None:
        return sum(getattr(p, name) for p in k.points) if k.points else None

    return Table(
        "keys",
        "Audiences and traits",
        ("key", "name", "class", "status", "size now", "entered", "exited", "charted"),
        tuple(
            (
                k.key,
                k.name,
                k.computation_class,
                k.status,
                ", ".join(f"{d}: {n}" for d, n in k.latest.items()) or "not synced yet",
                changes(k, "entered"),
                changes(k, "exited"),
                "yes" if k.points else "",
            )
            for k in keys[:MAX_KEY_ROWS]
        ),
        total=len(keys),
        empty=f"No audiences or traits are configured in {config.path}.",
        intro="Size now: what each destination held after the latest run that covered the key. Entered and exited: "
        "over the charted runs.",
    )


def _failures_table(failures: Sequence[dict[str, Any]]) -> Table:
    return _table(
        "failures",
        "Latest failures",
        ("run", "destination", "key", "user", "change", "value", "attempts", "reason", "at"),
        [
            (
                f["run_id"],
                f["destination"],
                f["computation_key"],
                f["user_id"],
                f["change"],
                json.dumps(f["new_value"], ensure_ascii=False),
                f["attempts"],
                f["error"],
                f["created_at"],
            )
            for f in failures
        ],
        empty="No change failed in these runs.",
        intro="Changes a destination refused for good, newest run first, with the destination's reason "
        f"(at most {MAX_ROWS}). The next run computes them again.",
    )


def _outbox_table(pending: Sequence[dict[str, Any]]) -> Table:
    return _table(
        "outbox",
        "Pending outbox",
        ("destination", "key", "run", "run started", "changes", "reason"),
        [(p["destination"], p["computation_key"], p["run_id"], p["started_at"], p["n"], p["error"]) for p in pending],
        empty="Nothing is pending: every change was delivered, failed for good, skipped or held.",
        intro="Changes not acknowledged yet, oldest run first; the next run recomputes and sends them.",
    )


def _holds_table(holds: Sequence[dict[str, Any]]) -> Table:
    return _table(
        "holds",
        "Held by the mass-exit guard",
        ("run", "destination", "key", "changes held", "reason"),
        [(h["run_id"], h["destination"], h["computation_key"], h["n"], h["error"]) for h in holds],
        empty="The guard held nothing back in these runs.",
        intro="Audiences that would have lost too many members at once; nothing of them was sent in that run.",
    )
