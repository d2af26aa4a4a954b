"""Loading a computation's rows into ``staging`` in bulk: pushed down, copied, or inserted in large batches.

Whatever the path, the staged result is the same as :func:`audience_sync.store.staging.insert_rows` would give
for the rows in source order: one row per user, the first value, the first non-null email, and in
``conflict_value`` the last value that differs from the first (so :func:`staging.first_conflict` can report
a trait given two values).

- **Pushdown** (:func:`push_down`): the state database is the source; one ``INSERT INTO staging SELECT`` per
  computation, no member row passes through Python.
- **COPY** (:func:`copy_rows`, PostgreSQL): streamed rows go through ``COPY`` into a temporary table, then one
  ``INSERT ... SELECT`` into ``staging``.
- **Batches** (:func:`insert_batches`, SQLite): ``executemany`` upserts, many chunks per transaction.

On PostgreSQL the bulk insert is first tried as a plain ``INSERT`` (in a savepoint); only when the source
repeated a user is it redone with ``ON CONFLICT DO NOTHING``, keeping the first row, and one more statement
settles the email and the conflicting value from the rows' order (:func:`_settle_repeats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from ..config import Computation
from .dialect import backend
from .staging import StagedRow, insert_rows

_COLUMNS = "run_id, computation_key, user_id, email, value"
_SQLITE_UPSERT = (
    "ON CONFLICT (run_id, computation_key, user_id) DO UPDATE SET "
    "email = coalesce(staging.email, excluded.email), "
    "conflict_value = CASE WHEN staging.value IS NOT excluded.value THEN excluded.value "
    "ELSE staging.conflict_value END"
)
_LOAD_TABLE = "as_staging_load"


def _p(conn: Connection, name: str) -> str:
    """A named parameter in the driver's own style."""
    return f"%({name})s" if conn.dialect.paramstyle in ("format", "pyformat") else f":{name}"


def _settle_repeats(
    conn: Connection, run_id: int, key: str, ordered: str, params: dict[str, Any] | None = None
) -> None:
    """For users the source returned more than once: first value, first non-null email, last differing value.

    ``ordered`` is a SELECT of ``u, e, v, ord`` (``ord`` the row's position in the source's order), ready for
    the driver, with ``params`` bound.
    """
    sql = (
        f"WITH o AS (SELECT u, e, v, ord FROM ({ordered}) AS o0 WHERE u IS NOT NULL AND v IS NOT NULL), "
        "dup AS (SELECT u FROM o GROUP BY u HAVING count(*) > 1), "
        "o2 AS (SELECT o.u, o.e, o.v, o.ord, first_value(o.v) OVER (PARTITION BY o.u ORDER BY o.ord) AS fv "
        "FROM o JOIN dup ON dup.u = o.u), "
        "c AS (SELECT u, min(fv) AS v, (array_agg(e ORDER BY ord) FILTER (WHERE e IS NOT NULL))[1] AS e, "
        "(array_agg(v ORDER BY ord DESC) FILTER (WHERE v <> fv))[1] AS other FROM o2 GROUP BY u) "
        "UPDATE staging AS st SET value = c.v, email = c.e, conflict_value = c.other FROM c "
        f"WHERE st.run_id = {_p(conn, 'run')} AND st.computation_key = {_p(conn, 'key')} AND st.user_id = c.u"
    )
    conn.exec_driver_sql(sql, {**(params or {}), "run": run_id, "key": key})


class Pushdown(Protocol):
    """What a pushed-down load needs of a computation's query: its statements, as ``sources/pushdown.py``
    writes them (its ``Pushdown`` is the one implementation; the store does not import the sources)."""

    @property
    def comp(self) -> Computation:
        """The computation whose rows the query returns."""

    @property
    def normalized(self) -> str:
        """``SELECT u, e, v[, b]``: the query's rows normalised as the streamed path would."""

    @property
    def unusable(self) -> str:
        """A predicate on those rows, true for a row the streamed path would skip."""

    @property
    def complete(self) -> bool:
        """The query never returns a row without a user id or a value."""

    @property
    def bound(self) -> dict[str, Any]:
        """The parameters to pass with every statement."""

    @property
    def staged(self) -> str:
        """The rows to stage."""

    @property
    def staged_or_without_id(self) -> str:
        """The rows to stage and the rows without a user id (an insert's NOT NULL key leaves those out)."""

    @property
    def ordered(self) -> str:
        """The rows with their position in the source's order, ``u, e, v, ord``."""

    @property
    def counts(self) -> str:
        """One row: rows returned, without a user id, without a value, to be skipped."""

    def driver_sql(self, dialect: Any, text: str) -> str:
        """``text`` (one of the statements above) as ``exec_driver_sql`` must receive it."""


class PushedDown(NamedTuple):
    """What a pushdown staged: rows returned, rows without a user id, rows without a value, distinct users staged
    (None when that takes a count of its own), and rows left out that the streamed path would skip."""

    rows: int
    null_user_ids: int
    null_values: int
    members: int | None
    unusable: int


def push_down(conn: Connection, run_id: int, pushdown: Pushdown) -> PushedDown:
    """Stage ``pushdown``'s rows with statements run inside the database; say what was staged.

    Guarantees the same staged rows as streaming the query through :func:`staging.insert_rows`, except that rows
    the streamed path would skip are left out and counted in ``unusable``: then roll back and stream, so that
    they are reported. Raises the database's error (SQLAlchemyError) if the query fails; call inside a
    transaction so that nothing of a failed load stays.
    """
    key = pushdown.comp.key
    bound = pushdown.bound  # a compiled statement's parameters (none for a user's query)
    params = {**bound, "run": run_id, "key": key}

    def sql(text: str) -> str:
        return pushdown.driver_sql(conn.dialect, text)

    def insert_from(rows: str, verb: str = "INSERT") -> str:
        return (
            f"{verb} INTO staging ({_COLUMNS}) SELECT {_p(conn, 'run')}, {_p(conn, 'key')}, u, e, v "
            f"FROM ({sql(rows)}) AS s"
        )

    staged: int | None
    members: int | None = None
    if backend(conn).upsert_counts_repeats:  # no plain INSERT to try: the upsert counts repeats too
        # SQLite: a row without a user id is left out by the key's NOT NULL (IGNORE: the upsert takes the key's
        # conflicts, and staging has no other constraint to ignore), so the id is computed once a row, not again
        # for a WHERE (1M rows: 0.1 s of CPU)
        insert = insert_from(pushdown.staged_or_without_id, "INSERT OR IGNORE")
        staged = _execute(conn, f"{insert} WHERE true {_SQLITE_UPSERT}", params)
    else:
        insert = insert_from(pushdown.staged)
        staged = members = _insert_unique(conn, insert, params)  # a plain insert: one row per user
        if staged is None:
            conn.exec_driver_sql(f"{insert} ON CONFLICT DO NOTHING", params)
            _settle_repeats(conn, run_id, key, sql(pushdown.ordered), bound)
    # a compiled statement returns no row without an id or a value; where no row can be left out as unusable
    # either (SQLite: such a row fails the statement), the rows staged are all the rows: nothing else to count
    if pushdown.complete and pushdown.unusable == "false" and staged is not None:
        return PushedDown(staged, 0, 0, members, 0)
    rows = int(conn.exec_driver_sql(sql(f"SELECT count(*) FROM ({pushdown.normalized}) AS n"), bound).scalar_one())
    if staged == rows:  # every row had a user id and a value, and none was left out: nothing to tell apart
        return PushedDown(rows, 0, 0, members, 0)
    rows, null_ids, null_values, unusable = conn.exec_driver_sql(sql(pushdown.counts), bound).one()
    return PushedDown(int(rows), int(null_ids), int(null_values), members, int(unusable))


def _execute(conn: Connection, sql: str, params: dict[str, Any]) -> int:
    """Run ``sql``; return the rows it wrote (SQLAlchemy keeps an INSERT's count only when asked)."""
    return int(conn.exec_driver_sql(sql, params, execution_options={"preserve_rowcount": True}).rowcount)


def _insert_unique(conn: Connection, insert: str, params: dict[str, Any]) -> int | None:
    """PostgreSQL: run ``insert`` as a plain INSERT, which is about twice as fast as ``ON CONFLICT``; return the
    rows inserted, or None (and nothing inserted) when the source repeated a user."""
    savepoint = conn.begin_nested()
    try:
        inserted = _execute(conn, insert, params)
    except IntegrityError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) != "23505":  # not a unique violation: a real error
            raise
        return None
    savepoint.commit()
    return inserted


def copy_rows(conn: Connection, run_id: int, key: str, chunks: Iterable[Sequence[StagedRow]]) -> None:
    """PostgreSQL: stage streamed ``chunks`` with ``COPY`` into a temporary table and one ``INSERT ... SELECT``.

    Memory holds one chunk. Call inside a transaction (the temporary table is dropped at its end).
    """
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {_LOAD_TABLE} (ord bigint, u text, e text, v text) ON COMMIT DROP")
    raw: Any = conn.connection.driver_connection
    ord_ = 0
    with raw.cursor() as cur, cur.copy(f"COPY {_LOAD_TABLE} (ord, u, e, v) FROM STDIN") as copy:
        for chunk in chunks:
            for user_id, email, value in chunk:
                ord_ += 1
                copy.write_row((ord_, user_id, email, value))
    insert = f"INSERT INTO staging ({_COLUMNS}) SELECT %(run)s, %(key)s, u, e, v FROM {_LOAD_TABLE}"
    params = {"run": run_id, "key": key}
    if _insert_unique(conn, insert, params) is None:
        conn.exec_driver_sql(f"{insert} ON CONFLICT DO NOTHING", params)
        _settle_repeats(conn, run_id, key, f"SELECT u, e, v, ord FROM {_LOAD_TABLE}")
    conn.exec_driver_sql(f"DROP TABLE {_LOAD_TABLE}")


def insert_batches(conn: Connection, run_id: int, key: str, chunks: Iterable[Sequence[StagedRow]]) -> None:
    """Stage streamed ``chunks`` with ``executemany`` upserts, all in the caller's transaction."""
    for chunk in chunks:
        insert_rows(conn, run_id, key, chunk)
