"""Skipped changes: users whose source row could not be staged, and users a destination cannot reach.

A user whose source row could not be staged (``staging_skips``) is left alone by the diff and gets a ``skipped``
change per destination instead, with the reason; a pending change lacking an identifier the destination requires
becomes ``skipped`` too, recorded once per change of the user's state.
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
    case,
    delete,
    func,
    literal,
    select,
    update,
)

from ..model import DiffStatus
from ..values import TRUE
from .columns import UTCDateTime
from .diff_rows import COLUMNS, Target
from .schema import diffs, runs, skips, snapshot, utcnow


def not_skipped(run_id: int, key: Any, user_id: Any) -> ColumnElement[bool]:
    """The user's source row of this run was staged, not skipped."""
    k = skips.alias("k")
    return ~(
        select(literal(1)).where(k.c.run_id == run_id, k.c.computation_key == key, k.c.user_id == user_id).exists()
    )


def write_skips(conn: Connection, target: Target, keys: Sequence[str], users: Sequence[str] | None) -> int:
    """A ``skipped`` change, with its reason, for each user of ``keys`` whose source row was skipped."""
    k = skips.alias("k")
    p = snapshot.alias("p")
    source = k.outerjoin(
        p,
        and_(
            p.c.destination == target.destination,
            p.c.computation_key == k.c.computation_key,
            p.c.user_id == k.c.user_id,
        ),
    )
    audience = target.computation_class == "audience"
    holds = p.c.value == literal(TRUE, String) if audience else p.c.value.is_not(None)
    where = [k.c.run_id == target.run_id, k.c.computation_key.in_(list(keys))]
    if users is not None:
        where.append(k.c.user_id.in_(list(users)))
    sel = (
        select(
            literal(target.run_id, BigInteger),
            literal(target.destination, String),
            k.c.computation_key,
            literal(target.computation_class, String),
            k.c.shown_user_id,
            func.coalesce(k.c.email, p.c.email),
            case((holds, literal("changed", String)), else_=literal("entered", String)),
            p.c.value,
            literal(TRUE, String) if audience else literal(None, String),
            p.c.run_id,
            literal(None, String),  # never sent: no message id
            literal("skipped", String),
            literal(0, Integer),
            literal(utcnow(), UTCDateTime),
            k.c.reason,
        )
        .select_from(source)
        .where(*where)
    )
    insert = diffs.insert().from_select([*COLUMNS, "error"], sel).execution_options(preserve_rowcount=True)
    return conn.execute(insert).rowcount


def skip_unreachable(conn: Connection, run_id: int, dest: str, required: Sequence[str], reason: str) -> int:
    """Mark this run's pending changes for ``dest`` that lack a required identifier as ``skipped``; return how many
    were skipped and are new.

    A user is recorded skipped once per change of their state: a skipped change whose user's latest earlier row
    for this destination and key (dry runs aside) is the same skip (same kind, value and reason) is deleted again,
    so a user without an email makes no row in every run. Each run still evaluates them: once they have the
    identifier, their changes are pending as anyone's.
    """
    if "email" not in required:
        return 0
    mine = [diffs.c.run_id == run_id, diffs.c.destination == dest]
    conn.execute(
        update(diffs)
        .where(*mine, diffs.c.status == "pending", diffs.c.email.is_(None))
        .values(status=DiffStatus.SKIPPED, error=reason)
    )
    e, last = diffs.alias("e"), diffs.alias("last")
    dry_runs = select(runs.c.id).where(runs.c.mode == "dry_run")
    latest = (
        select(func.max(e.c.id))
        .where(
            e.c.destination == diffs.c.destination,
            e.c.computation_key == diffs.c.computation_key,
            e.c.user_id == diffs.c.user_id,
            e.c.run_id < run_id,
            e.c.run_id.not_in(dry_runs),
        )
        .correlate(diffs)  # two levels down: without it, `diffs` joins in as a table of its own
        .scalar_subquery()
    )
    repeated = (
        select(literal(1))
        .where(
            last.c.id == latest,
            last.c.status == "skipped",
            last.c.change == diffs.c.change,
            last.c.new_value == diffs.c.new_value,
            last.c.error == diffs.c.error,
        )
        .correlate(diffs)
        .exists()
    )
    conn.execute(delete(diffs).where(*mine, diffs.c.status == "skipped", diffs.c.error == reason, repeated))
    new = conn.execute(
        select(func.count()).where(*mine, diffs.c.status == "skipped", diffs.c.error == reason)
    ).scalar_one()
    return int(new)
