"""The changes of one computation class over every computation of the class at once (semantics: ``diff.py``):
one ``INSERT ... SELECT`` over staging for ``entered``, ``changed`` (traits) and ``identifiers``, one over the
snapshot for ``exited``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, String, and_, func, literal, or_, select

from ..values import FALSE, TRUE
from .columns import UTCDateTime
from .diff_rows import Target
from .diff_skips import not_skipped
from .schema import snapshot, staging, utcnow


def write_group(
    conn: Connection,
    target: Target,
    keys: Sequence[str],
    exit_after: float | None,
    *,
    resync: bool,
    users: Sequence[str] | None,
    skipped: Sequence[str] = (),
) -> Counter[str]:
    """Insert the changes of ``keys`` (computations of ``target``'s class and one flap-damping setting,
    ``exit_after``) for ``target``'s destination; return how many of each kind. Users of ``skipped`` keys whose
    rows were skipped are left out."""
    run_id, dest, computation_class = target.run_id, target.destination, target.computation_class
    s = staging.alias("s")
    p = snapshot.alias("p")
    staged = s.outerjoin(
        p, and_(p.c.destination == dest, p.c.computation_key == s.c.computation_key, p.c.user_id == s.c.user_id)
    )
    gone = p.outerjoin(
        s, and_(s.c.run_id == run_id, s.c.computation_key == p.c.computation_key, s.c.user_id == p.c.user_id)
    )
    in_staging: list[ColumnElement[bool]] = [s.c.run_id == run_id, s.c.computation_key.in_(list(keys))]
    in_snapshot: list[ColumnElement[bool]] = [
        p.c.destination == dest,
        p.c.computation_key.in_(list(keys)),
        s.c.user_id.is_(None),
    ]
    if users is not None:
        in_staging.append(s.c.user_id.in_(list(users)))
        in_snapshot.append(p.c.user_id.in_(list(users)))
    if skipped:  # only then: a run without skipped rows pays nothing for them
        in_staging.append(not_skipped(run_id, s.c.computation_key, s.c.user_id))
        in_snapshot.append(not_skipped(run_id, p.c.computation_key, p.c.user_id))
    current: dict[str, Any] = {
        "key": s.c.computation_key,
        "user_id": s.c.user_id,
        "email": func.coalesce(s.c.email, p.c.email),
        "old": p.c.value,
        "base": p.c.run_id,
        "source": staged,
    }
    # an exit or a null goes to the user's latest email: staged for another key of this run, else the snapshot's
    t = staging.alias("t")
    staged_email = (
        select(func.max(t.c.email))
        .where(t.c.run_id == run_id, t.c.computation_key.in_(list(target.keys or keys)), t.c.user_id == p.c.user_id)
        .scalar_subquery()
    )
    left: dict[str, Any] = {
        "key": p.c.computation_key,
        "user_id": p.c.user_id,
        "email": func.coalesce(staged_email, p.c.email),
        "old": p.c.value,
        "base": p.c.run_id,
        "source": gone,
    }
    # the destination holds the current value, but with another email (or none): send it again with the new one
    new_email = [s.c.email.is_not(None), or_(p.c.email.is_(None), p.c.email != s.c.email), ~p.c.in_doubt]
    if resync and users is not None:  # resync --user: every key the destination holds, false and null included
        left_long_enough: list[ColumnElement[bool]] = []
    elif computation_class == "audience":
        left_long_enough = [or_(p.c.value == TRUE, p.c.in_doubt)]
    else:
        left_long_enough = [or_(p.c.value.is_not(None), p.c.in_doubt)]
    # entered, changed and identifiers are one statement over staging (one scan), the kind chosen per row; their
    # conditions are mutually exclusive (a snapshot value is NULL or not; ``identifiers`` wants it not in doubt and
    # equal to the staged value, ``changed`` different or in doubt), so each row is the change it always was
    # a destination holding nothing of these keys yet (a first sync) can only be entered: every other kind needs a
    # snapshot value, and one kind's count is the statement's row count, not a read of a million new rows
    first_sync = not _holds_any(conn, dest, keys)
    if computation_class == "audience":
        not_member = [] if resync else [or_(p.c.value.is_(None), p.c.value != TRUE, p.c.in_doubt)]
        out_long_enough: list[ColumnElement[bool]] = []
        if exit_after is not None and not resync:
            cutoff = utcnow() - dt.timedelta(seconds=exit_after)
            out_long_enough = [or_(p.c.in_doubt, p.c.missing_since <= literal(cutoff, UTCDateTime))]
        kinds: list[tuple[str, list[ColumnElement[bool]]]] = [("entered", not_member)]
        if not resync:  # a resync sends every member with their current email already
            kinds.append(("identifiers", [p.c.value == TRUE, *new_email]))
        written = target.insert(
            conn, kinds[:1] if first_sync else kinds, new=literal(TRUE, String), where=in_staging, **current
        )
        exits = [*in_snapshot, *left_long_enough, *out_long_enough]
        written.update(target.insert(conn, [("exited", [])], new=literal(FALSE, String), where=exits, **left))
        return written
    differs = [] if resync else [or_(p.c.value != s.c.value, p.c.in_doubt)]
    kinds = [("entered", [p.c.value.is_(None)]), ("changed", [p.c.value.is_not(None), *differs])]
    if not resync:
        kinds.append(("identifiers", [p.c.value == s.c.value, *new_email]))
    written = target.insert(conn, kinds[:1] if first_sync else kinds, new=s.c.value, where=in_staging, **current)
    exits = [*in_snapshot, *left_long_enough]
    written.update(target.insert(conn, [("exited", [])], new=literal(None, String), where=exits, **left))
    return written


def _holds_any(conn: Connection, dest: str, keys: Sequence[str]) -> bool:
    """The snapshot holds a row of ``dest`` for one of ``keys`` (one index lookup)."""
    held = select(snapshot.c.user_id).where(snapshot.c.destination == dest, snapshot.c.computation_key.in_(list(keys)))
    return conn.execute(held.limit(1)).first() is not None
