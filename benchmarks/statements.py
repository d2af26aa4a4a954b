"""Benchmark aid (run by hand, not a test): one audience-sync command with every statement it runs through
SQLAlchemy, and every commit, timed.

Runs the command in this process, its imports frozen as the program freezes them
(``python benchmarks/statements.py [--top N] -- run --json --config FILE``), and prints on stderr, per statement
text (whitespace folded; a long one shown by its start and its end) and for the commits: the seconds spent in the
driver, how many times it ran, and the MB the whole process wrote and read through the kernel meanwhile
(``wchar``/``rchar`` of ``/proc/self/io``: the database file and its write-ahead log, pages the statement spilled,
a checkpoint a commit ran, and whatever another thread did at the same time). The command's own output goes to
stdout as usual. Work done on a driver's own connection is not seen: ``COPY`` of a landing or a pipe, DuckDB's
and ADBC's cursors.

On a SQLite state database this says where a run's time and bytes go, statement by statement (the I/O counters
are meaningful there only: a PostgreSQL server does its own writing). The numbers are the driver's time as seen
from Python, on a machine that may be doing other work: compare runs of the same size back to back.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, default


def io_bytes() -> tuple[int, int]:
    """Bytes this process has written and read through the kernel so far."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["rchar"])


@dataclass
class Tally:
    """What one statement text (or the commits) cost over the command."""

    runs: int = 0
    seconds: float = 0.0
    written: int = 0
    read: int = 0

    def add(self, seconds: float, start: tuple[int, int], end: tuple[int, int]) -> None:
        self.runs += 1
        self.seconds += seconds
        self.written += end[0] - start[0]
        self.read += end[1] - start[1]


TALLIES: dict[str, Tally] = {}


def _key(statement: str) -> str:
    """A statement's text with its whitespace folded: statements that differ only past their start stay apart."""
    return re.sub(r"\s+", " ", statement).strip()


def _label(key: str) -> str:
    """How a statement is shown: its start and, when long, its end; escaped for a table cell (SQL's ``||``)."""
    shown = key if len(key) <= 150 else f"{key[:100]} … {key[-45:]}"
    return shown.replace("|", "\\|")


def install() -> None:
    """Time every cursor execution of every engine, and every commit, from now on."""

    @event.listens_for(Engine, "before_cursor_execute")
    def before(conn: Connection, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
        conn.info.setdefault("statement_starts", []).append((time.perf_counter(), io_bytes()))

    @event.listens_for(Engine, "after_cursor_execute")
    def after(conn: Connection, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        started, start_io = conn.info["statement_starts"].pop()
        TALLIES.setdefault(_key(statement), Tally()).add(time.perf_counter() - started, start_io, io_bytes())

    commit: Callable[[default.DefaultDialect, Any], None] = default.DefaultDialect.do_commit

    def timed_commit(self: default.DefaultDialect, dbapi_connection: Any) -> None:
        started, start_io = time.perf_counter(), io_bytes()
        commit(self, dbapi_connection)
        TALLIES.setdefault("COMMIT", Tally()).add(time.perf_counter() - started, start_io, io_bytes())

    default.DefaultDialect.do_commit = timed_commit  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=15, help="how many statements to list, costliest first")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the audience-sync command line, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the audience-sync command after --, e.g. -- run --json --config audience_sync.toml")
    install()
    from audience_sync.cli.main import main as audience_sync

    gc.freeze()  # as the program does before its command (cli/main.py): the same collector work, the same exit
    started, start_io = time.perf_counter(), io_bytes()
    code = 0
    try:
        audience_sync(list(command))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    seconds, end_io = time.perf_counter() - started, io_bytes()
    print(
        f"# the command: {seconds:.2f} s, exit {code}, written {(end_io[0] - start_io[0]) / 1e6:,.0f} MB, "
        f"read {(end_io[1] - start_io[1]) / 1e6:,.0f} MB",
        file=sys.stderr,
    )
    print("| s | runs | written MB | read MB | statement |", file=sys.stderr)
    print("|---:|---:|---:|---:|---|", file=sys.stderr)
    ranked = sorted(TALLIES.items(), key=lambda item: -item[1].seconds)[: args.top]
    for key, tally in ranked:
        print(
            f"| {tally.seconds:.3f} | {tally.runs} | {tally.written / 1e6:,.1f} | {tally.read / 1e6:,.1f} | "
            f"`{_label(key)}` |",
            file=sys.stderr,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
