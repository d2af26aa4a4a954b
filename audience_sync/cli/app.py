"""The ``audience-sync`` click group and what every command shares: options, consoles, output formats."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from .. import __version__
from . import render
from .logs import LOG_FORMATS, LogFormat, configure_logging

F = TypeVar("F", bound=Callable[..., Any])


log = logging.getLogger(__name__)


def console(*, to_stderr: bool = False) -> Console:
    """A console; when output is not a terminal, wide enough that tables do not wrap in logs and mail."""
    console = Console(stderr=to_stderr)
    if not console.is_terminal:
        console = Console(stderr=to_stderr, width=200)
    return console


stdout = console()


stderr = console(to_stderr=True)


EXIT_USAGE = 2


LOG_LEVELS = ("debug", "info", "warning", "error")


def _shared_options(default_level: str | None, *, default_format: str | None) -> list[Callable[[F], F]]:
    """``--config``, ``--log-level`` and ``--log-format``: on the group (before the command) and on every command
    (after it); None defaults let a command tell a value given to it from one given to the group."""
    return [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Config file (default: $AUDIENCE_SYNC_CONFIG, else config/audience_sync.toml).",
        ),
        click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS),
            default=None,
            help=f"Log detail on stderr (default: {default_level or 'warning'}).",
        ),
        click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            default=None,
            help=f"Log lines for people (text) or one JSON object per line (json) for log collectors "
            f"(default: {default_format or 'text'}).",
        ),
    ]


def command_options(default_level: str = "warning") -> Callable[[F], F]:
    """``--config``, ``--log-level`` (default ``default_level``) and ``--log-format``, taken by every command, after
    its name or before it (on the group): a value given after the command wins."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(
            *args: Any,
            config_path: str | None,
            log_level: str | None,
            log_format: LogFormat | None,
            **kwargs: Any,
        ) -> Any:
            ctx = click.get_current_context(silent=True)
            shared: dict[str, Any] = (ctx.find_root().obj or {}) if ctx is not None else {}
            configure_logging(
                log_level or shared.get("log_level") or default_level,
                log_format or shared.get("log_format") or "text",
            )
            return func(*args, config_path=config_path or shared.get("config_path"), **kwargs)

        decorated: Callable[..., Any] = wrapper
        for option in reversed(_shared_options(default_level, default_format="text")):
            decorated = option(decorated)
        return decorated  # type: ignore[return-value]

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
        "--format", "fmt", type=click.Choice(render.FORMATS), default="table", show_default=True, help="Output format."
    )(func)


class _Group(click.Group):
    """The command group, listing each command's whole first help line (click cuts them to the width)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _group_options(func: F) -> F:
    for option in reversed(_shared_options(None, default_format=None)):
        func = option(func)
    return func


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="audience-sync")
@_group_options
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str | None, log_format: str | None) -> None:
    """Sync audiences and computed traits from your warehouse to user-property destinations.

    Each run computes every audience's members and every trait's values, compares them with what each
    destination last acknowledged, and sends only the changes. --config, --log-level and --log-format may come
    before the command or after it.
    """
    ctx.obj = {"config_path": config_path, "log_level": log_level, "log_format": log_format}


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
    from ..sources.builder.windows import parse_instant

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


def emit(
    rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str, *, title: str, json_columns: tuple[str, ...] = ()
) -> None:
    if fmt == "json":
        click.echo(render.to_json(rows))
    elif fmt == "csv":
        click.echo(render.to_csv(rows, columns, json_columns=json_columns), nl=False)
    else:
        render.print_table(stdout, rows, columns, title=title, json_columns=json_columns)
