"""The set-based diff: a run's staged truth against each destination's snapshot, into the outbox.

Every statement here is one ``INSERT ... SELECT`` or ``UPDATE`` over a whole computation; no member passes
through Python. Semantics (per destination and computation):

- audience: ``entered`` (new value ``true``) for a staged user the snapshot does not hold as ``true``;
  ``exited`` (``false``) for a snapshot ``true`` that is no longer staged.
- trait: ``entered`` for a staged value where the snapshot holds none; ``changed`` where it holds another;
  ``exited`` (new value NULL, sent as ``null``) where the snapshot holds a value that is no longer staged.
- resync: every staged user is written even when unchanged; exits as above. With ``users`` (``resync --user``),
  every key the snapshot holds for them is written again, ``false`` and NULL included.

A snapshot row ``in_doubt`` (its change was in flight when a run died) counts as different from everything,
so the current truth is sent again, including an exit when the user is no longer staged.

A user whose source row could not be staged (``staging_skips``: a NUL byte, a value with no JSON form...) is left
alone: no entry, change or exit, so the destination keeps what it has; instead the user gets a ``skipped``
change per destination, with the reason (``entered`` when the destination holds no value for them, ``changed``
when it does), so that every run counts and reports them until the source is fixed.

An ``identifiers`` change re-sends a user's current value when the staged email differs from the one the
destination last received (kept in the snapshot) or it received none: an email that changes or appears reaches
every key the destination holds for the user. An exit (a null) goes to the user's latest email: the one staged
for another key of the run, else the one the destination last received; other changes use the staged email,
falling back to the snapshot's. Each row gets its deterministic message id here, computed in
SQL exactly as :func:`audience_sync.model.message_id` computes it, from the state database's install id
(``store/install.py``) and the change.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    FromClause,
    Integer,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from ..config import Computation
from ..model import SEPARATOR
from ..values import FALSE, TRUE
from . import staging
from .install import install_id
from .schema import DiffRow, SkippedRow, SnapshotRow, StagingRow, SyncRun, UTCDateTime, status_is, table_of, utcnow
from .sqlfuncs import sha256_hex

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
    "message_id",
    "status",
    "attempts",
    "created_at",
]


@dataclass(frozen=True)
class _Target:
    run_id: int
    install_id: str
    destination: str
    computation_class: str
    salt: str
    #: every key of the run for this destination: where to find a user's latest email
    keys: tuple[str, ...] = ()

    def message_id(self, key: Any, user_id: Any, new_value: Any, base_run_id: Any) -> ColumnElement[str]:
        sep = literal(SEPARATOR, String)
        text = (
            literal(self.install_id, String)
            + sep
            + literal(self.destination, String)
            + sep
            + key
            + sep
            + user_id
            + sep
            + func.coalesce(new_value, literal("null", String))
            + sep
            + func.coalesce(cast(base_run_id, String), literal("", String))
            + sep
            + literal(self.salt, String)
        )
        return literal("as-", String) + func.substr(sha256_hex(text), 1, 40)

    def insert(
        self,
        conn: Connection,
        change: str,
        *,
        key: Any,
        user_id: Any,
        email: Any,
        old: Any,
        new: Any,
        base: Any,
        source: FromClause,
        where: Sequence[ColumnElement[bool]],
    ) -> int:
        sel = (
            select(
                literal(self.run_id, BigInteger),
                literal(self.destination, String),
                key,
                literal(self.computation_class, String),
                user_id,
                email,
                literal(change, String),
                old,
                new,
                base,
                self.message_id(key, user_id, new, base),
                literal("pending", String),
                literal(0, Integer),
                literal(utcnow(), UTCDateTime),
            )
            .select_from(source)
            .where(*where)
        )
        # SQLAlchemy reports an INSERT's rowcount only when asked to (psycopg's is -1 otherwise)
        insert = diffs.insert().from_select(_COLUMNS, sel).execution_options(preserve_rowcount=True)
        return conn.execute(insert).rowcount


def write_changes(
    conn: Connection,
    run_id: int,
    dest: str,
    comps: Sequence[Computation],
    *,
    resync: bool = False,
    users: Sequence[str] | None = None,
) -> Counter[str]:
    """Insert the changes of ``comps`` for destination ``dest`` into ``diffs`` as pending; return how many of each
    kind (``entered``, ``exited``, ``changed``).

    One ``INSERT ... SELECT`` per change class covers every computation of a class (and flap-damping
    setting), so the snapshot and staging are each read once per class, not once per computation.
    ``users`` limits the diff to those user ids (for ``resync --user``). Users whose rows were skipped get a
    ``skipped`` change each instead (not counted in the result: nothing is owed to them).
    """
    groups: dict[tuple[str, float | None], list[str]] = {}
    for comp in comps:
        damping = comp.exit_after if comp.computation_class == "audience" else None
        groups.setdefault((comp.computation_class, damping), []).append(comp.key)
    written: Counter[str] = Counter()
    install = install_id(conn)
    with_skips = staging.skipped_keys(conn, run_id)
    for (cls, damping), keys in groups.items():
        target = _Target(run_id, install, dest, cls, f"resync:{run_id}" if resync else "", tuple(c.key for c in comps))
        skipped = [k for k in keys if k in with_skips]
        written += _write_group(conn, target, keys, damping, resync=resync, users=users, skipped=skipped)
        if skipped:
            _write_skips(conn, target, skipped, users)
    return written


_skips = table_of(SkippedRow)
_runs = table_of(SyncRun)


def _not_skipped(run_id: int, key: Any, user_id: Any) -> ColumnElement[bool]:
    """The user's source row of this run was staged, not skipped."""
    k = _skips.alias("k")
    return ~(
        select(literal(1)).where(k.c.run_id == run_id, k.c.computation_key == key, k.c.user_id == user_id).exists()
    )


def _write_skips(conn: Connection, target: _Target, keys: Sequence[str], users: Sequence[str] | None) -> int:
    """A ``skipped`` change, with its reason, for each user of ``keys`` whose source row was skipped."""
    k = _skips.alias("k")
    p = table_of(SnapshotRow).alias("p")
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
    insert = diffs.insert().from_select([*_COLUMNS, "error"], sel).execution_options(preserve_rowcount=True)
    return conn.execute(insert).rowcount


def _write_group(
    conn: Connection,
    target: _Target,
    keys: Sequence[str],
    exit_after: float | None,
    *,
    resync: bool,
    users: Sequence[str] | None,
    skipped: Sequence[str] = (),
) -> Counter[str]:
    run_id, dest, computation_class = target.run_id, target.destination, target.computation_class
    s = table_of(StagingRow).alias("s")
    p = table_of(SnapshotRow).alias("p")
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
        in_staging.append(_not_skipped(run_id, s.c.computation_key, s.c.user_id))
        in_snapshot.append(_not_skipped(run_id, p.c.computation_key, p.c.user_id))
    current: dict[str, Any] = {
        "key": s.c.computation_key,
        "user_id": s.c.user_id,
        "email": func.coalesce(s.c.email, p.c.email),
        "old": p.c.value,
        "base": p.c.run_id,
        "source": staged,
    }
    # an exit or a null goes to the user's latest email: staged for another key of this run, else the snapshot's
    t = table_of(StagingRow).alias("t")
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
    if computation_class == "audience":
        not_member = [] if resync else [or_(p.c.value.is_(None), p.c.value != TRUE, p.c.in_doubt)]
        out_long_enough: list[ColumnElement[bool]] = []
        if exit_after is not None and not resync:
            cutoff = utcnow() - dt.timedelta(seconds=exit_after)
            out_long_enough = [or_(p.c.in_doubt, p.c.missing_since <= literal(cutoff, UTCDateTime))]
        return Counter(
            entered=target.insert(conn, "entered", new=literal(TRUE, String), where=in_staging + not_member, **current),
            exited=target.insert(
                conn,
                "exited",
                new=literal(FALSE, String),
                where=[*in_snapshot, *left_long_enough, *out_long_enough],
                **left,
            ),
            identifiers=0
            if resync  # a resync sends every member with their current email already
            else target.insert(
                conn,
                "identifiers",
                new=literal(TRUE, String),
                where=[*in_staging, p.c.value == TRUE, *new_email],
                **current,
            ),
        )
    differs = [] if resync else [or_(p.c.value != s.c.value, p.c.in_doubt)]
    return Counter(
        entered=target.insert(conn, "entered", new=s.c.value, where=[*in_staging, p.c.value.is_(None)], **current),
        changed=target.insert(
            conn, "changed", new=s.c.value, where=[*in_staging, p.c.value.is_not(None), *differs], **current
        ),
        exited=target.insert(
            conn,
            "exited",
            new=literal(None, String),
            where=[*in_snapshot, *left_long_enough],
            **left,
        ),
        identifiers=0
        if resync
        else target.insert(
            conn, "identifiers", new=s.c.value, where=[*in_staging, p.c.value == s.c.value, *new_email], **current
        ),
    )


def unknown_users(
    conn: Connection, run_id: int, dests: Sequence[str], keys: Sequence[str], users: Sequence[str]
) -> list[str]:
    """The ids of ``users`` neither staged by run ``run_id`` for ``keys`` nor held by the snapshot of ``dests``."""
    s = table_of(StagingRow)
    p = table_of(SnapshotRow)
    wanted = list(dict.fromkeys(users))
    staged = conn.execute(
        select(s.c.user_id).where(s.c.run_id == run_id, s.c.computation_key.in_(list(keys)), s.c.user_id.in_(wanted))
    ).scalars()
    held = conn.execute(
        select(p.c.user_id).where(
            p.c.destination.in_(list(dests)), p.c.computation_key.in_(list(keys)), p.c.user_id.in_(wanted)
        )
    ).scalars()
    known = set(staged) | set(held)
    return [u for u in wanted if u not in known]


def note_missing(conn: Connection, run_id: int, dest: str, comp: Computation) -> None:
    """Flap damping: start the clock for members missing from the source, stop it for those who are back.

    Guarantees: after it, no ``missing_since`` of this destination and computation is later than now. A
    ``missing_since`` in the future was written by a run whose clock was ahead; it counts as "missing since
    now" (the exit comes ``exit_after`` from now), so a wrong clock delays an exit by at most ``exit_after``
    instead of by however far it was ahead. A member whose source row was skipped is not missing: the clock
    does not start for them.
    """
    s = table_of(StagingRow)
    p = table_of(SnapshotRow)
    now = utcnow()
    staged = (
        select(s.c.user_id)
        .where(s.c.run_id == run_id, s.c.computation_key == comp.key, s.c.user_id == p.c.user_id)
        .exists()
    )
    mine = [p.c.destination == dest, p.c.computation_key == comp.key]
    moment = literal(now, UTCDateTime)
    conn.execute(update(p).where(*mine, p.c.missing_since > moment).values(missing_since=now))
    missing = [p.c.value == TRUE, p.c.missing_since.is_(None), ~staged]
    if comp.key in staging.skipped_keys(conn, run_id):
        missing.append(_not_skipped(run_id, p.c.computation_key, p.c.user_id))
    conn.execute(update(p).where(*mine, *missing).values(missing_since=now))
    conn.execute(update(p).where(*mine, p.c.missing_since.is_not(None), staged).values(missing_since=None))


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
        .values(status="skipped", error=reason)
    )
    e, last = diffs.alias("e"), diffs.alias("last")
    dry_runs = select(_runs.c.id).where(_runs.c.mode == "dry_run")
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


def mark_planned(conn: Connection, run_id: int) -> int:
    """A dry run's changes that would be sent: ``pending`` becomes ``planned`` (never sent, never superseded)."""
    result = conn.execute(
        update(diffs).where(diffs.c.run_id == run_id, diffs.c.status == "pending").values(status="planned")
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
            status_is("pending"),
            diffs.c.run_id < run_id,
            diffs.c.computation_key.in_(list(keys)),
        )
        .values(status="superseded", error=f"recomputed by run {run_id}")
    )
    return result.rowcount
