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
                                  [--whole-command [--against DIR]]

The state database is a fresh SQLite file per run, or with ``--pg-url`` a fresh schema in that PostgreSQL
database per run (created, then dropped).

With ``--repeat K`` each path is measured K times (ours, then the bare loop, back to back) and the table shows
the medians and the median of the per-round ratios: on a machine shared with other work, single figures swing
by +-20 %.

With ``--whole-command`` (paths gist and segment; default 20,000 changes, concurrency 4, 3 rounds) each side is
timed as a whole process, from its start to its exit: ours is ``python -m audience_sync run --json --config ...``
(interpreter start, imports, config, the migrations check, staging from the SQLite source file, the diff,
delivery, recording), the bare loop a ``python -c`` process that imports httpx, builds the same bodies in memory
(no database) and posts them on a thread pool of the same size. Rounds alternate ours, bare, ours, bare; the table
shows the medians of the seconds and ratio = bare seconds / our seconds, with the load average before each round.
``--against DIR`` (a checkout of another revision, say the branch point) adds to each round a run of that
checkout's command, in alternating order with ours, and a row of its own: before and after, in the same rounds.
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
from typing import Any

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


BARE_GIST = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
import httpx

url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = httpx.Client(
    base_url=url,
    limits=httpx.Limits(max_connections=concurrency),
    headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
)
bodies = [
    json.dumps(
        {"user_id": f"user-{i:07d}", "email": f"u{i}@example.com", "custom_properties": {"everyone": True}},
        separators=(",", ":"),
    ).encode()
    for i in range(n)
]
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(lambda b: client.post("/contacts", content=b).raise_for_status(), bodies))
client.close()
"""

BARE_SEGMENT = r"""
import datetime as dt, hashlib, json, sys
from concurrent.futures import ThreadPoolExecutor
import httpx

url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = httpx.Client(
    base_url=url,
    limits=httpx.Limits(max_connections=concurrency),
    auth=("k", ""),
    headers={"Content-Type": "application/json"},
)


def now():
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


personas = {
    "computation_class": "audience",
    "computation_id": "aud_everyone",
    "computation_key": "everyone",
    "namespace": "audience-sync",
    "space_id": "audience-sync",
}
ts = now()
messages = [
    json.dumps(
        {
            "type": "identify",
            "userId": f"user-{i:07d}",
            "traits": {"everyone": True, "email": f"u{i}@example.com"},
            "context": {"personas": personas},
            "messageId": hashlib.sha256(f"user-{i:07d}".encode()).hexdigest()[:43],
            "timestamp": ts,
        },
        separators=(",", ":"),
    ).encode()
    for i in range(n)
]
# batches as our packing makes them: at most 2,500 messages and 475,000 bytes of body
batches, current, size = [], [], 64
for m in messages:
    if current and (len(current) >= 2500 or size + len(m) + 1 > 475_000):
        batches.append(current)
        current, size = [], 64
    current.append(m)
    size += len(m) + 1
if current:
    batches.append(current)


def post(batch):
    content = b'{"batch":[' + b",".join(batch) + b'],"sentAt":"' + now().encode() + b'"}'
    client.post("/v1/batch", content=content).raise_for_status()


with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(post, batches))
client.close()
"""


def timed_process(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall seconds of one process from its start to its exit, and its standard output; fails unless it exits 0."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def whole_command(work: Path, url: str, args: argparse.Namespace, paths: set[str]) -> None:
    """Rounds of (ours, bare) as whole processes per path; prints a table and a JSON line. With ``--against DIR``
    each round also runs the command of the checkout in DIR (``PYTHONPATH=DIR``), in alternating order with ours."""
    env = {**os.environ, "GIST_API_KEY": "k", "SEGMENT_WRITE_KEY": "k"}
    # (label, checkout): ours is the code this script imports; the other one is started outside any checkout, so
    # that ``python -m`` finds the package through PYTHONPATH and not in the working directory
    trees: list[tuple[str, str | None]] = [("ours", None)] + ([("against", args.against)] if args.against else [])
    n, concurrency = args.changes, args.concurrency
    state_name = "PostgreSQL" if args.pg_url else "SQLite"
    rows: list[dict[str, Any]] = []
    for name, bare_code in (("gist", BARE_GIST), ("segment", BARE_SEGMENT)):
        if name not in paths:
            continue
        secret = 'api_key_env = "GIST_API_KEY"' if name == "gist" else 'write_key_env = "SEGMENT_WRITE_KEY"'
        rounds: list[dict[str, float]] = []
        for i in range(args.repeat):
            load = os.getloadavg()[0]
            seconds: dict[str, float] = {}
            for label, tree in trees if i % 2 == 0 else trees[::-1]:
                with fresh_state(work, f"whole_{name}{i}{label}.db", args.pg_url) as state_url:
                    config = work / f"whole_{name}{i}{label}.toml"
                    config.write_text(
                        f'[state]\nurl = "{state_url}"\n[source]\nurl = "sqlite:///{work / "wh.db"}"\n'
                        f'[[destinations]]\nname = "{name}"\ntype = "{name}"\n{secret}\n'
                        f'endpoint = "{url}"\nconcurrency = {concurrency}\n'
                        '[[audiences]]\nname = "Everyone"\nsql = "SELECT id AS user_id, email FROM users"\n'
                    )
                    command = [sys.executable, "-m", "audience_sync", "run", "--json", "--config", str(config)]
                    gc.collect()
                    if tree is None:
                        seconds[label], out = timed_process(command, env)
                    else:
                        seconds[label], out = timed_process(command, {**env, "PYTHONPATH": tree}, cwd=work)
                    sent = json.loads(out)["counts"]["sent"]
                    if sent != n:
                        raise SystemExit(f"{name} ({label}): the run sent {sent} of {n}: {out[-2000:]}")
            gc.collect()
            bare, _ = timed_process([sys.executable, "-c", bare_code, url, str(n), str(concurrency)], env)
            ours = seconds["ours"]
            rounds.append({"load": load, "ours": ours, "bare": bare, "ratio": bare / ours})
            if "against" in seconds:
                rounds[-1] |= {"against": seconds["against"], "against_ratio": bare / seconds["against"]}
            against = f", against {seconds['against']:.2f} s" if "against" in seconds else ""
            print(
                f"{name}, {state_name}, round {i + 1}: load {load:.2f}, ours {ours:.2f} s{against}, bare {bare:.2f} s",
                flush=True,
            )
        rows.append(
            {
                "path": name,
                "state": state_name,
                "ours_s": statistics.median(r["ours"] for r in rounds),
                "bare_s": statistics.median(r["bare"] for r in rounds),
                "ratio": statistics.median(r["ratio"] for r in rounds),
                "rounds": rounds,
            }
        )
        if args.against:
            rows[-1]["against_s"] = statistics.median(r["against"] for r in rounds)
            rows[-1]["against_ratio"] = statistics.median(r["against_ratio"] for r in rounds)
    print(
        f"# whole command, {n:,} changes, concurrency {concurrency}, {args.repeat} rounds; {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| path | state | ours s | bare s | ratio | ratio per round | load per round |")
    print("|---|---|---:|---:|---:|---|---|")
    for row in rows:
        per = ", ".join(f"{r['ratio']:.2f}" for r in row["rounds"])
        loads = ", ".join(f"{r['load']:.1f}" for r in row["rounds"])
        print(
            f"| {row['path']} | {row['state']} | {row['ours_s']:.2f} | {row['bare_s']:.2f} | {row['ratio']:.2f} | "
            f"{per} | {loads} |"
        )
    for row in rows:
        if "against_s" in row:
            per = ", ".join(f"{r['against_ratio']:.2f}" for r in row["rounds"])
            print(
                f"| {row['path']}, against {args.against} | {row['state']} | {row['against_s']:.2f} | "
                f"{row['bare_s']:.2f} | {row['against_ratio']:.2f} | {per} | |"
            )
    print(json.dumps({"whole_command": rows}))


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
    parser.add_argument("--changes", type=int, help="default 100,000; 20,000 with --whole-command")
    parser.add_argument("--concurrency", type=int, help="default 8; 4 with --whole-command")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--paths", default="gist,segment,rate", help="which measurements, comma-separated")
    parser.add_argument(
        "--repeat",
        type=int,
        help="rounds of (ours, bare) per path; the table shows medians (default 1; 3 with --whole-command)",
    )
    parser.add_argument("--pg-url", help="keep the state in a fresh schema of this PostgreSQL database per run")
    parser.add_argument(
        "--whole-command", action="store_true", help="time `audience-sync run` and the bare loop as whole processes"
    )
    parser.add_argument(
        "--against",
        metavar="DIR",
        help="with --whole-command: also run, in each round, the command of the checkout in DIR (before/after)",
    )
    args = parser.parse_args()
    whole = args.whole_command
    args.changes = args.changes if args.changes is not None else (20_000 if whole else 100_000)
    args.concurrency = args.concurrency if args.concurrency is not None else (4 if whole else 8)
    args.repeat = args.repeat if args.repeat is not None else (3 if whole else 1)
    paths = set(args.paths.split(","))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            build_warehouse(work / "wh.db", args.changes)
            if whole:
                whole_command(work, url, args, paths)
                return
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
