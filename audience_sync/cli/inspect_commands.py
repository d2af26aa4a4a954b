"""Read-only commands: ``diff``, ``runs``, ``audiences``, ``members``, ``report``, ``explain``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from rich.markup import escape

from .. import commands
from ..config import load_config
from ..store.schema import CHANGES, STATUSES
from . import render
from .app import as_of_option, cli, common_options, emit, format_option, stderr, stdout


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
@format_option
def members(config_path: str | None, key: str, destination: str | None, fmt: str) -> None:
    """Users a destination holds KEY for (audience members, or users with a trait value)."""
    config = load_config(config_path, secrets_for=())
    rows = commands.members(config, key, destination=destination)
    emit(
        rows,
        ("destination", "user_id", "email", "value", "updated_at"),
        fmt,
        title=f"members of {key}",
        json_columns=("value",),
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
    from ..inspection import html
    from ..inspection import report as inspect

    try:
        when = inspect.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    config = load_config(config_path, secrets_for=())
    data = inspect.build_report(config, destination=destination, since=when, limit=limit, audiences=audiences)
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
