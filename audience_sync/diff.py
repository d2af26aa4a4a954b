"""The set-based diff: a run's staged truth against each destination's snapshot, into the outbox.

Every statement here is one ``INSERT ... SELECT`` or ``UPDATE`` over whole computations; no member passes
through Python. Semantics (per destination and computation):

- audience: ``entered`` (new value ``true``) for a staged user the snapshot does not hold as ``true``;
  ``exited`` (``false``) for a snapshot ``true`` that is no longer staged.
- trait: ``entered`` for a staged value where the snapshot holds none; ``changed`` where it holds another;
  ``exited`` (new value NULL, sent as ``null``) where the snapshot holds a value that is no longer staged.
- resync: every staged user is written even when unchanged; exits as above.

An exit goes to the email the destination last received (kept in the snapshot); other changes use the
staged email, falling back to the snapshot's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    String,
    and_,
    func,
    literal,
    or_,
    select,
    update,
)

from .config import Computation
from .store.schema import DiffRow, SnapshotRow, StagingRow, UTCDateTime, table_of, utcnow
from .values import FALSE, TRUE

diffs = table_of(DiffRow)
_COLUMNS = [
    "run_id",
    "destination",
    "computation_key",
    "computation_class",
    "user_id",
    "email",
    "change",
    "old_value",
    "new_value",
    "base_run_id",
    "status",
    "attempts",
    "created_at",
]


def _insert(
    conn: Connection,
    run_id: int,
    dest: str,
    comp: Computation,
    change: Any,
    user_id: Any,
    email: Any,
    old: Any,
    new: Any,
    base: Any,
    source: Any,
    where: list[ColumnElement[bool]],
) -> int:
    sel = (
        select(
            literal(run_id, BigInteger),
            literal(dest, String),
            literal(comp.key, String),
            literal(comp.computation_class, String),
            user_id,
            email,
            change,
            old,
            new,
            base,
            literal("pending", String),
            literal(0, Integer),
            literal(utcnow(), UTCDateTime),
        )
        .select_from(source)
        .where(*where)
    )
    return conn.execute(diffs.insert().from_select(_COLUMNS, sel)).rowcount


def write_changes(
    conn: Connection,
    run_id: int,
    dest: str,
    comp: Computation,
    *,
    resync: bool = False,
    users: Sequence[str] | None = None,
) -> int:
    """Insert the changes of ``comp`` for destination ``dest`` into ``diffs`` as pending; return how many.

    ``users`` limits the diff to those user ids (for ``resync --user``).
    """
    s = table_of(StagingRow).alias("s")
    p = table_of(SnapshotRow).alias("p")
    on = and_(p.c.destination == dest, p.c.computation_key == s.c.computation_key, p.c.user_id == s.c.user_id)
    staged = s.outerjoin(p, on)
    in_staging: list[ColumnElement[bool]] = [s.c.run_id == run_id, s.c.computation_key == comp.key]
    gone = p.outerjoin(
        s, and_(s.c.run_id == run_id, s.c.computation_key == p.c.computation_key, s.c.user_id == p.c.user_id)
    )
    in_snapshot: list[ColumnElement[bool]] = [
        p.c.destination == dest,
        p.c.computation_key == comp.key,
        s.c.user_id.is_(None),
    ]
    if users is not None:
        in_staging.append(s.c.user_id.in_(list(users)))
        in_snapshot.append(p.c.user_id.in_(list(users)))
    email = func.coalesce(s.c.email, p.c.email)
    n = 0
    if comp.computation_class == "audience":
        entered = [] if resync else [or_(p.c.value.is_(None), p.c.value != TRUE)]
        n += _insert(
            conn,
            run_id,
            dest,
            comp,
            literal("entered", String),
            s.c.user_id,
            email,
            p.c.value,
            literal(TRUE, String),
            p.c.run_id,
            staged,
            in_staging + entered,
        )
        n += _insert(
            conn,
            run_id,
            dest,
            comp,
            literal("exited", String),
            p.c.user_id,
            p.c.email,
            p.c.value,
            literal(FALSE, String),
            p.c.run_id,
            gone,
            [*in_snapshot, p.c.value == TRUE],
        )
        return n
    changed = [] if resync else [p.c.value != s.c.value]
    n += _insert(
        conn,
        run_id,
        dest,
        comp,
        literal("entered", String),
        s.c.user_id,
        email,
        p.c.value,
        s.c.value,
        p.c.run_id,
        staged,
        [*in_staging, p.c.value.is_(None)],
    )
    n += _insert(
        conn,
        run_id,
        dest,
        comp,
        literal("changed", String),
        s.c.user_id,
        email,
        p.c.value,
        s.c.value,
        p.c.run_id,
        staged,
        [*in_staging, p.c.value.is_not(None), *changed],
    )
    n += _insert(
        conn,
        run_id,
        dest,
        comp,
        literal("exited", String),
        p.c.user_id,
        p.c.email,
        p.c.value,
        literal(None, String),
        p.c.run_id,
        gone,
        [*in_snapshot, p.c.value.is_not(None)],
    )
    return n


def skip_unreachable(conn: Connection, run_id: int, dest: str, required: Sequence[str], reason: str) -> int:
    """Mark this run's pending changes for ``dest`` that lack a required identifier as ``skipped``."""
    if "email" not in required:
        return 0
    result = conn.execute(
        update(diffs)
        .where(
            diffs.c.run_id == run_id,
            diffs.c.destination == dest,
            diffs.c.status == "pending",
            diffs.c.email.is_(None),
        )
        .values(status="skipped", error=reason)
    )
    return result.rowcount


def supersede_pending(conn: Connection, run_id: int, dest: str, keys: Sequence[str]) -> int:
    """Mark earlier runs' still-pending changes of ``dest`` for ``keys`` as ``superseded``.

    This run has recomputed them from the source's truth and the snapshot, which those changes never
    advanced, so its own rows carry whatever is still owed.
    """
    result = conn.execute(
        update(diffs)
        .where(
            diffs.c.destination == dest,
            diffs.c.status == "pending",
            diffs.c.run_id < run_id,
            diffs.c.computation_key.in_(list(keys)),
        )
        .values(status="superseded", error=f"recomputed by run {run_id}")
    )
    return result.rowcount
