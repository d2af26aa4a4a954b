"""Pushdown: a computation's query run inside the state database, when the state database is also the source
(or its raw rows were landed there from another, :func:`plan_table`).

The query is wrapped in a ``SELECT`` that normalises its rows the way :func:`audience_sync.sources.rows.normalize`
does in Python, so that ``INSERT INTO staging SELECT ...`` stages exactly what the streamed path would:

- ``user_id`` as text (integers keep every digit), NULL when it is null or blank (whitespace as ``str.strip``
  sees it);
- ``email`` trimmed the same way, NULL when blank;
- trait values as canonical JSON text (:func:`audience_sync.values.encode`); audiences get ``true``.

On PostgreSQL a column type is pushed down only when SQL renders it exactly as Python would (integers,
``text``/``varchar``, ``boolean``, ``uuid`` ids); for any other type (``float8``, ``numeric``, ``jsonb``,
dates, ...) the computation is streamed instead, so the two paths never disagree. On SQLite, whose values are
typed per row, integers, text and NULL are handled in SQL and the rare other values (reals, blobs) by the
Python functions themselves, registered on every SQLite connection
(:func:`audience_sync.store.sqlfuncs.register_sqlite_functions`).

Rows the streamed path skips (a NUL byte in a user id or email, a user id over ``store.normalize.MAX_USER_ID_BYTES``
bytes, a value with no JSON form) are never staged by the pushdown: the computation is streamed instead, so that each is
reported by the very code that reports it when streaming. On SQLite such a row makes the statement fail (the normalising
Python functions raise for it; the check that sends text there is two cheap functions on the raw column). On PostgreSQL,
whose text holds no NUL byte, a too-long id is left out (:attr:`Pushdown.unusable`) and the count that follows notices
it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..config import Computation
from ..store.dialect import literal_sql
from ..store.engine import text_is_utf8
from ..store.normalize import MAX_USER_ID_BYTES
from .columns import locate

#: Every character ``str.strip()`` removes (``str.isspace``): SQL trims with this set, so blank means the same on
#: both paths. tests/test_pushdown.py checks it against Python's own definition.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


# PostgreSQL type OIDs whose SQL text form is exactly what the streamed path produces from psycopg's value.
_PG_INTEGER = {20, 21, 23}  # int8, int2, int4
_PG_TEXT = {25, 1043}  # text, varchar
_PG_BOOL = 16
_PG_UUID = 2950
_DEFAULT_PORTS = {"postgresql": 5432}


def _normal_url(url: str) -> tuple[Any, ...] | None:
    """What identifies the database a URL points to (and the session settings that change name lookup)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return None  # a private in-memory database is never shared between two engines
        return ("sqlite", str(Path(database).resolve()))
    query = tuple(sorted((k, v if isinstance(v, str) else tuple(v)) for k, v in parsed.query.items()))
    return (
        backend,
        (parsed.host or "").lower(),
        parsed.port or _DEFAULT_PORTS.get(backend),
        parsed.username,
        parsed.database,
        query,
    )


def attachable_file(state_url: str, source_url: str) -> Path | None:
    """The source's file when the state and the source are two different SQLite files, or None.

    Such a source is attached to the state's connection (``store/attach.py``) and its queries pushed down
    as if it were the state database. Whether the file exists is the attaching's concern, not this one's.
    """
    state, source = _normal_url(state_url), _normal_url(source_url)
    if state is None or source is None or state == source or state[0] != "sqlite" or source[0] != "sqlite":
        return None
    return Path(source[1])


def same_database(state_url: str, source_url: str) -> bool:
    """Whether both URLs reach the same database with the same session settings.

    Guarantees: True only when the URLs agree after normalisation (driver names, host case, default port,
    SQLite paths resolved to absolute files, query options such as ``search_path`` compared in any order), so
    a query pushed down into the state database sees the same tables it would see on the source.
    """
    a, b = _normal_url(state_url), _normal_url(source_url)
    return a is not None and a == b


@dataclass(frozen=True)
class Pushdown:
    """A computation's query wrapped to return normalised ``(u, e, v)`` rows: user id, email, value text."""

    comp: Computation
    normalized: str  # SELECT u, e, v[, b] FROM (<query>) AS src
    #: true (never NULL) for a row the streamed path would skip rather than stage. PostgreSQL: column ``b``;
    #: SQLite: never, because such a row makes the statement fail (``store/sqlfuncs.py``)
    unusable: str = "false"
    #: a compiled statement's bound parameters: its text is then ready for the driver as it is; None for a
    #: user's query, whose text goes to the driver as written (see :meth:`driver_sql`)
    params: Mapping[str, Any] | None = None
    #: the statement never returns a row without a user id or a value (a compiled one): the rows staged are the
    #: rows it returned, so no statement counts them again
    complete: bool = False

    def driver_sql(self, dialect: Any, text: str) -> str:
        """``text`` (one of this pushdown's statements) as ``exec_driver_sql`` must receive it."""
        return text if self.params is not None else literal_sql(dialect, text)

    @property
    def bound(self) -> dict[str, Any]:
        """The parameters to pass with every statement of this pushdown."""
        return dict(self.params or {})

    @property
    def counts(self) -> str:
        """One row: rows returned, rows with no user id, rows with a user id but no value, rows to be skipped."""
        return (
            "SELECT count(*), "
            "coalesce(sum(CASE WHEN u IS NULL THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN u IS NOT NULL AND v IS NULL THEN 1 ELSE 0 END), 0), "
            f"coalesce(sum(CASE WHEN u IS NOT NULL AND {self.unusable} THEN 1 ELSE 0 END), 0) "
            f"FROM ({self.normalized}) AS n"
        )

    @property
    def staged(self) -> str:
        """The rows to stage: user id and value present, nothing in them the state database cannot take."""
        return (
            f"SELECT u, e, v FROM ({self.normalized}) AS n "
            f"WHERE u IS NOT NULL AND v IS NOT NULL AND NOT {self.unusable}"
        )

    @property
    def staged_or_without_id(self) -> str:
        """:attr:`staged` and the rows without a user id, for an insert that leaves those out by the staging key's
        NOT NULL (SQLite's ``INSERT OR IGNORE``), where a ``WHERE`` on the id would compute it once more a row.

        The emails and values of rows without an id are computed too: one that the streamed path would skip (it
        skips such a row before looking at them) makes the statement fail, and the computation streams."""
        return f"SELECT u, e, v FROM ({self.normalized}) AS n WHERE v IS NOT NULL AND NOT {self.unusable}"

    @property
    def ordered(self) -> str:
        """The rows with their position in the result (``ord``), to settle repeated users as streaming does."""
        return f"SELECT u, e, v, row_number() OVER () AS ord FROM ({self.normalized}) AS n"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sqlite_unpadded(text: str, utf8: bool = True) -> str:
    """SQLite: whether ``text`` starts and ends with a printable ASCII character other than space, so that trimming
    it would change nothing. Trimming with :data:`WHITESPACE` costs about three times this test.

    ``utf8``: the database's text is UTF-8, so the last character is such a character exactly when the text's
    last byte is one (every byte of a longer character is 0x80 or above); the byte is read without counting the
    characters before it, which ``substr(text, -1)`` does (900,000 emails: 0.07 s of CPU against 0.13 s). In
    UTF-16 the last byte tells nothing of the kind: the character is then read as text.
    """
    last = (
        f"substr(CAST({text} AS BLOB), -1) BETWEEN x'21' AND x'7e'"
        if utf8
        else f"unicode(substr({text}, -1)) BETWEEN 33 AND 126"
    )
    return f"unicode({text}) BETWEEN 33 AND 126 AND {last}"


def _sqlite_columns(
    uid: str,
    email: str | None,
    value: str | None,
    is_trait: bool,
    value_is_json: bool = False,
    utf8: bool = True,
) -> tuple[str, str, str]:
    ws = _literal(WHITESPACE)
    # text with a NUL byte (which length() stops at, so bytes are counted as a blob's) or too long for the state
    # database goes to the Python normaliser, which raises for it: the statement fails and the computation streams.
    # The limit is in UTF-8 bytes; a UTF-16 database's blob has at least two thirds as many (a character of
    # three UTF-8 bytes takes two), so there any id that might be too long is left for the normaliser to measure
    too_long = (
        f"length(CAST({uid} AS BLOB)) > {MAX_USER_ID_BYTES}"
        if utf8
        else f"length(CAST({uid} AS BLOB)) * 3 > {2 * MAX_USER_ID_BYTES}"
    )
    unusable_id = f"instr({uid}, char(0)) > 0 OR {too_long}"
    u = (
        f"CASE typeof({uid}) WHEN 'integer' THEN CAST({uid} AS TEXT) "
        f"WHEN 'text' THEN CASE WHEN {unusable_id} THEN as_user_id({uid}) "
        f"WHEN {_sqlite_unpadded(uid, utf8)} THEN {uid} "
        f"WHEN trim({uid}, {ws}) = '' THEN NULL ELSE {uid} END "
        f"WHEN 'null' THEN NULL ELSE as_user_id({uid}) END"
    )
    e = (
        "NULL"
        if email is None
        else f"CASE typeof({email}) WHEN 'text' THEN CASE WHEN instr({email}, char(0)) > 0 THEN as_email({email}) "
        f"WHEN {_sqlite_unpadded(email, utf8)} THEN {email} "
        f"ELSE nullif(trim({email}, {ws}), '') END "
        f"WHEN 'null' THEN NULL ELSE as_email({email}) END"
    )
    if not is_trait:
        return u, e, "'true'"
    assert value is not None
    if value_is_json:
        return u, e, value
    v = (
        f"CASE typeof({value}) WHEN 'integer' THEN CAST({value} AS TEXT) "
        f"WHEN 'text' THEN json_quote({value} || '') "  # || '' drops a JSON subtype: text stays a JSON string
        f"WHEN 'null' THEN NULL ELSE as_json_value({value}) END"
    )
    return u, e, v


def _pg_columns(
    uid: tuple[str, int],
    email: tuple[str, int] | None,
    value: tuple[str, int] | None,
    is_trait: bool,
    value_is_json: bool = False,
) -> tuple[str, str, str, str] | None:
    """The normalising expressions ``u, e, v`` and ``b``, true for a row whose user id is too long to stage
    (PostgreSQL text holds no NUL byte, so that is all the streamed path could skip an id or email for)."""
    ws = _literal(WHITESPACE)
    name, oid = uid
    b = "false"
    if oid in _PG_INTEGER or oid == _PG_UUID:
        u = f"{name}::text"
    elif oid in _PG_TEXT:
        u = f"CASE WHEN btrim({name}, {ws}) = '' THEN NULL ELSE {name}::text END"
        b = f"octet_length({name}) > {MAX_USER_ID_BYTES}"
    else:
        return None
    if email is None:
        e = "NULL::text"
    elif email[1] in _PG_TEXT:
        e = f"nullif(btrim({email[0]}, {ws}), '')"
    else:
        return None
    if not is_trait:
        return u, e, "'true'::text", b
    assert value is not None
    name, oid = value
    if value_is_json:
        json_text = f"{name}::text" if oid in _PG_TEXT else None
        return None if json_text is None else (u, e, json_text, b)
    if oid in _PG_INTEGER:
        v = f"{name}::text"
    elif oid == _PG_BOOL:
        v = f"CASE WHEN {name} THEN 'true' WHEN NOT {name} THEN 'false' END"
    elif oid in _PG_TEXT:
        v = f"to_json({name})::text"
    else:
        return None
    return u, e, v, b


def query_text(sql: str) -> str:
    """The query as it can stand inside a subquery: a trailing semicolon removed, and a line end after it, so that a
    comment on its last line (``-- ...``) does not swallow what follows it."""
    return sql.strip().rstrip(";").rstrip() + "\n"


def plan(conn: Connection, comp: Computation) -> Pushdown | None:
    """The pushed-down form of ``comp``'s query on ``conn`` (the state database), or None to stream it instead.

    None when the computation reads a file, when the wrapped query does not run (the streamed path then
    reports the query's own error), or when a column has a type SQL cannot render exactly as Python would.
    Raises SourceError, as the streamed path does, when a required column is missing. Give it a connection of
    its own: a failed probe may leave a PostgreSQL transaction aborted.
    """
    if comp.sql is None:
        return None
    return _plan(conn, comp, query_text(comp.sql), None)


def plan_table(conn: Connection, comp: Computation, table: str, value_is_json: bool = False) -> Pushdown | None:
    """The pushed-down form of ``comp`` read from ``table`` of the state database (rows landed there from
    another source, ``run/land.py``): the same normalising SQL, fallbacks and counts as :func:`plan`.
    ``value_is_json``: the table's ``value`` column is text holding each value's canonical JSON already (Arrow
    batches rendered by ``sources/arrow_ingest.py``), taken as it is."""
    return _plan(conn, comp, f"SELECT * FROM {_quote(table)}", None, value_is_json)


def plan_statement(conn: Connection, comp: Computation, text: str, params: Mapping[str, Any]) -> Pushdown | None:
    """The pushed-down form of a compiled statement (the builder's): ``text`` is ready for the driver, with
    ``params`` bound, and returns ``user_id``, ``email`` and (traits) ``value`` as canonical JSON text, never a
    NULL id or value (a blank id is left out, not counted).

    None when a column has a type SQL cannot normalise exactly as Python would, or the probe fails.
    """
    return _plan(conn, comp, text, params)


def _plan(
    conn: Connection, comp: Computation, inner: str, params: Mapping[str, Any] | None, json_values: bool = False
) -> Pushdown | None:
    dialect = conn.dialect.name
    probe = f"SELECT * FROM ({inner}) AS src LIMIT 0"
    if params is None:
        probe = literal_sql(conn.dialect, probe)
    value_is_json = params is not None or json_values
    complete = params is not None
    try:
        result = conn.exec_driver_sql(probe, dict(params or {}))
        names = list(result.keys())
        types = [getattr(d, "type_code", None) for d in (result.cursor.description or [])]
        result.close()
    except SQLAlchemyError:
        return None
    uid, email, value = locate(comp, names, "the query")
    is_trait = comp.computation_class == "trait"

    def ref(i: int | None) -> str | None:
        return None if i is None else f"src.{_quote(names[i])}"

    if dialect == "sqlite":
        uid_ref = ref(uid)
        assert uid_ref is not None
        utf8 = text_is_utf8(conn)
        u, e, v = _sqlite_columns(uid_ref, ref(email), ref(value), is_trait, value_is_json, utf8)
        return Pushdown(
            comp, f"SELECT {u} AS u, {e} AS e, {v} AS v FROM ({inner}) AS src", params=params, complete=complete
        )
    if dialect != "postgresql":
        return None
    return _pg_plan(comp, inner, names, [int(t or 0) for t in types], params, value_is_json, complete)


def plan_typed(comp: Computation, inner: str, names: list[str], oids: list[int]) -> Pushdown | None:
    """PostgreSQL: the pushed-down form of the query ``inner``, whose columns ``names`` have the type OIDs
    ``oids`` (probed by the caller on the database that runs it, a source as well as the state), or None when a
    column has a type SQL cannot render exactly as Python would. Raises SourceError when a required column is
    missing. Its statements are the query's text as written (no parameters, nothing doubled for a driver)."""
    return _pg_plan(comp, inner, names, oids, None, False, False)


def _pg_plan(
    comp: Computation,
    inner: str,
    names: list[str],
    oids: list[int],
    params: Mapping[str, Any] | None,
    value_is_json: bool,
    complete: bool,
) -> Pushdown | None:
    uid, email, value = locate(comp, names, "the query")

    def typed(i: int | None) -> tuple[str, int] | None:
        return None if i is None else (f"src.{_quote(names[i])}", oids[i])

    uid_typed = typed(uid)
    assert uid_typed is not None
    columns = _pg_columns(uid_typed, typed(email), typed(value), comp.computation_class == "trait", value_is_json)
    if columns is None:
        return None
    u, e, v, b = columns
    return Pushdown(
        comp,
        f"SELECT {u} AS u, {e} AS e, {v} AS v, {b} AS b FROM ({inner}) AS src",
        unusable="b",
        params=params,
        complete=complete,
    )
