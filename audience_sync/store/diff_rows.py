"""The diff's rows: the columns every change is written with, and each row's deterministic message id, computed
in SQL exactly as :func:`audience_sync.model.message_id` computes it, from the state database's install id
(``store/install.py``) and the change. Several kinds of change over one source go in one statement, the kind
chosen per row (:meth:`Target.insert`), so that the source is read once.
"""

from __future__ import annotations

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
    func,
    literal,
    or_,
    select,
    true,
)

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

    def _insert(
        self,
        conn: Connection,
        kind: ColumnElement[str],
        columns: dict[str, Any],
        source: FromClause,
        where: Sequence[ColumnElement[bool]],
    ) -> int:
        """Insert, as pending, the change ``kind`` gives (per row) of every row of ``source`` matching ``where``, with
        ``columns`` (key, user_id, email, old, new, base); return how many."""
        key, user_id, new, base = columns["key"], columns["user_id"], columns["new"], columns["base"]
        sel = (
            select(
                literal(self.run_id, BigInteger),
                literal(self.destination, String),
                key,
                literal(self.computation_class, String),
                user_id,
                columns["email"],
                kind,
                columns["old"],
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

    def insert(
        self,
        conn: Connection,
        kinds: Sequence[tuple[str, Sequence[ColumnElement[bool]]]],
        *,
        key: Any,
        user_id: Any,
        email: Any,
        old: Any,
        new: Any,
        base: Any,
        source: FromClause,
        where: Sequence[ColumnElement[bool]],
    ) -> Counter[str]:
        """Insert, as pending, in one statement, a change of every row of ``source`` matching ``where`` and the
        conditions of one of ``kinds`` (a kind and its conditions, all of which must hold); return how many of each
        kind. A row matching the conditions of several kinds gets the first: callers give mutually exclusive ones,
        so that each row is the change that kind's own ``INSERT ... WHERE`` would have written. Every kind sends
        ``new``.
        """
        columns = {"key": key, "user_id": user_id, "email": email, "old": old, "new": new, "base": base}
        if len(kinds) == 1:  # one kind: nothing to choose per row, and the row count is its count
            kind, conds = kinds[0]
            return Counter({kind: self._insert(conn, literal(kind, String), columns, source, [*where, *conds])})
        tests = [(and_(*conds) if conds else true(), kind) for kind, conds in kinds]
        change = case(*((test, literal(kind, String)) for test, kind in tests))
        # the rows this statement writes are the run's rows of this destination and class above the highest id
        # now: ids only grow, and no other statement writes this run's changes meanwhile
        before = conn.execute(select(func.coalesce(func.max(diffs.c.id), 0))).scalar_one()
        chosen = or_(*(test for test, _ in tests))  # exactly the rows some kind's own statement would write
        written = self._insert(conn, change, columns, source, [*where, chosen])
        if written == 0:
            return Counter()
        counts = conn.execute(
            select(diffs.c.change, func.count())
            .where(
                diffs.c.id > before,
                diffs.c.run_id == self.run_id,
                diffs.c.destination == self.destination,
                diffs.c.computation_class == self.computation_class,
            )
            .group_by(diffs.c.change)
        )
        return Counter({kind: int(n) for kind, n in counts})
