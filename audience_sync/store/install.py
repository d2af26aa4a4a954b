"""The ``install`` table: the one id that tells this state database's messages from every other install's."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, delete, select

from ..errors import StoreError
from .schema import install


def install_id(conn: Connection) -> str:
    """This state database's install id (made by migration 0009 when the database was created or upgraded).

    Raises StoreError when the table does not hold exactly one row: an id made up here would make message ids
    that no earlier run of this install made, and a re-send would no longer dedupe.
    """
    ids = conn.execute(select(install.c.install_id)).scalars().all()
    if len(ids) != 1:
        raise StoreError(
            f"the state database's install table holds {len(ids)} rows instead of one; it names this install in "
            f"every message id: restore it from a backup (or, for a database that no destination has seen yet, "
            f"run `audience-sync db upgrade` on a fresh one)"
        )
    return str(ids[0])


def adopt(conn: Connection, install_id: str, created_at: dt.datetime) -> None:
    """Make ``install_id`` this database's install id, replacing its own (``db copy``: the install moves)."""
    conn.execute(delete(install))
    conn.execute(install.insert().values(install_id=install_id, created_at=created_at))
