"""Benchmark (run by hand): wall time and peak memory of `audience-sync run` on one large audience.

Builds a SQLite warehouse with N users (default 100,000), an audience holding all of them and a computed trait
for each, then times three runs of the CLI as subprocesses, each measured on its own:
initial (every member sent), no change (nothing sent), and 5 % churn. The destination is the JSONL sink.

    python benchmarks/engine_100k.py [--users N] [--state-url URL]

Results go to docs/PERFORMANCE.md by hand, with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(path: Path, users: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, ltv REAL, active INTEGER)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?, 1)",
            ((i, f"user{i}@example.com", float(i % 997)) for i in range(1, users + 1)),
        )


def churn(path: Path, users: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE users SET active = 0 WHERE id % 40 = 0")  # 2.5 % exit
        db.execute("UPDATE users SET ltv = ltv + 1 WHERE id % 40 = 1")  # 2.5 % change value


def timed_run(workdir: Path, config: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, and its last output line."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "dt = time.perf_counter() - t; "
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode); "
        "sys.stderr.write(p.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "audience_sync", "run", "--json", "--config", str(config)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, rss_kb, rc = proc.stdout.split()
    if rc != "0":
        raise SystemExit(f"run failed ({rc}): {proc.stderr}")
    return float(seconds), int(rss_kb) / 1024, rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--state-url", default=None, help="default: a SQLite file in a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build(work / "wh.db", args.users)
        state = args.state_url or f"sqlite:///{work / 'state.db'}"
        config = work / "bench.toml"
        config.write_text(f"""
[state]
url = "{state}"
[source]
url = "sqlite:///{work / "wh.db"}"
[[destinations]]
name = "file"
type = "jsonl"
path = "{work / "out.jsonl"}"
[[audiences]]
name = "Active"
sql = "SELECT id AS user_id, email FROM users WHERE active = 1"
[[computed_traits]]
name = "LTV"
sql = "SELECT id AS user_id, email, ltv AS value FROM users"
""")
        print(
            f"# {args.users:,} users, 1 audience + 1 trait ({2 * args.users:,} memberships), "
            f"state {state.split(':')[0]}"
        )
        print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print("| run | wall s | peak RSS MB |")
        print("|---|---:|---:|")
        for label, prepare in (("initial", None), ("no change", None), ("5 % churn", churn)):
            if prepare:
                prepare(work / "wh.db", args.users)
            start = time.perf_counter()
            seconds, rss, _ = timed_run(work, config)
            del start
            print(f"| {label} | {seconds:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
