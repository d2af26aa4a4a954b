"""benchmarks/statements.py, the per-statement timing aid, on a small SQLite run: keeps it working.

Run as a subprocess, as by hand: it patches SQLAlchemy's commit and listens on every engine, which a test process
must not inherit. Nothing here is timed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "statements.py"


def test_statements_lists_the_run_statements_and_commits(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "source.db") as db:
        db.execute("CREATE TABLE users (id INTEGER, email TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?)", [(i, f"u{i}@example.com") for i in range(40)])
    config = tmp_path / "config.toml"
    config.write_text(
        f'[state]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
        f'[source]\nurl = "sqlite:///{tmp_path / "source.db"}"\n'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp_path / "out.jsonl"}"\n'
        '[[audiences]]\nname = "All Users"\nsql = "SELECT id AS user_id, email FROM users"\n'
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--top", "1000", "--", "run", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["counts"]["sent"] == 40  # the command ran as it does alone
    lines = done.stderr.splitlines()
    summary = next(line for line in lines if line.startswith("# the command:"))
    assert "exit 0" in summary and "written" in summary
    rows = [line for line in lines if line.startswith("| ") and line.endswith("` |")]
    # five cells each, split where a table splits them (at a | not escaped): SQL's || must not end a cell
    cells = [re.split(r"(?<!\\)\|", row)[1:-1] for row in rows]
    assert cells and all(len(row) == 5 for row in cells)
    labels = [row[4].strip().strip("`") for row in cells]
    assert any("\\|\\|" in label for label in labels)  # the close's grouped read concatenates with ||
    assert "COMMIT" in labels
    # the diff's entries and exits are two statements that share their start: two rows, not one
    assert sum(label.startswith("INSERT INTO diffs") for label in labels) >= 2
    runs = {label: int(row[1]) for label, row in zip(labels, cells, strict=True)}
    assert runs["COMMIT"] > 1


def test_statements_needs_a_command() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "give the audience-sync command" in done.stderr
