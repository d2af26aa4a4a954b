"""Statements on the snapshot (what each destination was last told), shared by the steps that write it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, select

from .dialect import upsert
from .schema import diffs, snapshot


def upsert_snapshot(
    conn: Connection,
    values: dict[str, Any],
    rows: Sequence[ColumnElement[bool]],
    on_conflict: Callable[[Any], dict[str, Any]],
) -> None:
    """The one skeleton of the snapshot's upserts from the outbox: ``INSERT INTO snapshot (key, <values>) SELECT
    <key>, <values> FROM diffs WHERE <rows> ON CONFLICT (key) DO UPDATE SET <on_conflict(excluded)>``, the key
    being a change's (destination, computation_key, user_id). One statement, however many rows ``rows`` selects."""
    key = {"destination": diffs.c.destination, "computation_key": diffs.c.computation_key, "user_id": diffs.c.user_id}
    columns = {**key, **values}
    stmt = upsert(conn, snapshot)
    stmt = stmt.from_select(list(columns), select(*columns.values()).where(*rows))
    stmt = stmt.on_conflict_do_update(
        index_elements=[snapshot.c.destination, snapshot.c.computation_key, snapshot.c.user_id],
        set_=on_conflict(stmt.excluded),
    )
    conn.execute(stmt)
