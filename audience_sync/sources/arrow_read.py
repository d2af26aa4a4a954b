"""Arrow record batches of a query on "any other engine": a SQLAlchemy source that is neither the state database,
nor a SQLite file attached to a SQLite state, nor PostgreSQL (read by its ``COPY`` pipe, ``landing.py``).

- **ADBC**, when the driver package for the URL's backend is installed (the ``adbc`` extra brings those for
  SQLite and PostgreSQL; ``adbc-driver-snowflake`` and ``adbc-driver-bigquery`` install the same way), see
  :func:`adbc_driver` and :func:`adbc_connect` for how each URL is handed to its driver. A SQLite source is
  read through a wrapping query that also returns each used column's ``typeof()``: ADBC's SQLite driver types
  a column from its first rows and converts later values to that type (an integer read as ``1.0`` once a real
  was seen), so a column that mixes storage classes is not landed but streamed.
- **The SQLAlchemy dialect's rows**, built into Arrow arrays per batch (the fallback, with Python per row, as
  streaming has): a column whose values are not all of one Python type (or not all in one time zone) is not
  landed, since Arrow would convert them to one type.

The batches are landed by ``sources/arrow_ingest.py``; :func:`land_arrow` does both.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from ..config import Computation
from ..store import landing
from ..store.dialect import literal_sql
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
    """The errors an ADBC driver raises (a failing query, a missing file): each means "stream instead"."""
    if not _installed("adbc_driver_manager"):
        return ()
    import adbc_driver_manager

    return (adbc_driver_manager.Error,)


@contextmanager
def adbc_connect(url: URL, module: str) -> Iterator[Any]:
    """A DB-API connection of the ADBC driver ``module`` to ``url``, closed on leaving.

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
    driver: Any = importlib.import_module(f"{module}.dbapi")
    conn = _CONNECT[url.get_backend_name()](driver, url)
    try:
        yield conn
    finally:
        conn.close()


def _sqlite(driver: Any, url: URL) -> Any:
    return driver.connect(f"file:{quote(str(Path(url.database or '').resolve()))}?mode=ro")


def _postgresql(driver: Any, url: URL) -> Any:
    return driver.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))


def _snowflake(driver: Any, url: URL) -> Any:
    return driver.connect(url.render_as_string(hide_password=False).split("://", 1)[1])


def _bigquery(driver: Any, url: URL) -> Any:
    options = {"adbc.bigquery.sql.project_id": url.host or ""}
    if url.database:
        options["adbc.bigquery.sql.dataset_id"] = url.database
    credentials = url.query.get("credentials_path")
    if isinstance(credentials, str):
        options["adbc.bigquery.sql.auth_type"] = "adbc.bigquery.sql.auth_type.json_credential_file"
        options["adbc.bigquery.sql.auth_credentials"] = credentials
    return driver.connect(db_kwargs=options)


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
def adbc_batches(url: URL, module: str, comp: Computation, batch_rows: int) -> Iterator[tuple[list[str], Any]]:
    """The names of the columns ``comp`` uses and an iterator of Arrow batches of them, read with ADBC."""
    assert comp.sql is not None
    inner = query_text(comp.sql)
    with adbc_connect(url, module) as conn:
        cur = conn.cursor()
        try:
            if url.get_backend_name() in _TYPEOF_CHECKED:
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
        finally:
            cur.close()


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


def land_arrow(source: Engine, comp: Computation, conn: Connection, batch_rows: int) -> landing.Landed:
    """Land ``comp``'s query rows on ``source`` in the state (``conn``, inside a transaction): read with ADBC
    when its driver is installed, else built from the dialect's rows; rendered by ``arrow_ingest``."""
    module = adbc_driver(source.url)
    reading = (
        adbc_batches(source.url, module, comp, batch_rows) if module else dialect_batches(source, comp, batch_rows)
    )
    with reading as (names, batches):
        return arrow_ingest.land(conn, comp, names, batches, module or f"the {source.dialect.name} dialect's rows")
