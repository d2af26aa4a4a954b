"""The membership ledger: every value a destination acknowledged, kept to answer "who held KEY at instant T".

Rows are written by :func:`record_sent` inside the transaction that marks changes ``sent`` and advances the
snapshot (``store/outbox.py``), so the ledger and the snapshot never disagree; :func:`members_at` and
:func:`user_history` read it; :func:`fold` is ``prune``'s part: rows older than the cut-off are folded into one
baseline row per user (the value held at the cut-off, dropped when that is no value), and the horizon moves to the
cut-off, so every instant from the horizon on is still answered exactly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from ..values import TRUE, decode
from .dialect import upsert
from .schema import computations, diffs, ledger
from .schema import ledger_horizon as horizon


def record_sent(conn: Connection, sent: Sequence[ColumnElement[bool]], now: Any) -> None:
    """Append the ``sent`` diff rows selected by ``sent`` to the ledger (one INSERT ... SELECT), at ``now``.
    Call in the transaction that advances the snapshot from the same rows."""
    source = select(
        diffs.c.destination,
        diffs.c.computation_key,
        diffs.c.user_id,
        diffs.c.old_value,
        diffs.c.new_value,
        diffs.c.run_id,
        diffs.c.id,
        bindparam("acknowledged_at", now, type_=ledger.c.acknowledged_at.type),
        literal("sent"),
    ).where(*sent)
    conn.execute(
        ledger.insert().from_select(
            [
                "destination",
                "computation_key",
                "user_id",
                "old_value",
                "new_value",
                "run_id",
                "diff_id",
                "acknowledged_at",
                "source",
            ],
            source,
        )
    )


def complete_since(conn: Connection) -> dt.datetime | None:
    """The instant from which the ledger answers exactly (None: since the first run)."""
    return conn.execute(select(horizon.c.complete_since).where(horizon.c.name == "ledger")).scalar_one_or_none()


def _holds(value: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(
        and_(computations.c.computation_class == "audience", value == TRUE),
        and_(computations.c.computation_class == "trait", value.is_not(None)),
    )


def _latest(at: dt.datetime | None) -> Any:
    """Per destination, key and user: the id of the latest ledger row acknowledged at or before ``at``."""
    stmt = select(func.max(ledger.c.id).label("id")).group_by(
        ledger.c.destination, ledger.c.computation_key, ledger.c.user_id
    )
    if at is not None:
        stmt = stmt.where(ledger.c.acknowledged_at <= at)
    return stmt


def members_at(conn: Connection, key: str, destinations: Sequence[str], at: dt.datetime) -> list[dict[str, Any]]:
    """The users whose acknowledged value of ``key`` at each destination held something at ``at`` (audiences:
    ``true``; traits: a value), with that value and since when they held it. Rows are appended in the order they
    are acknowledged, so the latest row at or before ``at`` is the one with the highest id."""
    latest = _latest(at).where(ledger.c.computation_key == key, ledger.c.destination.in_(list(destinations))).subquery()
    rows = conn.execute(
        select(
            ledger.c.destination,
            ledger.c.user_id,
            ledger.c.new_value.label("value"),
            ledger.c.acknowledged_at.label("since"),
            ledger.c.run_id,
        )
        .select_from(ledger.join(latest, latest.c.id == ledger.c.id))
        .join(computations, computations.c.key == ledger.c.computation_key)
        .where(_holds(ledger.c.new_value))
        .order_by(ledger.c.destination, ledger.c.user_id)
    ).mappings()
    return [{**dict(r), "value": decode(r["value"])} for r in rows]


def known_key(conn: Connection, key: str) -> bool:
    """Whether ``key`` was ever synced (a computation row), configured today or retired."""
    return conn.execute(select(exists().where(computations.c.key == key))).scalar_one()


def user_ledger(conn: Connection, user_id: str) -> list[dict[str, Any]]:
    """Every ledger row of ``user_id`` in the order acknowledged."""
    rows = conn.execute(
        select(
            ledger.c.id,
            ledger.c.destination,
            ledger.c.computation_key,
            ledger.c.old_value,
            ledger.c.new_value,
            ledger.c.run_id,
            ledger.c.diff_id,
            ledger.c.acknowledged_at,
            ledger.c.source,
        )
        .where(ledger.c.user_id == user_id)
        .order_by(ledger.c.id)
    ).mappings()
    return [dict(r) for r in rows]


def fold(engine: Engine, cutoff: dt.datetime, *, dry_run: bool = False) -> int:
    """Fold ledger rows acknowledged before ``cutoff`` into one baseline per user (its latest such row, dropped
    when it holds no value) and move the horizon to ``cutoff``; how many rows were (or would be) deleted. One
    transaction: the ledger answers every instant from the horizon on exactly, before, during and after."""
    later = aliased(ledger)
    superseded = exists().where(
        later.c.destination == ledger.c.destination,
        later.c.computation_key == ledger.c.computation_key,
        later.c.user_id == ledger.c.user_id,
        later.c.id > ledger.c.id,
        later.c.acknowledged_at < cutoff,
    )
    holds_nothing = or_(
        ledger.c.new_value.is_(None),
        and_(
            ledger.c.new_value == "false",
            exists().where(
                computations.c.key == ledger.c.computation_key, computations.c.computation_class == "audience"
            ),
        ),
    )
    # a last row holding nothing may go only if nothing after it in the ledger depends on it: nothing does (a
    # later row carries its own new_value), so the latest row before the cut-off goes when it holds nothing
    doomed = and_(ledger.c.acknowledged_at < cutoff, or_(superseded, holds_nothing))
    with engine.begin() as conn:
        if dry_run:
            return int(conn.execute(select(func.count()).select_from(ledger).where(doomed)).scalar_one())
        deleted = conn.execute(ledger.delete().where(doomed)).rowcount
        current = complete_since(conn)
        if current is None or current < cutoff:
            stmt = upsert(conn, horizon).values(name="ledger", complete_since=cutoff)
            conn.execute(stmt.on_conflict_do_update(index_elements=[horizon.c.name], set_={"complete_since": cutoff}))
        return int(deleted)
