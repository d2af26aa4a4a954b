"""Read-only commands: ``diff``, ``runs``, ``audiences``, ``members``, ``user``, ``report``, ``explain``."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click
from rich.markup import escape

from .. import commands
from ..config import load_config
from ..store.schema import CHANGES, STATUSES
from . import render
from .app import _instant, as_of_option, cli, common_options, emit, format_option, stderr, stdout


@cli.command()
@common_options
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest run).")
@click.option("--audience", "computation", metavar="KEY", default=None, help="Only this audience or trait key.")
@click.option("--destination", default=None, metavar="NAME", help="Only this destination.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only changes with this status.")
@click.option("--user", "users", multiple=True, metavar="ID", help="Only this user id (repeatable).")
@click.option(
    "--change",
    "changes",
    multiple=True,
    type=click.Choice(CHANGES),
    help="Only changes of this kind (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows.")
@format_option
def diff(
    config_path: str | None,
    run_id: int | None,
    computation: str | None,
    destination: str | None,
    status: str | None,
    users: tuple[str, ...],
    changes: tuple[str, ...],
    limit: int | None,
    fmt: str,
) -> None:
    """The changes of a run: who entered, exited or changed, and what became of each."""
    config = load_config(config_path, secrets_for=())
    rid, rows = commands.list_diffs(
        config,
        run_id=run_id,
        computation=computation,
        status=status,
        destination=destination,
        users=users,
        changes=changes,
        limit=limit,
    )
    emit(
        rows,
        render.DIFF_COLUMNS,
        fmt,
        title=f"diff of run {rid}" if rid else "no runs yet",
        json_columns=("old_value", "new_value"),
    )


@cli.command()
@common_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@format_option
def runs(config_path: str | None, limit: int, fmt: str) -> None:
    """Run history, newest first."""
    config = load_config(config_path, secrets_for=())
    rows = commands.list_runs(config, limit=limit)
    if fmt == "json":
        click.echo(render.to_json(rows))
        return
    emit(render.runs_rows(rows), render.RUN_COLUMNS, fmt, title="runs")


@cli.command()
@common_options
@click.option(
    "--history", is_flag=True, help="Include retired keys, and each key's size, entered, exited and changed per run."
)
@click.option("--audience", metavar="KEY", default=None, help="Only this audience or trait (key or name).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="With --history: the newest N runs."
)
@click.option(
    "--revive", metavar="KEY", default=None, help="Let a retired key be used again (the same audience returning)."
)
@format_option
def audiences(
    config_path: str | None, history: bool, audience: str | None, limit: int, revive: str | None, fmt: str
) -> None:
    """Configured audiences and traits: key, class, status and current size per destination.

    With --history, also every retired key, and per run and destination the size the destination held after the
    run and the run's entered, exited and changed (CSV: those rows only).
    """
    from ..inspection import history as sizes

    config = load_config(config_path, secrets_for=())
    if revive:
        commands.revive(config, revive)
        stderr.print(escape(f"key {revive!r} is active again; the next run continues from its snapshot"))
    if history:
        rows = sizes.audiences_with_history(config, audience=audience, limit=limit)
    else:
        rows = sizes.only(config, commands.audiences_overview(config), audience)
    if fmt == "json":
        click.echo(render.to_json(rows))
        return
    points = sizes.history_rows(rows) if history else []
    if history and fmt == "csv":
        emit(points, sizes.HISTORY_COLUMNS, fmt, title="")
        return
    for row in rows:
        row["size"] = ", ".join(f"{d}: {n}" for d, n in row["sizes"].items())
    emit(rows, ("name", "key", "class", "status", "size"), fmt, title="audiences and traits")
    if history:
        emit(points, sizes.HISTORY_COLUMNS, fmt, title=f"sizes after each of the last {limit} runs")


@cli.command()
@common_options
@click.argument("key")
@click.option("--destination", default=None, metavar="NAME", help="Only this destination.")
@click.option(
    "--at",
    "at",
    default=None,
    callback=_instant,
    metavar="ISO-TIME",
    help="Who held KEY at this instant (from the membership ledger; default: now, from the snapshot).",
)
@format_option
def members(config_path: str | None, key: str, destination: str | None, at: dt.datetime | None, fmt: str) -> None:
    """Users a destination holds KEY for (audience members, or users with a trait value), now or --at an instant."""
    from ..inspection import ledger

    config = load_config(config_path, secrets_for=())
    rows = ledger.members(config, key, at=at, destination=destination)
    when = f" at {at.isoformat(timespec='seconds')}" if at else ""
    emit(
        rows,
        ("destination", "user_id", "value", "since") if at else ("destination", "user_id", "email", "value", "since"),
        fmt,
        title=f"members of {key}{when}",
        json_columns=("value",),
    )


@cli.command()
@common_options
@click.argument("user_id")
@format_option
def user(config_path: str | None, user_id: str, fmt: str) -> None:
    """USER_ID's acknowledged value per destination and key now, and every change with its run, time, status
    (sent, pending, failed, skipped, held, superseded, adopted) and reason."""
    from ..inspection import ledger

    config = load_config(config_path, secrets_for=())
    story = ledger.user(config, user_id)
    if fmt == "json":
        click.echo(render.to_json(story))
        return
    if fmt == "csv":
        emit(story["history"], USER_HISTORY_COLUMNS, fmt, title="", json_columns=("old_value", "new_value"))
        return
    emit(
        story["current"],
        ("destination", "computation_key", "value", "email", "run_id", "updated_at", "in_doubt"),
        fmt,
        title=f"user {user_id}: acknowledged values now",
        json_columns=("value",),
    )
    emit(
        story["history"],
        USER_HISTORY_COLUMNS,
        fmt,
        title=f"user {user_id}: history",
        json_columns=("old_value", "new_value"),
    )


USER_HISTORY_COLUMNS = (
    "destination",
    "computation_key",
    "run_id",
    "time",
    "change",
    "old_value",
    "new_value",
    "status",
    "reason",
)


@cli.command("report")
@common_options
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PATH", help="HTML file to write."
)
@click.option("--destination", default=None, metavar="NAME", help="Only this destination.")
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="Only runs started since: an ISO 8601 instant (2026-05-01T00:00Z; UTC without a zone) or a duration (7d).",
)
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="The newest N runs.")
@click.option("--audience", "audiences", multiple=True, metavar="KEY", help="Chart this key first (repeatable).")
def report_command(
    config_path: str | None,
    out: Path,
    destination: str | None,
    since: str | None,
    limit: int,
    audiences: tuple[str, ...],
) -> None:
    """Write a self-contained HTML report: runs over time, each audience's size and churn per run, the latest
    failures, the pending outbox and the guard's holds. Nothing in it is loaded from the network."""
    from ..inspection import report as inspect

    try:
        when = inspect.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    config = load_config(config_path, secrets_for=())
    data = inspect.build_report(config, destination=destination, since=when, limit=limit, audiences=audiences)
    from ..inspection import html  # matplotlib's import, paid once the input has been accepted

    page = html.render(data)
    try:
        html.write(out, page)
    except OSError as exc:
        raise click.BadParameter(f"cannot write {out}: {exc.strerror or exc}", param_hint="--out") from None
    stdout.print(
        f"wrote {escape(str(out))} ({len(page.encode()) // 1024:,} KB): {len(data.runs):,} runs and "
        f"{data.charted_keys:,} audiences and traits charted",
        highlight=False,
    )


@cli.command()
@common_options
@click.argument("key")
@as_of_option
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)
def explain(config_path: str | None, key: str, as_of: dt.datetime | None, fmt: str) -> None:
    """The SQL a builder audience or trait compiles to (parameters shown) and its size as of now or --as-of."""
    from ..sources.builder.explain import explain as explain_key
    from ..sources.builder.explain import explain_text

    result = explain_key(load_config(config_path, secrets_for=()), key, as_of)
    click.echo(render.to_json(result) if fmt == "json" else explain_text(result), nl=fmt == "json")


@cli.command()
@common_options
@click.option("--destination", default=None, metavar="NAME", help="Only this destination (default: every one).")
@click.option(
    "--sample", type=click.IntRange(min=1), default=None, metavar="N", help="Read N snapshot users, one by one."
)
@click.option("--repair", is_flag=True, help="Mark the users that differ so that the next run sends them the truth.")
@format_option
def verify(config_path: str | None, destination: str | None, sample: int | None, repair: bool, fmt: str) -> None:
    """Read back what a destination holds and list every user and key whose value differs from the snapshot.

    Exit 0 when nothing differs, 1 when something does, 4 when a destination cannot be read back (Segment, webhook,
    JSONL)."""
    from ..errors import NotReadable
    from ..inspection import verify as readback

    config = load_config(config_path, secrets_for=(destination,) if destination else None)
    readable, unreadable = readback.readable_destinations(config, destination)
    for name in unreadable:
        stderr.print(escape(f"destination {name!r} cannot be read back (only Gist can): not verified"))
    if not readable:
        raise NotReadable(
            f"no destination to verify: {', '.join(map(repr, unreadable))} cannot be read back (only Gist can)",
            destination=destination or ", ".join(unreadable),
        )
    results = [readback.verify(config, name, sample=sample, repair=repair) for name in readable]
    rows = [d.to_dict() for r in results for d in r.differences]
    emit(
        rows,
        ("destination", "user_id", "computation_key", "expected", "actual", "kind"),
        fmt,
        title="differences between the destination and the snapshot",
        json_columns=("expected", "actual"),
    )
    for r in results:
        note = f"; {r.repaired} marked for the next run" if repair else ""
        stderr.print(
            escape(f"{r.destination}: {r.checked_users} users checked, {len(r.differences)} differences{note}")
        )
    if rows:
        sys.exit(1)
