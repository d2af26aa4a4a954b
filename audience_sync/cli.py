"""The ``audience-sync`` command: parse, call one library function, render, map errors to exit codes.

Exit codes: 0 every deliverable change delivered (or nothing to do); 1 the run failed; 2 usage or config
error; 3 the run finished but some changes failed delivery and stay pending.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from . import __version__, queries, report
from .attempts import attempt_of
from .config import Config, load_config, parse_duration
from .errors import AudienceSyncError
from .logs import LOG_FORMATS, LogFormat, configure_logging
from .postrun import after_run
from .progress import NoProgress, Progress, RichProgress
from .redact import scrub
from .store.schema import STATUSES
from .sync import RunResult, run_sync

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)


def _console(*, to_stderr: bool = False) -> Console:
    """A console; when output is not a terminal, wide enough that tables do not wrap in logs and mail."""
    console = Console(stderr=to_stderr)
    if not console.is_terminal:
        console = Console(stderr=to_stderr, width=200)
    return console


stdout = _console()
stderr = _console(to_stderr=True)

EXIT_USAGE = 2


def command_options(default_level: str = "warning") -> Callable[[F], F]:
    """``--config``, ``--log-level`` (default ``default_level``) and ``--log-format``, taken by every command."""

    def decorate(func: F) -> F:
        @click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Config file (default: $AUDIENCE_SYNC_CONFIG, else config/audience_sync.toml).",
        )
        @click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"]),
            default=default_level,
            show_default=True,
            help="Log detail on stderr.",
        )
        @click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            default="text",
            show_default=True,
            help="Log lines for people (text) or one JSON object per line (json) for log collectors.",
        )
        @functools.wraps(func)
        def wrapper(*args: Any, config_path: str | None, log_level: str, log_format: LogFormat, **kwargs: Any) -> Any:
            configure_logging(log_level, log_format)
            return func(*args, config_path=config_path, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


common_options = command_options()


def metrics_option(func: F) -> F:
    return click.option(
        "--metrics-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="PATH",
        help="After each run, write Prometheus metrics here (for node_exporter's textfile collector).",
    )(func)


def format_option(func: F) -> F:
    return click.option(
        "--format", "fmt", type=click.Choice(report.FORMATS), default="table", show_default=True, help="Output format."
    )(func)


def _progress() -> Progress | RichProgress:
    return RichProgress(stderr) if stderr.is_terminal else NoProgress()


@contextlib.contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT, so a run finishes its chunk in flight and stops cleanly;
    a second signal interrupts at once."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning(
            "%s: finishing the changes in flight, then stopping (the rest stays pending for the next run)",
            signal.Signals(signum).name,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(config: Config, as_json: bool, metrics_file: Path | None, **kwargs: Any) -> None:
    scope = attempt_of(config, kwargs.get("destinations"), kwargs.get("audiences"), dry_run=bool(kwargs.get("dry_run")))
    progress = _progress()
    try:
        with _graceful_stop() as stop, progress if isinstance(progress, RichProgress) else contextlib.nullcontext():
            result = run_sync(config, progress=progress, stop=stop, **kwargs)
    except AudienceSyncError as exc:
        after_run(config, scope(error=exc), metrics_file=metrics_file)
        raise
    after_run(config, scope(result=result), metrics_file=metrics_file)
    _finish(result, as_json)


def _finish(result: RunResult, as_json: bool) -> None:
    if as_json:
        click.echo(report.to_json(result.to_dict()))
    else:
        report.print_run_summary(stdout, result.to_dict())
    sys.exit(result.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="audience-sync")
def cli() -> None:
    """Sync audiences and computed traits from your warehouse to user-property destinations.

    Each run computes every audience's members and every trait's values, compares them with what each
    destination last acknowledged, and sends only the changes.
    """


filters = [
    click.option(
        "--destination", "destinations", multiple=True, metavar="NAME", help="Only this destination (repeatable)."
    ),
    click.option(
        "--audience",
        "audiences",
        multiple=True,
        metavar="KEY",
        help="Only this audience or trait, by key or name (repeatable).",
    ),
    click.option("--dry-run", is_flag=True, help="Compute and store the diff as a dry_run; send nothing."),
    click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON."),
    click.option("--force", is_flag=True, help="Send even when the mass-exit guard would hold an audience back."),
    click.option(
        "--wait",
        "wait",
        type=float,
        default=None,
        is_flag=False,
        flag_value=3600.0,
        metavar="[SECONDS]",
        help="If another run holds the lock, wait for it (default up to 3600 s) instead of exiting 1.",
    ),
]


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    from .sources.builder.windows import parse_instant

    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def as_of_option(func: F) -> F:
    return click.option(
        "--as-of",
        "as_of",
        default=None,
        callback=_instant,
        metavar="ISO-TIME",
        help="Evaluate builder audiences and traits as of this instant (default: the run's start).",
    )(func)


def with_filters(func: F) -> F:
    for option in reversed(filters):
        func = option(func)
    return func


@cli.command()
@common_options
@with_filters
@metrics_option
@as_of_option
def run(
    config_path: str | None,
    destinations: tuple[str, ...],
    audiences: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
    wait: float | None,
    metrics_file: Path | None,
    as_of: dt.datetime | None,
) -> None:
    """One incremental run: send only the users whose membership or value changed."""
    config = load_config(config_path)
    _run(
        config,
        as_json,
        metrics_file,
        destinations=destinations or None,
        audiences=audiences or None,
        dry_run=dry_run,
        force=force,
        wait=wait or 0.0,
        as_of=as_of,
    )


@cli.command()
@common_options
@with_filters
@click.option("--user", "users", multiple=True, metavar="ID", help="Only this user id (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@metrics_option
@as_of_option
def resync(
    config_path: str | None,
    destinations: tuple[str, ...],
    audiences: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
    wait: float | None,
    users: tuple[str, ...],
    yes: bool,
    metrics_file: Path | None,
    as_of: dt.datetime | None,
) -> None:
    """Full resync: every current member gets its current value again; users who left get false/null."""
    config = load_config(config_path)
    if not yes and not dry_run:
        if not sys.stdin.isatty():
            raise click.UsageError("resync re-sends every current member's value: pass --yes to confirm")
        scope = ", ".join(audiences) or "every audience and trait"
        click.confirm(f"Re-send {scope} to {', '.join(destinations) or 'every destination'}?", abort=True)
    _run(
        config,
        as_json,
        metrics_file,
        mode="resync",
        destinations=destinations or None,
        audiences=audiences or None,
        users=users or None,
        dry_run=dry_run,
        force=force,
        wait=wait or 0.0,
        as_of=as_of,
    )


@cli.command()
@common_options
@click.option("--run", "run_id", type=int, default=None, help="Run id (default: the latest run).")
@click.option("--audience", "computation", metavar="KEY", default=None, help="Only this audience or trait key.")
@click.option("--destination", default=None, metavar="NAME", help="Only this destination.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only changes with this status.")
@format_option
def diff(
    config_path: str | None,
    run_id: int | None,
    computation: str | None,
    destination: str | None,
    status: str | None,
    fmt: str,
) -> None:
    """The changes of a run: who entered, exited or changed, and what became of each."""
    config = load_config(config_path)
    rid, rows = queries.list_diffs(
        config, run_id=run_id, computation=computation, status=status, destination=destination
    )
    _emit(
        rows,
        report.DIFF_COLUMNS,
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
    config = load_config(config_path)
    rows = queries.list_runs(config, limit=limit)
    if fmt == "json":
        click.echo(report.to_json(rows))
        return
    _emit(report.runs_rows(rows), report.RUN_COLUMNS, fmt, title="runs")


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
    from .inspection import history as sizes

    config = load_config(config_path)
    if revive:
        queries.revive(config, revive)
        stderr.print(escape(f"key {revive!r} is active again; the next run continues from its snapshot"))
    if history:
        rows = sizes.audiences_with_history(config, audience=audience, limit=limit)
    else:
        rows = sizes.only(config, queries.audiences_overview(config), audience)
    if fmt == "json":
        click.echo(report.to_json(rows))
        return
    points = sizes.history_rows(rows) if history else []
    if history and fmt == "csv":
        _emit(points, sizes.HISTORY_COLUMNS, fmt, title="")
        return
    for row in rows:
        row["size"] = ", ".join(f"{d}: {n}" for d, n in row["sizes"].items())
    _emit(rows, ("name", "key", "class", "status", "size"), fmt, title="audiences and traits")
    if history:
        _emit(points, sizes.HISTORY_COLUMNS, fmt, title=f"sizes after each of the last {limit} runs")


@cli.command()
@common_options
@click.argument("key")
@click.option("--destination", default=None, metavar="NAME", help="Only this destination.")
@format_option
def members(config_path: str | None, key: str, destination: str | None, fmt: str) -> None:
    """Users a destination holds KEY for (audience members, or users with a trait value)."""
    config = load_config(config_path)
    rows = queries.members(config, key, destination=destination)
    _emit(
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
    from .inspection import html
    from .inspection import report as inspect

    try:
        when = inspect.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    config = load_config(config_path)
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
    from .sources.builder.explain import explain as explain_key
    from .sources.builder.explain import explain_text

    result = explain_key(load_config(config_path), key, as_of)
    click.echo(report.to_json(result) if fmt == "json" else explain_text(result), nl=fmt == "json")


@cli.command()
@command_options(default_level="info")
@metrics_option
@click.option("--now", "run_now", is_flag=True, help="Run every job once at start, then on its schedule.")
@click.option("--list", "list_only", is_flag=True, help="Print the jobs and when each would fire next, then exit.")
def schedule(config_path: str | None, metrics_file: Path | None, run_now: bool, list_only: bool) -> None:
    """Run syncs on the config's schedules, in the foreground, until SIGTERM or SIGINT (then exit 0).

    One run at a time; the database lock keeps schedulers on other hosts from overlapping. A failed run is
    logged and the schedule goes on. Logs (info by default) give the next fire time after each run.
    """
    from .scheduler import SyncScheduler, describe_jobs

    config = load_config(config_path)
    stop = threading.Event()
    service = SyncScheduler(
        config,
        stop=stop,
        after_run=lambda attempt: after_run(config, attempt, metrics_file=metrics_file),
        run_now=run_now,
    )
    if list_only:
        for line in describe_jobs(service.jobs):
            stdout.print(escape(line), highlight=False)
        return
    queries.upgrade_database(config)  # fail fast (exit 1) when the state database is unreachable

    def handle(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("%s again: stopping at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(130)  # the interrupted run is marked abandoned by the next run
        stop.set()
        log.warning("%s: finishing the run in progress, then stopping", signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    service.serve()


@cli.command()
@common_options
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    help="Delete history of runs that finished longer ago than this, e.g. 90d, 12h.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--batch-size", type=click.IntRange(min=1), default=10_000, show_default=True)
def prune(config_path: str | None, older_than: str, dry_run: bool, batch_size: int) -> None:
    """Delete old diff rows and runs, in batches; never the snapshot, pending changes or running runs."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    config = load_config(config_path)
    result = queries.prune_history(config, dt.timedelta(seconds=seconds), dry_run=dry_run, batch_size=batch_size)
    verb = "would delete" if dry_run else "deleted"
    stdout.print(
        f"{verb} {result.diffs} diff row{'' if result.diffs == 1 else 's'} and {result.runs} "
        f"run{'' if result.runs == 1 else 's'} that finished before "
        f"{result.cutoff.isoformat(timespec='seconds')}"
    )


@cli.group()
def db() -> None:
    """State database maintenance."""


@db.command("upgrade")
@common_options
def db_upgrade(config_path: str | None) -> None:
    """Apply pending schema migrations to the state database (run does this too)."""
    config = load_config(config_path)
    revision = queries.upgrade_database(config)
    stdout.print(escape(f"state database at schema revision {revision}"))


@db.command("copy")
@common_options
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="SQLAlchemy URL of the empty state database to copy into (e.g. postgresql+psycopg://...).",
)
def db_copy(config_path: str | None, target_url: str) -> None:
    """Copy the state database (snapshot, runs, diffs, keys) into another, e.g. from SQLite to PostgreSQL.

    Stop scheduled runs first. Then point [state] url at the new database: runs continue where they left off.
    """
    config = load_config(config_path)
    copied = queries.copy_state_database(config, target_url)
    stdout.print(escape(", ".join(f"{n} {table}" for table, n in copied.items()) + " rows copied"))
    stdout.print(escape("Now set [state] url to the new database; the next run continues from the copied snapshot."))


@cli.command()
@common_options
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("demo/warehouse.db"),
    show_default=True,
    help="Where the demo shop lives (the config's [source] url).",
)
@click.option(
    "--newsletter",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("demo/newsletter.csv"),
    show_default=True,
    help="The demo's file-based audience.",
)
def demo(config_path: str | None, warehouse: Path, newsletter: Path) -> None:
    """Run the demo: build a small shop, sync it, move it a day forward, sync only what changed."""
    from . import demo as shop

    config = load_config(config_path)
    if not warehouse.exists():
        shop.build_shop(warehouse, newsletter)
        stdout.print(f"[bold]Built the demo shop[/bold] in {escape(str(warehouse))} (day {shop.shop_day(warehouse)}).")
        _demo_run(config, "First sync: every current member is sent.", shop.shop_instant(warehouse))
    day = shop.advance_day(warehouse, newsletter)
    stdout.print(f"\n[bold]The shop moved to {escape(str(day))}[/bold]: new orders, newsletter sign-ups and opt-outs.")
    _demo_run(
        config, "Incremental sync: only users whose membership or value changed are sent.", shop.shop_instant(warehouse)
    )
    outputs = ", ".join(str(getattr(d, "output_path", d.name)) for d in config.destinations)
    stdout.print(
        f"\nSent calls are in {escape(outputs)}. Next: `audience-sync runs`, `audience-sync diff`, "
        f"`audience-sync audiences`; run `audience-sync demo` again for another day."
    )


def _demo_run(config: Config, title: str, as_of: dt.datetime) -> None:
    stdout.print(escape(title))
    result = run_sync(config, progress=NoProgress(), trigger="demo", as_of=as_of)  # builder computations: shop time
    report.print_run_summary(stdout, result.to_dict())
    if result.exit_code:
        sys.exit(result.exit_code)


def _emit(
    rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str, *, title: str, json_columns: tuple[str, ...] = ()
) -> None:
    if fmt == "json":
        click.echo(report.to_json(rows))
    elif fmt == "csv":
        click.echo(report.to_csv(rows, columns, json_columns=json_columns), nl=False)
    else:
        report.print_table(stdout, rows, columns, title=title, json_columns=json_columns)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the command and turns every error into a message and its exit code."""
    try:
        cli.main(args=argv, prog_name="audience-sync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        stderr.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except AudienceSyncError as exc:
        stderr.print(f"[red]error:[/red] {escape(scrub(str(exc)))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
