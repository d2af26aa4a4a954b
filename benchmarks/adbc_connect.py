"""Benchmark (run by hand): what a connect costs each ADBC driver, paid once per computation by a run that connects
per read and once per run by one that keeps its connection (``sources/arrow_read.py``, ``AdbcSource``).

For each driver, N reads of ``SELECT 1`` on a cursor, first with a connection made and closed per read
(``adbc_connect``, as a run's landings did), then on one connection; wall and CPU milliseconds per read.

    python benchmarks/adbc_connect.py [--reads N] [--pg-url postgresql://postgres@127.0.0.1:5432/test]

Results go to docs/PERFORMANCE.md by hand, with the machine, the load and the command.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from audience_sync.sources.arrow_read import adbc_connect


def _read(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.close()


def measure(url: str, module: str, reads: int) -> None:
    parsed = make_url(url)
    adbc_connect(parsed, module).close()  # the driver's library is loaded once per process either way
    for shape in ("a connection per read", "one connection"):
        wall, cpu = time.perf_counter(), time.process_time()
        if shape == "one connection":
            conn = adbc_connect(parsed, module)
            for _ in range(reads):
                _read(conn)
            conn.close()
        else:
            for _ in range(reads):
                conn = adbc_connect(parsed, module)
                _read(conn)
                conn.close()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        per_read = f"{1000 * wall / reads:.2f} ms wall, {1000 * cpu / reads:.2f} ms CPU per read"
        print(f"{module}, {shape}: {reads} reads, {per_read}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=100)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    print(f"# load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "source.db"
        sqlite3.connect(path).close()
        measure(f"sqlite:///{path}", "adbc_driver_sqlite", args.reads)
    measure(args.pg_url, "adbc_driver_postgresql", args.reads)


if __name__ == "__main__":
    main()
