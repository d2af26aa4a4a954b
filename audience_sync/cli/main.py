"""The ``audience-sync`` command: parse, call one library function, render, map errors to exit codes.

Exit codes: 0 every deliverable change delivered (or nothing to do); 1 the run failed; 2 usage or config
error; 3 the run finished but some changes failed delivery and stay pending; 4 ``verify`` / ``adopt`` cannot read
the destination back.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

import click
from rich.markup import escape

from ..errors import AudienceSyncError
from ..redact import scrub
from . import admin_commands, inspect_commands, run_commands
from .app import EXIT_USAGE, cli, stderr


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the command and turns every error into a message and its exit code.

    Run as the program (``argv`` None: the ``audience-sync`` script, ``python -m audience_sync``), it first moves
    what the imports created into the collector's permanent generation (:func:`gc.freeze`), as a fork server
    does: those objects live until the process ends, and without this every full collection of the run and the
    interpreter's collections at exit walk all of them (at exit 0.3-0.6 s on a 2-core machine, the largest
    fixed cost of a short run after the imports themselves). Objects the command creates are collected as before.
    A caller that passes ``argv`` (a test, in its own long-lived process) keeps its collector as it is.
    """
    if argv is None:
        gc.freeze()
    try:
        cli.main(args=argv, prog_name="audience-sync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns a KeyboardInterrupt into Abort
            _interrupted()
        stderr.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except AudienceSyncError as exc:
        stderr.print(f"[red]error:[/red] {escape(scrub(str(exc)))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> None:
    """A second Ctrl-C: the run was recorded failed on the way out; exit 130 without waiting for the requests
    still under way (their threads would hold up the interpreter's exit)."""
    stderr.print("interrupted")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


__all__ = ["admin_commands", "cli", "inspect_commands", "main", "run_commands"]
