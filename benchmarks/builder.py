"""Benchmark (run by hand, not a test): a builder audience and a builder trait over 1M events, on SQLite and on
PostgreSQL.

Generates, with SQL only, ``users`` (id, email, country) and ``tracks`` (user_id, event, timestamp, properties as
JSON: category and revenue) in Segment's warehouse layout: ``--users`` profiles and ``--events`` events over the
year before the as-of instant, with an index on ``(event, timestamp)``. The source is the state database, so
the run pushes the builder's statements down into it.

For each computation it times, twice each:
- the compiled statement alone, its rows counted by the database (``explain``'s size query);
- ``audience-sync run --as-of ... --audience KEY`` as a subprocess, an initial sync to the JSONL sink (wall time
  of the whole process, including staging, the diff and writing every member's line).

    python benchmarks/builder.py --engine sqlite --events 1000000
    python benchmarks/builder.py --engine postgresql --events 1000000 \\
        --pg-url "postgresql://postgres@127.0.0.1:5432/test" --schema bench_builder

The PostgreSQL schema is created and dropped (``--keep`` keeps it). It prints the compiled SQL of the audience
with ``--show-sql``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AS_OF = "2024-06-01T00:00:00Z"
AUDIENCE = """
[[audiences]]
name = "Coffee Regulars Not Browsing"
[audiences.condition]
all = [
  { performed = "Order Completed", at_least = 2, within = "90d", where = [
      { property = "category", op = "in", value = ["coffee", "tea"] } ] },
  { not = { performed = "Product Viewed", within = "7d" } },
  { trait = "country", op = "!=", value = "US" },
]
"""
TRAIT = """
[[computed_traits]]
name = "Revenue 90d"
compute = { sum = "Order Completed", property = "revenue", within = "90d" }
"""
KEYS = ("coffee_regulars_not_browsing", "revenue_90d")


def sqlite_build(path: Path, users: int, events: int) -> None:
    db = sqlite3.connect(path)
    db.executescript(
        f"""
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, country TEXT);
        WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {users})
        INSERT INTO users SELECT i, 'user' || i || '@example.com',
            CASE i % 4 WHEN 0 THEN 'US' WHEN 1 THEN 'FR' WHEN 2 THEN 'DE' ELSE 'NL' END FROM s;
        CREATE TABLE tracks (user_id INTEGER, event TEXT, timestamp TEXT, properties TEXT);
        WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {events})
        INSERT INTO tracks SELECT
            1 + (i * 7919) % {users},
            CASE i % 3 WHEN 0 THEN 'Order Completed' ELSE 'Product Viewed' END,
            datetime('2024-06-01', '-' || ((i * 104729) % 31536000) || ' seconds'),
            json_object('category', CASE i % 5 WHEN 0 THEN 'coffee' WHEN 1 THEN 'tea' WHEN 2 THEN 'mugs'
                                    WHEN 3 THEN 'grinders' ELSE 'gift cards' END,
                        'revenue', (i % 9000) / 100.0)
        FROM s;
        CREATE INDEX ix_tracks_event_ts ON tracks(event, timestamp);
        ANALYZE;
        """
    )
    db.commit()
    db.close()


def pg_build(url: str, schema: str, users: int, events: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        db.execute(f'CREATE SCHEMA "{schema}"')
        db.execute(f'SET search_path = "{schema}"')
        db.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, country text)")
        db.execute(
            f"INSERT INTO users SELECT i, 'user' || i || '@example.com', "
            f"(ARRAY['US','FR','DE','NL'])[1 + i % 4] FROM generate_series(1, {users}) i"
        )
        db.execute("CREATE TABLE tracks (user_id bigint, event text, timestamp timestamptz, properties jsonb)")
        db.execute(
            f"INSERT INTO tracks SELECT 1 + (i * 7919) % {users}, "
            "CASE i % 3 WHEN 0 THEN 'Order Completed' ELSE 'Product Viewed' END, "
            "timestamptz '2024-06-01 00:00:00+00' - make_interval(secs => (i * 104729) % 31536000), "
            "jsonb_build_object('category', (ARRAY['coffee','tea','mugs','grinders','gift cards'])[1 + i % 5], "
            "'revenue', ((i % 9000) / 100.0)::numeric) "
            f"FROM generate_series(1::bigint, {events}) i"
        )
        db.execute('CREATE INDEX ix_tracks_event_ts ON tracks (event, "timestamp")')
        db.execute("ANALYZE users")
        db.execute("ANALYZE tracks")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def time_statement(config_path: Path, key: str) -> tuple[float, int, str]:
    """Seconds for the compiled statement with its rows counted by the database; the count; the SQL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from audience_sync.config import load_config
    from audience_sync.sources.builder.explain import explain

    config = load_config(config_path)
    started = time.perf_counter()
    result = explain(config, key, dt.datetime.fromisoformat(AS_OF))
    return time.perf_counter() - started, int(result["size"]), str(result["sql"])


def time_run(config_path: Path, key: str, workdir: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "audience_sync", "run", "--config", str(config_path), "--as-of", AS_OF,
         "--audience", key, "--json"],
        cwd=workdir, capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--schema", default="bench_builder")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--show-sql", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="builder-bench-"))
    started = time.perf_counter()
    if args.engine == "sqlite":
        sqlite_build(workdir / "state.db", args.users, args.events)
        url = f"sqlite:///{workdir / 'state.db'}"
    else:
        pg_build(args.pg_url, args.schema, args.users, args.events)
        base = args.pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
        url = f"{base}?options=-csearch_path%3D{args.schema}"
    built = time.perf_counter() - started
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load()}")
    print(f"# {args.engine}: {args.users:,} users, {args.events:,} events, built in {built:.1f} s")
    print("| engine | computation | size | statement s | run s (initial sync) | sent | load |")
    print("|---|---|---:|---:|---:|---:|---|")
    try:
        for key in KEYS:
            for attempt in range(2):
                config_path = workdir / f"{key}-{attempt}.toml"
                state_url = url
                if args.engine == "sqlite":  # every initial sync on a fresh copy of the warehouse
                    copy = workdir / "state-run.db"
                    copy.unlink(missing_ok=True)
                    shutil.copy(workdir / "state.db", copy)
                    state_url = f"sqlite:///{copy}"
                config_path.write_text(
                    f'[state]\nurl = "{state_url}"\n[[destinations]]\nname = "out"\ntype = "jsonl"\n'
                    f'path = "{workdir / f"{key}-{attempt}.jsonl"}"\nchunk_size = 10000\n' + AUDIENCE + TRAIT
                )
                before = load()
                seconds, size, sql = time_statement(config_path, key)
                run_seconds, summary = time_run(config_path, key, workdir)
                if args.engine == "postgresql":  # the next initial sync starts from an empty snapshot again
                    import psycopg

                    with psycopg.connect(args.pg_url, autocommit=True) as db:
                        for table in ("diffs", "snapshot", "computations", "sync_runs", "staging"):
                            db.execute(f'DELETE FROM "{args.schema}".{table}')
                print(
                    f"| {args.engine} | {key} | {size:,} | {seconds:.2f} | {run_seconds:.2f} | "
                    f"{summary['counts']['sent']:,} | {before} |"
                )
                if args.show_sql and key == KEYS[0] and attempt == 0:
                    print(sql)
    finally:
        if args.engine == "postgresql" and not args.keep:
            import psycopg

            with psycopg.connect(args.pg_url, autocommit=True) as db:
                db.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
