"""Benchmark (run by hand, not a test): audience-sync at 1M and 10M memberships against bare SQL on the same engine.

Generates, with SQL only, ``users`` (id, email, ltv) and ``members`` (aud, user_id, email): N users, each a
member of 97.5 % of A audiences, plus a computed trait (``ltv``) for every user, so about ``N * (A + 1)``
memberships. By default the source is the state database itself, so audience-sync pushes each query down into
it; ``--source sqlite-file`` puts the tables in a SQLite file of their own (the warehouse path: attached to a
SQLite state and pushed down, streamed into a PostgreSQL one), and the baseline then reads them from that file
too (ATTACHed on SQLite). ``--source duckdb`` builds them in a DuckDB file (audience-sync lands its Arrow batches
in the state and pushes down from there); the baseline's staging then reads the same queries' Arrow batches
from DuckDB and inserts them into its keyed staging table in one transaction, the rest as before.
``--source postgres-db`` builds them in another database of the same PostgreSQL server (``<schema>_source``,
created and dropped by the script): audience-sync lands each query's rows in the state (``COPY (query) TO
STDOUT`` piped into ``COPY FROM STDIN`` on PostgreSQL, read as CSV by Arrow into one ``executemany`` on SQLite)
and pushes down from there; the baseline's staging pipes the same ``COPY (query) TO STDOUT`` into ``COPY
base_staging FROM STDIN`` on a PostgreSQL state (the blocks as they come, no Python per row), or reads its CSV
with Arrow into ``executemany`` on a SQLite state, the rest as before.

Three phases, each timed twice: ``audience-sync run`` as a subprocess (wall time of the whole process, its
peak RSS), then a bare-SQL baseline in this process doing the same work on the same engine with its own tables:
staging (one ``INSERT ... SELECT`` per computation into a keyed table), a set-based diff (entered/changed and
exited into a changes table), the changes written as Engage-shaped JSON lines (rendered by the database,
streamed to a file), and the snapshot upsert.

- initial: every membership is a change;
- no change: nothing changed;
- 5 % churn: 2.5 % of audience memberships exit and as many enter; 5 % of users' trait values change.

    python benchmarks/scale.py --engine sqlite --memberships 1000000
    python benchmarks/scale.py --engine postgresql --memberships 1000000 \\
        --pg-url "postgresql://postgres@127.0.0.1:5432/test" --schema bench_scale
    python benchmarks/scale.py --engine sqlite --source sqlite-file --memberships 1000000
    python benchmarks/scale.py --engine sqlite --source duckdb --memberships 1000000
    python benchmarks/scale.py --engine postgresql --source postgres-db --memberships 1000000

The PostgreSQL schema (and the source database) is created and dropped (``--keep`` keeps them). ``--stream``
sets ``[source] pushdown = false``, so rows stream through Python and are loaded with COPY or batches.
``--smoke`` checks that the runs succeeded and sent what the baseline sent, and that a DuckDB or PostgreSQL
database source was landed (the test suite runs it at 2,000 memberships). ``--skip-unchanged`` leaves the
no-change phase out: the churn's run still checks that nothing unchanged is sent, since it must send exactly
the baseline's changes.

``--io`` (SQLite state) adds what each side wrote and read through the kernel in each phase, in MB: the
``wchar``/``rchar`` counters of ``/proc/<pid>/io`` (the database file, its write-ahead log and the JSON lines
alike, whether or not the page cache absorbed them), for the run's whole process and for the baseline's work in
this process. On a PostgreSQL state the server does the writing, so the option is refused there.
``--statements`` runs each of our commands under ``benchmarks/statements.py`` and keeps, per phase, its table of
the seconds and bytes of each statement run through SQLAlchemy and of the commits in the workdir
(``statements-<phase>.md``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the per-statement timing aid, ``--statements``
STATEMENTS = Path(__file__).resolve().parent / "statements.py"

# --- the data ----------------------------------------------------------------------------------------------


def sqlite_build(db: sqlite3.Connection, users: int, audiences: int) -> None:
    db.executescript(
        f"""
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, ltv INTEGER);
        WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {users})
        INSERT INTO users SELECT i, 'user' || i || '@example.com', i % 997 FROM s;
        CREATE TABLE members (aud INTEGER, user_id INTEGER, email TEXT, PRIMARY KEY (aud, user_id)) WITHOUT ROWID;
        WITH RECURSIVE a(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM a WHERE i < {audiences - 1})
        INSERT INTO members SELECT a.i, u.id, u.email FROM a, users AS u WHERE (u.id + a.i) % 40 <> 1
        ORDER BY a.i, u.id;
        """
    )
    db.commit()


def pg_build(db: Any, users: int, audiences: int) -> None:
    db.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, ltv bigint)")
    db.execute(f"INSERT INTO users SELECT i, 'user' || i || '@example.com', i % 997 FROM generate_series(1, {users}) i")
    db.execute("CREATE TABLE members (aud int, user_id bigint, email text, PRIMARY KEY (aud, user_id))")
    db.execute(
        f"INSERT INTO members SELECT a, u.id, u.email FROM generate_series(0, {audiences - 1}) a, users u "
        "WHERE (u.id + a) % 40 <> 1 ORDER BY a, u.id"
    )
    db.execute("ANALYZE users")
    db.execute("ANALYZE members")
    db.commit()


CHURN = (  # 2.5 % of audience memberships exit, 2.5 % enter, 5 % of trait values change
    "INSERT INTO members SELECT aud, user_id + 1, 'user' || (user_id + 1) || '@example.com' "
    "FROM members WHERE (user_id + aud) % 40 = 0 AND user_id < (SELECT max(id) FROM users)",
    "DELETE FROM members WHERE (user_id + aud) % 40 = 0",
    "UPDATE users SET ltv = ltv + 1 WHERE id % 20 = 1",
)


# --- the bare-SQL baseline ------------------------------------------------------------------------------------


@dataclass
class Engine:
    """What differs between SQLite and PostgreSQL in the baseline and the setup."""

    name: str
    url: str  # SQLAlchemy URL for audience-sync
    connect: Callable[[], Any]
    without_rowid: str
    as_text: Callable[[str], str]
    line: str  # SQL rendering a change as an identify call (columns k, user_id, email, new_value)


def _sqlite_line() -> str:
    return (
        "json_object('type', 'identify', 'userId', user_id, "
        "'traits', json_object(k, json(coalesce(new_value, 'null')), 'email', email), "
        "'context', json_object('personas', json_object('computation_class', cls, "
        "'computation_id', 'aud_' || k, 'computation_key', k, 'namespace', 'spa_bench', 'space_id', 'bench')), "
        "'messageId', 'as-' || k || '-' || user_id, 'timestamp', ?)"
    )


def _pg_line() -> str:
    return (
        "json_build_object('type', 'identify', 'userId', user_id, "
        "'traits', json_build_object(k, coalesce(new_value, 'null')::json, 'email', email), "
        "'context', json_build_object('personas', json_build_object('computation_class', cls, "
        "'computation_id', 'aud_' || k, 'computation_key', k, 'namespace', 'spa_bench', 'space_id', 'bench')), "
        "'messageId', 'as-' || k || '-' || user_id, 'timestamp', %s::text)::text"
    )


def computations(audiences: int) -> list[tuple[str, str, str]]:
    """(key, class, baseline SELECT of user_id text, email, value text) for every computation."""
    out = [
        (f"aud_{i}", "audience", f"SELECT CAST(user_id AS TEXT), email, 'true' FROM members WHERE aud = {i}")
        for i in range(audiences)
    ]
    out.append(("ltv", "trait", "SELECT CAST(id AS TEXT), email, CAST(ltv AS TEXT) FROM users"))
    return out


def baseline_setup(db: Any, eng: Engine) -> None:
    db.execute(
        "CREATE TABLE base_snapshot (k TEXT, user_id TEXT, value TEXT, email TEXT, PRIMARY KEY (k, user_id))"
        + eng.without_rowid
    )
    db.commit()


def duckdb_build(path: Path, users: int, audiences: int) -> None:
    """The same tables as :func:`sqlite_build`, in a DuckDB file."""
    import duckdb

    with duckdb.connect(str(path)) as db:
        db.execute(
            f"CREATE TABLE users AS SELECT i AS id, 'user' || i || '@example.com' AS email, i % 997 AS ltv "
            f"FROM range(1, {users + 1}) t(i)"
        )
        db.execute(
            f"CREATE TABLE members AS SELECT a.i::INTEGER AS aud, u.id AS user_id, u.email FROM "
            f"range(0, {audiences}) a(i), users AS u WHERE (u.id + a.i) % 40 <> 1 ORDER BY 1, 2"
        )


def _stage_from_duckdb(db: Any, eng: Engine, duck: Path, audiences: int) -> None:
    """The baseline's staging from a DuckDB file: each query's Arrow batches inserted in one transaction
    (SQLite: ``executemany``; PostgreSQL: ``COPY``, the source giving each user once)."""
    import duckdb

    with duckdb.connect(str(duck), read_only=True) as src:
        for key, _cls, select in computations(audiences):
            relation = src.sql(select.replace("CAST(user_id AS TEXT)", "CAST(user_id AS VARCHAR)"))
            reader = relation.to_arrow_reader(100_000) if hasattr(relation, "to_arrow_reader") else None
            reader = reader or relation.fetch_arrow_reader(100_000)
            if eng.name == "postgresql":
                with db.cursor().copy("COPY base_staging (k, user_id, email, value) FROM STDIN") as copy:
                    for batch in reader:
                        for row in zip(*[c.to_pylist() for c in batch.columns], strict=True):
                            copy.write_row((key, *row))
                continue
            for batch in reader:
                columns = [c.to_pylist() for c in batch.columns]
                db.executemany(
                    f"INSERT INTO base_staging VALUES ('{key}', ?, ?, ?) ON CONFLICT DO NOTHING",
                    zip(*columns, strict=True),
                )


class _CopyOut(io.RawIOBase):
    """The blocks of a ``COPY ... TO STDOUT`` as a binary file, for Arrow's CSV reader.

    The baseline's own, not ``sources/landing.py``'s: the bare-SQL side uses none of the code it is measured against.
    """

    def __init__(self, blocks: Iterator[Any]) -> None:
        self._blocks, self._pending = blocks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view, filled = memoryview(buffer).cast("B"), 0
        while filled < len(view):
            if not self._pending:
                block = next(self._blocks, None)
                if block is None:
                    break
                self._pending = bytes(block)
            size = min(len(view) - filled, len(self._pending))
            view[filled : filled + size] = self._pending[:size]
            self._pending, filled = self._pending[size:], filled + size
        return filled


def _stage_from_postgres(db: Any, eng: Engine, source_url: str, audiences: int) -> None:
    """The baseline's staging from a PostgreSQL source database: each query's ``COPY ... TO STDOUT`` piped block
    by block into ``COPY base_staging FROM STDIN`` (PostgreSQL state, the source giving each user once), or read
    as CSV by Arrow into batches inserted in one transaction (SQLite state)."""
    import psycopg
    import pyarrow
    import pyarrow.csv

    with psycopg.connect(source_url) as src:
        for key, _cls, select in computations(audiences):
            if eng.name == "postgresql":
                with (
                    src.cursor().copy(f"COPY (SELECT '{key}', * FROM ({select}) AS q) TO STDOUT") as out,
                    db.cursor().copy("COPY base_staging (k, user_id, email, value) FROM STDIN") as into,
                ):
                    for block in out:
                        into.write(block)
                continue
            with src.cursor().copy(f"COPY ({select}) TO STDOUT (FORMAT csv)") as out:
                names = ["user_id", "email", "value"]
                reader = pyarrow.csv.open_csv(
                    _CopyOut(iter(out)),
                    read_options=pyarrow.csv.ReadOptions(column_names=names, block_size=1 << 22),
                    convert_options=pyarrow.csv.ConvertOptions(
                        column_types=dict.fromkeys(names, pyarrow.string()), strings_can_be_null=True
                    ),
                )
                for batch in reader:
                    db.executemany(
                        f"INSERT INTO base_staging VALUES ('{key}', ?, ?, ?) ON CONFLICT DO NOTHING",
                        zip(*[c.to_pylist() for c in batch.columns], strict=True),
                    )


def baseline_run(
    db: Any, eng: Engine, audiences: int, out: Path, duck: Path | None = None, source_db: str | None = None
) -> int:
    """One run of the bare-SQL pipeline; returns how many changes it wrote. ``duck``: read the source from this
    DuckDB file instead of the tables beside the state; ``source_db``: from this PostgreSQL database (a URL)."""
    pg = eng.name == "postgresql"
    db.execute(
        "CREATE TABLE base_staging (k TEXT, user_id TEXT, email TEXT, value TEXT, PRIMARY KEY (k, user_id))"
        + eng.without_rowid
    )
    if duck is not None:
        _stage_from_duckdb(db, eng, duck, audiences)
    if source_db is not None:
        _stage_from_postgres(db, eng, source_db, audiences)
    for key, _cls, select in [] if duck is not None or source_db is not None else computations(audiences):
        db.execute(f"INSERT INTO base_staging SELECT '{key}', * FROM ({select}) AS q WHERE true ON CONFLICT DO NOTHING")
    if pg:
        db.execute("ANALYZE base_staging")
    db.execute("CREATE TABLE base_changes (k TEXT, cls TEXT, user_id TEXT, email TEXT, new_value TEXT)")
    cls = "CASE WHEN {0}.k LIKE 'aud%' THEN 'audience' ELSE 'trait' END"
    db.execute(
        f"INSERT INTO base_changes SELECT s.k, {cls.format('s')}, s.user_id, coalesce(s.email, p.email), s.value "
        "FROM base_staging s LEFT JOIN base_snapshot p ON p.k = s.k AND p.user_id = s.user_id "
        "WHERE p.value IS NULL OR p.value <> s.value"
    )
    db.execute(
        f"INSERT INTO base_changes SELECT p.k, {cls.format('p')}, p.user_id, p.email, "
        "CASE WHEN p.k LIKE 'aud%' THEN 'false' END "
        "FROM base_snapshot p LEFT JOIN base_staging s ON s.k = p.k AND s.user_id = p.user_id "
        "WHERE s.user_id IS NULL AND p.value IS NOT NULL AND p.value <> 'false'"
    )
    if pg:
        db.execute("ANALYZE base_changes")
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    written = 0
    cursor = db.cursor(name="lines") if pg else db.cursor()
    cursor.execute(f"SELECT {eng.line} FROM base_changes", (ts,))
    with out.open("a", encoding="utf-8") as f:
        while rows := cursor.fetchmany(10_000):
            f.write("".join(r[0] + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
            written += len(rows)
    cursor.close()
    db.execute(
        "INSERT INTO base_snapshot SELECT k, user_id, new_value, email FROM base_changes WHERE true "
        "ON CONFLICT (k, user_id) DO UPDATE SET value = excluded.value, email = excluded.email"
    )
    db.execute("DROP TABLE base_staging")
    db.execute("DROP TABLE base_changes")
    db.commit()
    return written


# --- audience-sync ---------------------------------------------------------------------------------------------


def move_to_sqlite_file(db: Any, eng: Engine, path: Path) -> None:
    """Move the source tables into the SQLite file ``path``, keyed as they were. SQLite state: the file stays
    attached to the baseline's connection, whose unqualified names then find its tables (the state's copies are
    dropped). PostgreSQL state: the tables are copied out row by row and stay where they are too (the baseline
    reads them there: reading them across is audience-sync's part, not the baseline's)."""
    with sqlite3.connect(path) as src:
        src.executescript(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT, ltv INTEGER);"
            "CREATE TABLE members (aud INTEGER, user_id INTEGER, email TEXT, PRIMARY KEY (aud, user_id)) WITHOUT ROWID;"
        )
        if eng.name == "postgresql":
            for table in ("users", "members"):
                cursor = db.cursor(name=f"copy_{table}")
                cursor.execute(f"SELECT * FROM {table}")
                while rows := cursor.fetchmany(50_000):
                    src.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
                cursor.close()
            db.commit()
            return
    db.execute(f"ATTACH DATABASE '{path}' AS src")
    db.execute("INSERT INTO src.users SELECT * FROM main.users")
    db.execute("INSERT INTO src.members SELECT * FROM main.members")
    db.execute("DROP TABLE main.users")
    db.execute("DROP TABLE main.members")
    db.commit()


def write_config(
    path: Path, url: str, out: Path, audiences: int, chunk_size: int, source: str | None, stream: bool = False
) -> None:
    body = [
        f'[state]\nurl = "{url}"\n',
        "[source]\n" + (f'url = "{source}"\n' if source else "") + ("pushdown = false\n" if stream else ""),
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{out}"\nchunk_size = {chunk_size}\n',
    ]
    body += [
        f'[[audiences]]\nname = "Aud {i}"\nsql = "SELECT user_id, email FROM members WHERE aud = {i}"\n'
        for i in range(audiences)
    ]
    body.append('[[computed_traits]]\nname = "LTV"\nsql = "SELECT id AS user_id, email, ltv AS value FROM users"\n')
    path.write_text("".join(body), encoding="utf-8")


def io_bytes() -> tuple[int, int]:
    """Bytes this process (and the children it has reaped) wrote and read through the kernel so far."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["rchar"])


def timed_run(
    config: Path,
    cwd: Path,
    profile: Path | None = None,
    log: list[str] | None = None,
    io: dict[str, float] | None = None,
    statements: Path | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds and peak RSS (MB) of one ``audience-sync run`` process, and its JSON result. ``log``: run
    with ``--log-level info`` and append its log lines there. ``io``: set its ``written`` and ``read`` to the MB
    the process wrote and read (a reaped child's counters are added to its parent's, read around the run).
    ``statements``: run the command under ``benchmarks/statements.py`` and write its table of every statement's
    seconds and bytes there."""
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    code = (
        "import pathlib, resource, subprocess, sys, time\n"
        "def io():\n"  # (0, 0) where the kernel keeps no such counters; --io is refused there
        "    p = pathlib.Path('/proc/self/io')\n"
        "    if not p.exists():\n"
        "        return 0, 0\n"
        "    f = dict(l.split(': ') for l in p.read_text().splitlines())\n"
        "    return int(f['wchar']), int(f['rchar'])\n"
        "w, r = io(); t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t; w2, r2 = io()\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, w2 - w, r2 - r)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)"
    )
    target = [str(STATEMENTS), "--top", "20", "--"] if statements is not None else ["-m", "audience_sync"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *prefix, *target, "run", "--json", "--config", str(config)]
        + (["--log-level", "info"] if log is not None else []),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    first, _, rest = proc.stdout.partition("\n")
    seconds, rss_kb, rc, written, read = first.split()
    if rc not in ("0",):
        raise SystemExit(f"audience-sync run failed ({rc}): {rest[-2000:]} {proc.stderr[-2000:]}")
    if log is not None:
        log.extend(proc.stderr.splitlines())
    if io is not None:
        io["written"], io["read"] = int(written) / 1e6, int(read) / 1e6
    if statements is not None:
        table = [line for line in proc.stderr.splitlines() if line.startswith(("|", "# the command"))]
        statements.write_text("\n".join(table) + "\n")
    return float(seconds), int(rss_kb) / 1024, json.loads(rest)


# --- driver ------------------------------------------------------------------------------------------------------


@contextmanager
def engine_for(kind: str, work: Path, pg_url: str, schema: str, keep: bool) -> Iterator[Engine]:
    if kind == "sqlite":
        path = work / "bench.db"

        def connect_sqlite() -> Any:
            db = sqlite3.connect(path, isolation_level="DEFERRED")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            return db

        yield Engine("sqlite", f"sqlite:///{path}", connect_sqlite, " WITHOUT ROWID", str, _sqlite_line())
        return
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        base = pg_url.split("?")[0]
        sa_url = f"{base}?options=-csearch_path%3D{schema}".replace("postgresql://", "postgresql+psycopg://", 1)

        def connect_pg() -> Any:
            return psycopg.connect(pg_url, options=f"-csearch_path={schema}")

        yield Engine("postgresql", sa_url, connect_pg, "", str, _pg_line())
    finally:
        if not keep:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def postgres_source(pg_url: str, name: str, keep: bool) -> Iterator[str]:
    """A database ``name`` of its own on the server of ``pg_url``, created empty, dropped afterwards unless
    ``keep``; yields its psycopg URL."""
    import psycopg

    base, _, query = pg_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        if not keep:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def churn_postgres(url: str) -> None:
    """The 5 % churn in the PostgreSQL database at ``url``."""
    import psycopg

    with psycopg.connect(url) as src:
        for stmt in CHURN:
            src.execute(stmt)
        src.execute("ANALYZE members")
        src.execute("ANALYZE users")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    audiences = args.audiences
    users = args.memberships // (audiences + 1)
    rows: list[dict[str, Any]] = []
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="as-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            eng = stack.enter_context(engine_for(args.engine, work, args.pg_url, args.schema, args.keep))
            source_db = None
            if args.source == "postgres-db":  # the tables in another database of the PostgreSQL server
                source_db = stack.enter_context(postgres_source(args.pg_url, f"{args.schema}_source", args.keep))
            db = eng.connect()
            t = time.perf_counter()
            if source_db is not None:
                import psycopg

                with psycopg.connect(source_db) as src:
                    pg_build(src, users, audiences)
            else:
                (sqlite_build if eng.name == "sqlite" else pg_build)(db, users, audiences)
            print(
                f"# {eng.name}: {users:,} users x ({audiences} audiences + 1 trait) = "
                f"{users * (audiences + 1):,} memberships, built in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            baseline_setup(db, eng)
            config = work / "bench.toml"
            source = None
            if args.source == "sqlite-file":  # the tables in a file of their own, which the baseline attaches
                source_path = work / "source.db"
                source_path.unlink(missing_ok=True)
                move_to_sqlite_file(db, eng, source_path)
                source = f"sqlite:///{source_path}"
            duck = None
            if args.source == "duckdb":
                duck = work / "source.duckdb"
                duck.unlink(missing_ok=True)
                duckdb_build(duck, users, audiences)
                source = f"duckdb:///{duck}"
            if source_db is not None:
                source = source_db.replace("postgresql://", "postgresql+psycopg://", 1)
            write_config(config, eng.url, work / "out.jsonl", audiences, args.chunk_size, source, args.stream)
            phases = ("initial", "5 % churn") if args.skip_unchanged else ("initial", "no change", "5 % churn")
            for phase in phases:
                if phase == "5 % churn" and source_db is not None:
                    churn_postgres(source_db)
                elif phase == "5 % churn":
                    if duck is not None:
                        import duckdb

                        with duckdb.connect(str(duck)) as src:
                            for stmt in CHURN:
                                src.execute(stmt)
                    if (
                        source is not None and eng.name == "postgresql" and duck is None
                    ):  # the file, the baseline's copy
                        with sqlite3.connect(source_path) as src:
                            for stmt in CHURN:
                                src.execute(stmt)
                    for stmt in CHURN:  # SQLite: the file is attached, its tables are the unqualified names
                        db.execute(stmt)
                    if eng.name == "postgresql":
                        db.execute("ANALYZE members")
                        db.execute("ANALYZE users")
                    db.commit()
                before = load()
                profile = work / f"profile-{phase.replace(' ', '_').replace('%', 'pct')}.out" if args.profile else None
                # --smoke on a landed source: every computation must have been landed, none streamed
                landed_check = args.smoke and args.source in ("duckdb", "postgres-db") and not args.stream
                log: list[str] | None = [] if landed_check else None
                ours_io: dict[str, float] | None = {} if args.io else None
                table = work / f"statements-{phase.replace(' ', '_').replace('%', 'pct')}.md"
                ours, rss, result = timed_run(config, work, profile, log, ours_io, table if args.statements else None)
                if log is not None and sum(": landed " in line for line in log) != audiences + 1:
                    raise SystemExit(f"{phase}: not every computation was landed: {log}")
                io_before = io_bytes() if args.io else (0, 0)
                t = time.perf_counter()
                sent_base = baseline_run(db, eng, audiences, work / "baseline.jsonl", duck, source_db)
                base = time.perf_counter() - t
                io_after = io_bytes() if args.io else (0, 0)
                sent = result["counts"]["sent"]
                row = {
                    "engine": eng.name + (f" {args.source}" if source else "") + (" streamed" if args.stream else ""),
                    "memberships": users * (audiences + 1),
                    "phase": phase,
                    "changes": sent,
                    "baseline_changes": sent_base,
                    "ours_s": ours,
                    "baseline_s": base,
                    "ratio": ours / base if base else float("inf"),
                    "rss_mb": rss,
                    "load": before,
                }
                io_cells = ""
                if ours_io is not None:
                    row["ours_written_mb"], row["ours_read_mb"] = ours_io["written"], ours_io["read"]
                    row["baseline_written_mb"] = (io_after[0] - io_before[0]) / 1e6
                    row["baseline_read_mb"] = (io_after[1] - io_before[1]) / 1e6
                    io_cells = (
                        f" {row['ours_written_mb']:,.0f} / {row['baseline_written_mb']:,.0f} |"
                        f" {row['ours_read_mb']:,.0f} / {row['baseline_read_mb']:,.0f} |"
                    )
                rows.append(row)
                print(
                    f"| {row['engine']} | {row['memberships']:,} | {phase} | {sent:,} | {ours:.1f} | {base:.1f} | "
                    f"{row['ratio']:.2f} | {rss:.0f} | {before} |{io_cells}",
                    flush=True,
                )
                if args.smoke and (result["status"] != "succeeded" or sent != sent_base):
                    raise SystemExit(f"{phase}: audience-sync sent {sent}, the baseline {sent_base}: {result}")
            db.close()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--memberships", type=int, default=1_000_000)
    parser.add_argument("--audiences", type=int, default=9, help="audiences per user (plus one trait)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="the jsonl destination's chunk_size")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--schema", default="bench_scale")
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema")
    parser.add_argument("--profile", action="store_true", help="cProfile each run into the workdir")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="run each of our commands under benchmarks/statements.py: a table of every statement's seconds and "
        "bytes per phase in the workdir (statements-<phase>.md)",
    )
    parser.add_argument("--smoke", action="store_true", help="fail unless every run sent what the baseline sent")
    parser.add_argument("--skip-unchanged", action="store_true", help="leave out the no-change phase")
    parser.add_argument(
        "--source",
        choices=["state", "sqlite-file", "duckdb", "postgres-db"],
        default="state",
        help="where the audience tables are: the state database itself, a SQLite file of their own, DuckDB, or "
        "another database of the PostgreSQL server (<schema>_source, created and dropped)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="[source] pushdown = false: rows stream through Python (COPY on PostgreSQL, batches on SQLite)",
    )
    parser.add_argument(
        "--io",
        action="store_true",
        help="also report the MB each side wrote and read through the kernel (SQLite state only)",
    )
    args = parser.parse_args(argv)
    if args.statements and not args.workdir:
        parser.error("--statements writes its tables into the workdir: give --workdir")
    if args.io and args.engine != "sqlite":
        parser.error("--io counts what a process writes; on a PostgreSQL state the server writes: use --engine sqlite")
    if args.io and not Path("/proc/self/io").exists():
        parser.error("--io reads /proc/self/io, which this system does not have")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load()}")
    io_head = (" written MB (ours / bare) | read MB (ours / bare) |", "---:|---:|") if args.io else ("", "")
    print(
        "| engine | memberships | phase | changes | audience-sync s | bare SQL s | ratio | peak RSS MB | load |"
        + io_head[0]
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---|" + io_head[1])
    return bench(args)


if __name__ == "__main__":
    main()
