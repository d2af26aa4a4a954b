"""Rendering runs, diffs and audiences as a table, JSON or CSV. No business logic lives here.

Everything shown in a table or line comes from outside (ids, emails, values, names, a destination's error
text) and may contain rich markup such as ``[/]`` or ``[link=...]``: it is handed to rich as :class:`Text`,
never as a markup string, so it is shown literally and cannot break the output.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..model import COUNT_KEYS

FORMATS = ("table", "json", "csv")

RUN_COLUMNS = (
    "run_id",
    "mode",
    "status",
    "started_at",
    "finished_at",
    "entered",
    "exited",
    "changed",
    "sent",
    "failed",
    "skipped",
    "pending",
    "held",
    "planned",
    "identifiers",
    "error",
)
DIFF_COLUMNS = (
    "run_id",
    "destination",
    "computation_key",
    "user_id",
    "email",
    "change",
    "old_value",
    "new_value",
    "status",
    "attempts",
    "error",
)


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` with its UTC offset shown: the state database keeps times in UTC, some without a zone."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return utc(value).isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(data: Any) -> str:
    """JSON text for ``data`` (datetimes as ISO 8601), indented for people and parseable by scripts."""
    return json.dumps(data, default=_default, indent=2, ensure_ascii=False)


def _cell(value: Any, *, json_values: bool) -> str:
    if value is None:
        return "" if not json_values else "null"
    if isinstance(value, dt.datetime):
        shown = utc(value)
        return shown.isoformat(timespec="seconds") if json_values else shown.isoformat(" ", timespec="seconds")
    if json_values or isinstance(value, bool | list | dict):
        return json.dumps(value, ensure_ascii=False, default=_default)
    return str(value)


def _flatten_run(run: dict[str, Any]) -> dict[str, Any]:
    counts = run.get("counts") or {}
    return {
        **run,
        **{k: counts.get(k, 0) for k in COUNT_KEYS},
    }


def runs_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs with their totals lifted out of ``counts`` for tables and CSV."""
    return [_flatten_run(r) for r in runs]


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, json_columns: Sequence[str] = ()) -> str:
    """CSV with a header; values in ``json_columns`` are written as JSON (``true``, ``5``, ``"x"``, ``null``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c), json_values=c in json_columns) for c in columns])
    return buffer.getvalue()


def print_table(
    console: Console,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    json_columns: Sequence[str] = (),
) -> None:
    """Print ``rows`` as a rich table (or a one-line note when there are none); every cell and the title are
    shown literally (no markup is interpreted in them)."""
    if not rows:
        console.print(Text(f"{title + ': ' if title else ''}nothing to show", style="dim"))
        return
    table = Table(title=Text(title) if title is not None else None, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(_cell(row.get(c), json_values=c in json_columns)) for c in columns))
    console.print(table)


def print_run_summary(console: Console, result: dict[str, Any]) -> None:
    """A run's outcome for people: per destination counts, errors, and where to look next. Names and the
    error (which may quote a destination's answer) are shown literally."""
    counts = result["counts"]
    table = Table(title=Text(f"run {result['run_id']} ({result['mode']}): {result['status']}"), header_style="bold")
    keys: tuple[str, ...] = ("entered", "exited", "changed", "sent", "failed", "skipped", "pending", "held")
    if result["mode"] == "dry_run":  # what the run would send
        keys = (*keys, "planned")
    if counts.get("identifiers"):  # emails that changed or appeared, sent again with the current values
        keys = (*keys, "identifiers")
    table.add_column("destination")
    for key in keys:
        table.add_column(key, justify="right")
    for name, c in sorted(counts.get("destinations", {}).items()):
        table.add_row(Text(str(name)), *(str(c.get(k, 0)) for k in keys))
    table.add_row("[bold]total[/bold]", *(f"[bold]{counts.get(k, 0)}[/bold]" for k in keys))
    console.print(table)
    for key, st in sorted(counts.get("sources", {}).items()):
        extra = f", {st['null_user_ids']} rows without user_id dropped" if st.get("null_user_ids") else ""
        console.print(Text(f"  {key}: {st['members']} users from {st['rows']} source rows{extra}"))
    if result.get("error"):
        console.print(Text(str(result["error"]), style="red"))
    for name, c in sorted(counts.get("destinations", {}).items()):
        last = (result.get("destinations") or {}).get(name, {}).get("last_error")
        undelivered = {k: c.get(k, 0) for k in ("pending", "failed") if c.get(k)}
        if last and undelivered:
            owed = ", ".join(f"{n} {k}" for k, n in undelivered.items())
            console.print(Text(f"  {name}: {owed}; last error: {last}", style="yellow"))
    console.print(f"[dim]details: audience-sync diff --run {result['run_id']}[/dim]")
