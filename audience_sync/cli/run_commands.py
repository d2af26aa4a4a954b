"""Commands that run syncs: ``run``, ``resync``, ``schedule``, ``demo``; one graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import threading
from pathlib import Path

import click
from rich.markup import escape

from .. import commands
from ..config import ALERTS, Config, load_config
from ..errors import AudienceSyncError
from ..ops.attempts import attempt_of
from ..ops.postrun import after_run
from ..ops.signals import graceful_stop, interrupt
from ..run.plan import Mode, RunFilters
from ..run.progress import NoProgress, Progress
from ..run.sync import RunResult, run_sync
from . import render
from .app import (
    as_of_option,
    cli,
    command_options,
    common_options,
    metrics_option,
    stderr,
    stdout,
    with_filters,
)
from .logs import log_format
from .progress import RichProgress

log = logging.getLogger(__name__)


def _progress() -> Progress | RichProgress:
    return RichProgress(stderr) if stderr.is_terminal else NoProgress()


#: what the first SIGTERM/SIGINT of a run says it will do
FINISHING = "finishing the changes in flight, then stopping (the rest stays pending for the next run)"


def _config_for(config_path: str | None, destinations: tuple[str, ...]) -> Config:
    """The config with the secrets of the destinations this run uses (and the alerts webhook's) read and checked;
    those of the others are not needed."""
    return load_config(config_path, secrets_for=(*destinations, ALERTS) if destinations else None)


def _run(
    config: Config,
    filters: RunFilters,
    as_json: bool,
    metrics_file: Path | None,
    *,
    mode: Mode = "incremental",
    quiet: bool = False,
) -> None:
    scope = attempt_of(config, filters.destinations or None, filters.audiences or None, dry_run=filters.dry_run)
    progress = _progress()
    try:
        with (
            graceful_stop(interrupt, FINISHING) as stop,
            progress if isinstance(progress, RichProgress) else contextlib.nullcontext(),
        ):
            result = run_sync(
                config,
                mode=mode,
                destinations=filters.destinations or None,
                audiences=filters.audiences or None,
                users=filters.users or None,
                dry_run=filters.dry_run,
                force=filters.force,
                wait=filters.wait,
                as_of=filters.as_of,
                progress=progress,
                stop=stop,
            )
    except AudienceSyncError as exc:
        after_run(config, scope(error=exc), metrics_file=metrics_file)
        raise
    after_run(config, scope(result=result), metrics_file=metrics_file)
    _finish(result, as_json, quiet)


def _finish(result: RunResult, as_json: bool, quiet: bool = False) -> None:
    """Print the run's summary: JSON with ``--json``; else the table, unless ``--quiet``, or JSON logs (which carry
    the summary as a record of their own) go where no terminal is, as from cron or a timer."""
    if as_json:
        click.echo(render.to_json(result.to_dict()))
    elif not quiet and (log_format() != "json" or stdout.is_terminal):
        render.print_run_summary(stdout, result.to_dict())
    sys.exit(result.exit_code)


quiet_option = click.option(
    "--quiet", is_flag=True, help="Print no summary table (JSON logs still carry the summary; --json still prints it)."
)


@cli.command()
@common_options
@with_filters
@metrics_option
@as_of_option
@quiet_option
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
    quiet: bool,
) -> None:
    """One incremental run: send only the users whose membership or value changed."""
    config = _config_for(config_path, destinations)
    filters = RunFilters(destinations, audiences, None, dry_run, force, wait or 0.0, as_of)
    _run(config, filters, as_json, metrics_file, quiet=quiet)


@cli.command()
@common_options
@with_filters
@click.option("--user", "users", multiple=True, metavar="ID", help="Only this user id (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@metrics_option
@as_of_option
@quiet_option
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
    quiet: bool,
) -> None:
    """Full resync: every current member gets its current value again; users who left get false/null.

    With --user, every key the destination holds for those users is sent again, false and null included; an
    unknown user id (in no audience or trait, never sent) stops the run before anything is sent (exit 2)."""
    config = _config_for(config_path, destinations)
    if not yes and not dry_run:
        scope = ", ".join(audiences) or "every audience and trait"
        who = f" of user(s) {', '.join(users)}" if users else " of every current member"
        what = f"{scope}{who} to {', '.join(destinations) or 'every destination'}"
        if not sys.stdin.isatty():
            raise click.UsageError(f"resync re-sends {what}: pass --yes to confirm")
        click.confirm(f"Re-send {what}?", abort=True)
    filters = RunFilters(destinations, audiences, users, dry_run, force, wait or 0.0, as_of)
    _run(config, filters, as_json, metrics_file, mode="resync", quiet=quiet)


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
    from ..ops.scheduler import SyncScheduler, describe_jobs

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
    commands.upgrade_database(config)  # fail fast (exit 1) when the state database is unreachable

    def exit_now(name: str) -> None:
        log.warning("%s again: stopping at once", name)
        logging.shutdown()
        os._exit(130)  # the interrupted run is marked abandoned by the next run

    with graceful_stop(exit_now, "finishing the run in progress, then stopping", stop):
        service.serve()


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
    from .. import demo as shop

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
    render.print_run_summary(stdout, result.to_dict())
    if result.exit_code:
        sys.exit(result.exit_code)
