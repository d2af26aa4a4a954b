"""The diff's rows: the columns every change is written with, and each row's deterministic message id, computed
in SQL exactly as :func:`audience_sync.model.message_id` computes it, from the state database's install id
(``store/install.py``) and the change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, FromClause, Integer, String, cast, func, literal, select

from ..model import SEPARATOR
from .columns import UTCDateTime
from .schema import diffs, utcnow
from .sqlfuncs import sha256_hex

#: the columns of ``diffs`` a change is inserted with, in the order its ``SELECT`` gives them
COLUMNS = [
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
class Target:
    """One destination and computation class of a run: what every change row of it carries."""

    run_id: int
    install_id: str
    destination: str
    computation_class: str
    salt: str
    #: every key of the run for this destination: where to find a user's latest email
    keys: tuple[str, ...] = ()

    def message_id(self, key: Any, user_id: Any, new_value: Any, base_run_id: Any) -> ColumnElement[str]:
        """The SQL expression of a change's message id (``model.message_id``'s value, computed per row)."""
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
        """Insert, as pending, the ``change`` of every row of ``source`` matching ``where``; return how many."""
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
        insert = diffs.insert().from_select(COLUMNS, sel).execution_options(preserve_rowcount=True)
        return conn.execute(insert).rowcount
