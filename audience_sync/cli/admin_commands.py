"""Maintenance commands: ``prune`` and ``db upgrade`` / ``db copy``."""

from __future__ import annotations

import datetime as dt

import click
from rich.markup import escape

from .. import commands
from ..config import load_config, parse_duration
from .app import cli, common_options, stdout


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
    result = commands.prune_history(config, dt.timedelta(seconds=seconds), dry_run=dry_run, batch_size=batch_size)
    verb = "would delete" if dry_run else "deleted"
    stdout.print(
        f"{verb} {result.diffs} diff row{'' if result.diffs == 1 else 's'} and {result.runs} "
        f"run{'' if result.runs == 1 else 's'} that finished before "
        f"{result.cutoff.isoformat(timespec='seconds')}, and folded {result.ledger} membership ledger "
        f"row{'' if result.ledger == 1 else 's'} into the baseline at that instant"
    )


@cli.group()
def db() -> None:
    """State database maintenance."""


@db.command("upgrade")
@common_options
def db_upgrade(config_path: str | None) -> None:
    """Apply pending schema migrations to the state database (run does this too)."""
    config = load_config(config_path)
    revision = commands.upgrade_database(config)
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
    copied = commands.copy_state_database(config, target_url)
    stdout.print(escape(", ".join(f"{n} {table}" for table, n in copied.items()) + " rows copied"))
    stdout.print(escape("Now set [state] url to the new database; the next run continues from the copied snapshot."))


@cli.command()
@common_options
@click.option("--destination", required=True, metavar="NAME", help="The destination to adopt (Gist).")
def adopt(config_path: str | None, destination: str) -> None:
    """Seed the snapshot from what DESTINATION already holds for the configured keys (moving from Segment Engage),
    so that the first run sends only the real differences. Exit 4 when it cannot be read back."""
    from ..inspection import verify as readback

    config = load_config(config_path, secrets_for=(destination,))
    result = readback.adopt(config, destination)
    stdout.print(
        f"{result.destination}: read {result.contacts:,} contacts, adopted {result.adopted:,} values into the snapshot",
        highlight=False,
    )
