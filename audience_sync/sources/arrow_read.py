"""Arrow record batches of a query on "any other engine": a SQLAlchemy source that is neither the state database,
nor a SQLite file attached to a SQLite state, nor PostgreSQL (read by its ``COPY`` pipe, ``landing.py``).

- **ADBC**, when the driver package for the URL's backend is installed (the ``adbc`` extra brings those for
  SQLite and PostgreSQL; ``adbc-driver-snowflake`` and ``adbc-driver-bigquery`` install the same way), see
  :func:`adbc_driver` and :func:`adbc_connect` for how each URL is handed to its driver. A run connects once,
  not once per computation (a warehouse's login costs a round trip or more): :class:`AdbcSource` is one
  session, opened by the run's first read and closed when the run is done with it, each read on a cursor of its
  own. A SQLite source is read through a wrapping query that also returns each used column's ``typeof()``:
  ADBC's SQLite driver types a column from its first rows and converts later values to that type (an integer
  read as ``1.0`` once a real was seen), so a column that mixes storage classes is not landed but streamed.
- **The SQLAlchemy dialect's rows**, built into Arrow arrays per batch (the fallback, with Python per row, as
  streaming has): a column whose values are not all of one Python type (or not all in one time zone) is not
  landed, since Arrow would convert them to one type.

The batches are landed by ``sources/arrow_ingest.py``; :func:`land_arrow` does both.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from ..config import Computation
from ..redact import scrub
from ..store import landing
from ..store.dialect import literal_sql
from ..store.engine import redact_url
from . import arrow_ingest
from .arrow_ingest import NotLandable, used_columns
from .pushdown import query_text

#: the ADBC driver package read for each SQLAlchemy backend name
ADBC_DRIVERS = {
    "sqlite": "adbc_driver_sqlite",
    "postgresql": "adbc_driver_postgresql",
    "snowflake": "adbc_driver_snowflake",
    "bigquery": "adbc_driver_bigquery",
}

#: SQLite's storage classes that each Arrow type of ADBC's SQLite driver holds unchanged
_SQLITE_CLASSES = {"int64": "integer", "double": "real", "string": "text"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def adbc_driver(url: URL) -> str | None:
    """The ADBC driver package that reads ``url`` when it is installed (with ``adbc_driver_manager``), else None.

    ``sqlite`` -> ``adbc_driver_sqlite``, ``postgresql`` -> ``adbc_driver_postgresql``, ``snowflake`` ->
    ``adbc_driver_snowflake``, ``bigquery`` -> ``adbc_driver_bigquery``; an in-memory SQLite database has none.
    """
    module = ADBC_DRIVERS.get(url.get_backend_name())
    if module is None or (module == ADBC_DRIVERS["sqlite"] and url.database in (None, "", ":memory:")):
        return None
    return module if _installed(module) and _installed("adbc_driver_manager") else None


def errors() -> tuple[type[Exception], ...]:
    """The errors an ADBC driver raises (a failing query, a missing file): each means "stream instead". A query
    that fails once its rows stream fails in the Arrow stream of its result, which raises ``OSError``."""
    if not _installed("adbc_driver_manager"):
        return ()
    import adbc_driver_manager

    return (adbc_driver_manager.Error, ConnectFailed, OSError)


def broken() -> tuple[type[Exception], ...]:
    """The errors of a read that say its connection may have failed, not only the query it ran:
    ``OperationalError`` (the driver's status IO, CANCELLED, TIMEOUT: a session ended, a server gone, a network
    cut), ``InternalError`` (the driver's own state), and ``OSError``, which is how the Arrow stream of a result
    reports a fetch that failed, whatever failed (a reconnect costs less than a dead session kept)."""
    import adbc_driver_manager

    return (adbc_driver_manager.OperationalError, adbc_driver_manager.InternalError, OSError)


class ConnectFailed(Exception):
    """An ADBC driver could not connect to the source: the message names the source (its URL redacted), the
    driver and the driver's reason."""


def adbc_connect(url: URL, module: str) -> Any:
    """A new DB-API connection of the ADBC driver ``module`` to ``url``, in autocommit mode (no transaction stays
    open between two reads, so each read sees what was committed before it, as a connection of its own would);
    the caller closes it. ConnectFailed when the driver cannot connect.

    - ``sqlite:///path``: the file read-only, as the SQLite URI ``file:/abs/path?mode=ro`` (a missing file is
      an error, never created);
    - ``postgresql[+driver]://user:password@host:port/db?options``: the same URL without the driver name, as a
      libpq URI (its query options are libpq's);
    - ``snowflake://user:password@account/database/schema?warehouse=...&role=...`` (snowflake-sqlalchemy's
      form): everything after ``snowflake://``, which is the Snowflake driver's URI (gosnowflake's DSN);
    - ``bigquery://project/dataset?credentials_path=/path/key.json`` (sqlalchemy-bigquery's form): the options
      ``adbc.bigquery.sql.project_id`` and ``adbc.bigquery.sql.dataset_id``, and with ``credentials_path`` the
      auth type ``adbc.bigquery.sql.auth_type.json_credential_file`` and ``adbc.bigquery.sql.auth_credentials``
      (without it, the default Google credentials).
    """
    import adbc_driver_manager

    driver: Any = importlib.import_module(f"{module}.dbapi")
    try:
        return _CONNECT[url.get_backend_name()](driver, url)
    except adbc_driver_manager.Error as exc:
        source = redact_url(url.render_as_string(hide_password=False))
        reason = scrub(" ".join(str(exc).split()))
        raise ConnectFailed(f"{module} could not connect to the source {source}: {reason}") from None


#: how many times each ADBC source was connected to in this process (its URL, password hidden): once per run
#: that read it
OPENS: Counter[str] = Counter()


class AdbcSource:
    """A run's source read through its ADBC driver: one connection (:func:`adbc_connect`), opened by the first
    read and shared by every read of the run, each on a cursor of its own (:meth:`cursor`), until :meth:`close`.

    Safe to use from several threads: a connection is one session, which runs one statement at a time, so reads
    take turns on it (a second thread's read waits for the first's cursor to close), and :meth:`close` waits for
    the read in flight. A failed connect raises ConnectFailed and is tried again by the next read; a connection
    that broke (:meth:`cursor`) is dropped, and the next read connects again."""

    def __init__(self, url: URL, module: str) -> None:
        self.url, self.module = url, module
        #: the source as :data:`OPENS` counts it and messages name it: the URL, its password hidden
        self.name = url.render_as_string(hide_password=True)
        self._conn: Any = None
        self._turn = threading.RLock()

    def __repr__(self) -> str:
        return f"AdbcSource({self.name!r}, {self.module}, {'open' if self.is_open else 'closed'})"

    @property
    def is_open(self) -> bool:
        """Whether the connection is open (from the first read to :meth:`close`)."""
        return self._conn is not None

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor of the source's connection (connected now when it is not yet), closed on leaving.

        When the read fails with an error of the connection rather than of its query (:func:`broken`: the session
        ended, the server gone), the connection is closed and dropped, and the next read connects again; a failing
        query (a syntax error, a missing table) keeps it."""
        with self._turn:
            if self._conn is None:
                self._conn = adbc_connect(self.url, self.module)
                OPENS[self.name] += 1
            conn, lost = self._conn, False
            cur = conn.cursor()
            try:
                yield cur
            except broken():
                lost = True
                raise
            finally:
                try:
                    cur.close()
                finally:
                    if lost:
                        self._conn = None
                        with suppress(*errors()):  # a dead session's close may fail too: it is gone either way
                            conn.close()

    def close(self) -> None:
        """Close the connection (the warehouse's session ends); harmless when it is not open."""
        with self._turn:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()


def adbc_source(url: URL) -> AdbcSource | None:
    """The run's :class:`AdbcSource` for ``url`` when an ADBC driver reads it (:func:`adbc_driver`), else None.
    Nothing is connected until its first read."""
    module = adbc_driver(url)
    return AdbcSource(url, module) if module is not None else None


def _sqlite(driver: Any, url: URL) -> Any:
    return driver.connect(f"file:{quote(str(Path(url.database or '').resolve()))}?mode=ro", autocommit=True)


def _postgresql(driver: Any, url: URL) -> Any:
    return driver.connect(url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True)


def _snowflake(driver: Any, url: URL) -> Any:
    return driver.connect(url.render_as_string(hide_password=False).split("://", 1)[1], autocommit=True)


def _bigquery(driver: Any, url: URL) -> Any:
    options = {"adbc.bigquery.sql.project_id": url.host or ""}
    if url.database:
        options["adbc.bigquery.sql.dataset_id"] = url.database
    credentials = url.query.get("credentials_path")
    if isinstance(credentials, str):
        options["adbc.bigquery.sql.auth_type"] = "adbc.bigquery.sql.auth_type.json_credential_file"
        options["adbc.bigquery.sql.auth_credentials"] = credentials
    return driver.connect(db_kwargs=options, autocommit=True)


#: how each backend's URL is handed to its ADBC driver's ``dbapi.connect`` (:func:`adbc_connect`)
_CONNECT = {"sqlite": _sqlite, "postgresql": _postgresql, "snowflake": _snowflake, "bigquery": _bigquery}
#: backends whose ADBC driver converts a column's later values to its first rows' type (``typeof()`` checked)
_TYPEOF_CHECKED = {"sqlite"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_checked(names: Sequence[str], reader: Any) -> Iterator[Any]:
    """The batches of a query returning ``names`` then each one's ``typeof()``, without the latter; NotLandable
    when a column holds a storage class its Arrow type does not keep unchanged."""
    import pyarrow
    import pyarrow.compute

    count = len(names)
    for batch in reader:
        for i, name in enumerate(names):
            kept = _SQLITE_CLASSES.get(str(batch.column(i).type))
            if kept is None:  # binary (blobs, or mixed with them), ...: refused by the ingest for its type
                continue
            classes = set(pyarrow.compute.unique(batch.column(count + i)).to_pylist()) - {"null"}
            if classes and classes != {kept}:
                raise NotLandable(f"column {name!r} holds SQLite values of types {sorted(classes)}, not landed")
        yield pyarrow.record_batch(batch.columns[:count], names=list(names))


@contextmanager
def adbc_batches(source: AdbcSource, comp: Computation, batch_rows: int) -> Iterator[tuple[list[str], Any]]:
    """The names of the columns ``comp`` uses and an iterator of Arrow batches of them, read with ADBC on a cursor
    of the run's connection ``source``."""
    assert comp.sql is not None
    inner = query_text(comp.sql)
    with source.cursor() as cur:
        if source.url.get_backend_name() in _TYPEOF_CHECKED:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
            cur.execute(f"SELECT * FROM ({inner}) AS src LIMIT 0")
            names = list(cur.fetch_record_batch().schema.names)
            used = [names[i] for _, i in used_columns(comp, names)]
            refs = [f"src.{_quote(n)}" for n in used]
            cur.execute(f"SELECT {', '.join(refs + [f'typeof({r})' for r in refs])} FROM ({inner}) AS src")
            yield used, _sqlite_checked(used, cur.fetch_record_batch())
        else:
            cur.execute(inner)
            reader = cur.fetch_record_batch()
            yield list(reader.schema.names), reader


def _arrow_column(name: str, values: list[Any]) -> Any:
    """The Arrow array of one column's Python values; NotLandable when Arrow would change any of them."""
    import pyarrow

    kinds = {type(v) for v in values if v is not None}
    zones = {str(getattr(v, "tzinfo", None)) for v in values if v is not None and hasattr(v, "tzinfo")}
    if len(kinds) > 1 or len(zones) > 1:
        raise NotLandable(f"column {name!r} mixes value types ({', '.join(sorted(k.__name__ for k in kinds))})")
    try:
        return pyarrow.array(values)
    except (pyarrow.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise NotLandable(f"column {name!r}: {exc}") from None


@contextmanager
def dialect_batches(engine: Engine, comp: Computation, batch_rows: int) -> Iterator[tuple[list[str], Any]]:
    """The names of the columns ``comp`` uses and Arrow batches of them, built from the dialect's rows."""
    import pyarrow

    assert comp.sql is not None
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=batch_rows).exec_driver_sql(
            literal_sql(engine.dialect, comp.sql)
        )
        names = list(result.keys())
        used = used_columns(comp, names)
        landed = [names[i] for _, i in used]

        def batches() -> Iterator[Any]:
            while chunk := result.fetchmany(batch_rows):
                columns = [_arrow_column(names[i], [row[i] for row in chunk]) for _, i in used]
                yield pyarrow.record_batch(columns, names=landed)

        yield landed, batches()


def land_arrow(
    source: Engine, adbc: AdbcSource | None, comp: Computation, conn: Connection, batch_rows: int
) -> landing.Landed:
    """Land ``comp``'s query rows on ``source`` in the state (``conn``, inside a transaction): read with ADBC on
    the run's connection ``adbc`` when there is one (:func:`adbc_source`), else built from the dialect's rows;
    rendered by ``arrow_ingest``."""
    reading = adbc_batches(adbc, comp, batch_rows) if adbc is not None else dialect_batches(source, comp, batch_rows)
    with reading as (names, batches):
        via = adbc.module if adbc is not None else f"the {source.dialect.name} dialect's rows"
        return arrow_ingest.land(conn, comp, names, batches, via)
