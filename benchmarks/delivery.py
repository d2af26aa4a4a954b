"""Benchmark (run by hand): delivery throughput of our path against a bare httpx loop, and rate-limit accuracy.

A minimal HTTP server in a separate process answers every request at once on 127.0.0.1. For N changes
(default 100,000: one audience of N users), it measures, in the same run:

- Gist path: identify calls/s of `run_sync` delivering to a `gist` destination (one POST /contacts per user),
  against a bare loop: the same JSON bodies posted by httpx on a thread pool of the same size, no database.
- Segment path: messages/s of `run_sync` delivering to a `segment` destination (batches of up to 2,500), against
  a bare loop that builds the same Engage-shaped messages from in-memory changes with the same functions,
  packs them the same way and posts them with the same concurrency, with no outbox or snapshot.
- rate limit: a `gist` destination with `rate_limit = R` on a smaller audience; achieved calls/s against R.

Our figure is the delivery phase alone (from the first to the last chunk sent, as reported through the Progress
protocol), so that staging and the diff, which the bare loop does not do, are not counted against it.

Every measurement starts with a full garbage collection: the bare Gist loop leaves about 28 objects of cyclic
garbage per request (httpx responses and requests), 2.8 million at 100,000 calls, and the next measurement in the
process otherwise pays for collecting them (that was the "drop at 100k after the Gist measurement": 5 s of gen-2
collections charged to the Segment path).

    python benchmarks/delivery.py [--changes N] [--concurrency C] [--rate R] [--paths gist,segment,rate]
                                  [--repeat K] [--pg-url postgresql://postgres@127.0.0.1:5432/test]

The state database is a fresh SQLite file per run, or with ``--pg-url`` a fresh schema in that PostgreSQL
database per run (created, then dropped).

With ``--repeat K`` each path is measured K times (ours, then the bare loop, back to back) and the table shows
the medians and the median of the per-round ratios: on a machine shared with other work, single figures swing
by +-20 %.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from audience_sync.config import parse_config
from audience_sync.destinations.batching import body, encode, pack
from audience_sync.destinations.messages import identify, timestamp
from audience_sync.model import Change, message_id
from audience_sync.run.sync import run_sync

SERVER = r"""
import asyncio, sys

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


class Timer:
    """A Progress that notes when sending starts and ends."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.finished: float | None = None

    def begin(self, task: str, total: int | None = None) -> None:
        if task.startswith("sending") and self.started is None:
            self.started = time.perf_counter()

    def advance(self, task: str, amount: int) -> None:
        pass

    def end(self, task: str) -> None:
        if task.startswith("sending"):
            self.finished = time.perf_counter()

    @property
    def seconds(self) -> float:
        assert self.started is not None and self.finished is not None
        return self.finished - self.started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_warehouse(path: Path, n: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?)", ((f"user-{i:07d}", f"u{i}@example.com") for i in range(n)))


@contextmanager
def fresh_state(work: Path, name: str, pg_url: str | None) -> Iterator[str]:
    """The URL of an empty state database named ``name``: a SQLite file, or a PostgreSQL schema dropped after."""
    if pg_url is None:
        yield f"sqlite:///{work / name}"
        return
    schema = "bench_delivery_" + name.replace(".", "_")
    admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield pg_url.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def our_rate(work: Path, n: int, destination: str, state: str, pg_url: str | None = None) -> float:
    """Changes per second of the delivery phase of one initial run, on a fresh state database ``state``."""
    with fresh_state(work, state, pg_url) as url:
        return _our_rate(work, n, destination, url)


def _our_rate(work: Path, n: int, destination: str, state_url: str) -> float:
    config = parse_config(
        f"""
[state]
url = "{state_url}"
[source]
url = "sqlite:///{work / "wh.db"}"
{destination}
[[audiences]]
name = "Everyone"
sql = "SELECT id AS user_id, email FROM users"
""",
        environ={"GIST_API_KEY": "k", "SEGMENT_WRITE_KEY": "k"},
    )
    timer = Timer()
    gc.collect()
    result = run_sync(config, progress=timer)
    if result.counts["sent"] != n:
        raise SystemExit(f"run sent {result.counts['sent']} of {n}: {result.error}")
    return n / timer.seconds


def changes(n: int) -> list[Change]:
    return [
        Change(
            diff_id=i,
            run_id=1,
            destination="d",
            computation_key="everyone",
            computation_class="audience",
            user_id=f"user-{i:07d}",
            email=f"u{i}@example.com",
            change="entered",
            old_value=None,
            new_value=True,
            message_id=message_id("bench", "d", "everyone", f"user-{i:07d}", "true", None),
        )
        for i in range(n)
    ]


def bare_gist(url: str, n: int, concurrency: int) -> float:
    client = httpx.Client(
        base_url=url,
        limits=httpx.Limits(max_connections=concurrency),
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    bodies = [
        encode({"user_id": c.user_id, "email": c.email, "custom_properties": {"everyone": True}}) for c in changes(n)
    ]
    gc.collect()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: client.post("/contacts", content=b).raise_for_status(), bodies))
    elapsed = time.perf_counter() - start
    client.close()
    return n / elapsed


def bare_segment(url: str, n: int, concurrency: int) -> float:
    client = httpx.Client(
        base_url=url,
        limits=httpx.Limits(max_connections=concurrency),
        auth=("k", ""),
        headers={"Content-Type": "application/json"},
    )
    in_memory = changes(n)
    gc.collect()
    start = time.perf_counter()
    encoded = [(c.diff_id, encode(identify(c))) for c in in_memory]
    batches = pack(encoded, max_count=2500, max_bytes=475_000)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: client.post("/v1/batch", content=body(b, timestamp())).raise_for_status(), batches))
    elapsed = time.perf_counter() - start
    client.close()
    return n / elapsed


def medians(rounds: list[tuple[float, float]]) -> tuple[float, float, float, list[float]]:
    """Median of ours, of the bare loop's, and of the per-round ratios (each round measures both back to back,
    so the ratio of a round is the least disturbed by other work on the machine); and those ratios."""
    ratios = [ours / bare for ours, bare in rounds]
    return (
        statistics.median(o for o, _ in rounds),
        statistics.median(b for _, b in rounds),
        statistics.median(ratios),
        ratios,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--paths", default="gist,segment,rate", help="which measurements, comma-separated")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of (ours, bare) per path; the table shows medians"
    )
    parser.add_argument("--pg-url", help="keep the state in a fresh schema of this PostgreSQL database per run")
    args = parser.parse_args()
    paths = set(args.paths.split(","))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            build_warehouse(work / "wh.db", args.changes)
            gist = (
                f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\n'
                f'endpoint = "{url}"\nconcurrency = {args.concurrency}\n'
            )
            segment = (
                f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
                f'endpoint = "{url}"\nconcurrency = {args.concurrency}\n'
            )
            rows = []
            measured = (
                ("gist", "Gist identify calls/s", gist, bare_gist),
                ("segment", "Segment messages/s", segment, bare_segment),
            )
            for name, label, destination, bare in measured:
                if name in paths:
                    rounds = [
                        (
                            our_rate(work, args.changes, destination, f"{name}{i}.db", args.pg_url),
                            bare(url, args.changes, args.concurrency),
                        )
                        for i in range(args.repeat)
                    ]
                    rows.append((label, *medians(rounds)))
            small = min(args.changes, int(args.rate * 10))
            limited = None
            if "rate" in paths:
                (work / "wh.db").unlink()
                build_warehouse(work / "wh.db", small)
                limited = our_rate(work, small, gist + f"rate_limit = {args.rate}\n", "limited.db", args.pg_url)
    finally:
        server.terminate()
        server.wait()
    print(
        f"# {args.changes:,} changes, concurrency {args.concurrency}; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(f"| path | audience-sync | bare httpx loop | ratio |{' ratio per round |' if args.repeat > 1 else ''}")
    print(f"|---|---:|---:|---:|{'---|' if args.repeat > 1 else ''}")
    for label, ours, bare, ratio, ratios in rows:
        each = f" {', '.join(f'{r:.0%}' for r in ratios)} |" if args.repeat > 1 else ""
        print(f"| {label} | {ours:,.0f} | {bare:,.0f} | {ratio:.0%} |{each}")
    if limited is not None:
        print(
            f"\nrate_limit = {args.rate:g}/s over {small:,} calls: achieved {limited:,.1f}/s "
            f"({(limited - args.rate) / args.rate:+.1%})"
        )
    print(json.dumps({"rows": rows, "rate_limited": limited}))


if __name__ == "__main__":
    main()
