"""Turning raw source rows into staged rows: string user ids, clean emails, canonical values.

A row the state database cannot take is not a reason to fail the run, nor to treat the user as gone: the user
is *skipped*, with a reason naming them and the computation (:class:`Skip`), and keeps whatever the destinations
hold. That is a user id or an email with a NUL byte (PostgreSQL text cannot hold one; SQLite could, but both
backends behave the same), a user id longer than ``MAX_USER_ID_BYTES`` (PostgreSQL indexes user ids in
b-trees, whose entries are limited), and a value with no JSON form (NaN, an infinity). The pushdown checks the
same in SQL (``sources/pushdown.py``) and streams a computation that has such a row, so both paths skip alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import Computation
from ..errors import SourceError
from ..store.normalize import email_problem, normal_email, normal_user_id, user_id_problem
from ..store.staging import SkippedUser, StagedRow
from ..values import TRUE, NoJsonForm, encode

RawRow = tuple[Any, Any, Any]  # (user_id, email, value); value is ignored for audiences

#: more rows than this that cannot be used fail the computation instead: that is a broken source, not a few bad
#: users, and it bounds the memory the skipped rows take until they are written
MAX_SKIPPED_ROWS = 10_000
#: how much of a very long user id is shown in a reason (and stored in ``diffs``)
SHOWN_USER_ID_CHARS = 200


@dataclass(frozen=True)
class Skip:
    """A source row that cannot be staged: the user, as the source gave it, and why."""

    user_id: str
    email: str | None  # None when the email itself is the problem
    reason: str
    id_storable: bool = True  # False when the user id itself is the problem

    @property
    def shown_user_id(self) -> str:
        """The user id as it can be shown and stored anywhere: NUL bytes (and backslashes, so that the form is
        unambiguous) escaped, and cut after :data:`SHOWN_USER_ID_CHARS` characters."""
        return shown(self.user_id)

    def row(self) -> SkippedUser:
        """What ``staging_skips`` records of it."""
        return SkippedUser(self.user_id, self.id_storable, self.shown_user_id, self.email, self.reason)


def shown(user_id: str) -> str:
    """``user_id`` with NUL bytes written ``\\x00`` (backslashes doubled if it has any), cut when very long."""
    if "\x00" in user_id:
        user_id = user_id.replace("\\", "\\\\").replace("\x00", "\\x00")
    if len(user_id) > SHOWN_USER_ID_CHARS:
        user_id = user_id[:SHOWN_USER_ID_CHARS] + f"… ({len(user_id)} characters)"
    return user_id


@dataclass
class SourceStats:
    """What a computation's source returned: rows read, rows dropped for a null user id or null value, rows
    skipped because the state database cannot take them."""

    rows: int = 0
    null_user_ids: int = 0
    null_values: int = 0
    #: distinct users staged, when the load knows it without counting (a plain insert of a pushdown)
    members: int | None = None
    #: the skipped rows, one per user (the first reason), in source order
    skips: list[Skip] = field(default_factory=list)
    _skipped_users: set[str] = field(default_factory=set, repr=False)

    def skip(self, comp: Computation, skip: Skip) -> None:
        """Record ``skip`` (once per user); SourceError once more than :data:`MAX_SKIPPED_ROWS` users are."""
        if skip.user_id in self._skipped_users:
            return
        if len(self.skips) >= MAX_SKIPPED_ROWS:
            raise SourceError(
                f"{comp.label}: more than {MAX_SKIPPED_ROWS} users' rows cannot be used (the first: "
                f"{self.skips[0].reason}); fix the source",
                computation=comp.key,
                user_id=self.skips[0].shown_user_id,
            )
        self._skipped_users.add(skip.user_id)
        self.skips.append(skip)


def _skip(
    comp: Computation, stats: SourceStats, uid: str, email: str | None, problem: str, *, id_storable: bool = True
) -> None:
    reason = f"{comp.label}: user {shown(uid)!r}: {problem}; skipped"
    stats.skip(comp, Skip(uid, None if email_problem(email) else email, reason, id_storable))


def normalize(comp: Computation, raw_rows: Iterable[RawRow], stats: SourceStats) -> list[StagedRow]:
    """Staged rows for ``raw_rows``, updating ``stats``.

    Guarantees: user ids are non-empty strings (integers lose no digits, ``7.0`` becomes ``"7"``); rows with a
    null or empty user id are dropped and counted; audience rows carry the value ``true``; trait rows with a
    null value are dropped and counted (null means "no value"). A row the state database cannot take (a NUL
    byte in the user id, or in the email of a row that would be staged, a user id over
    ``MAX_USER_ID_BYTES``, a value with no JSON form) is not staged: it is recorded in ``stats.skips`` with a
    reason naming the computation and the user. Raises SourceError naming the computation and the user when a
    value is of a type JSON has no form for, or when more than :data:`MAX_SKIPPED_ROWS` users are skipped.
    """
    out: list[StagedRow] = []
    is_trait = comp.computation_class == "trait"
    for raw_uid, raw_email, raw_value in raw_rows:
        stats.rows += 1
        uid = normal_user_id(raw_uid)
        if uid is None:
            stats.null_user_ids += 1
            continue
        email = normal_email(raw_email)
        problem = user_id_problem(uid)
        if problem is not None:
            _skip(comp, stats, uid, email, problem, id_storable=False)
            continue
        value = TRUE
        if is_trait:
            try:
                encoded = encode(raw_value)
            except NoJsonForm as exc:
                _skip(comp, stats, uid, email, f"its value: {exc}")
                continue
            except (TypeError, ValueError) as exc:
                raise SourceError(
                    f"{comp.label}: user {uid!r} has a value of unusable type: {exc}",
                    computation=comp.key,
                    user_id=uid,
                ) from None
            if encoded is None:  # no value: whatever the email, the user drops out (an exit goes to the old one)
                stats.null_values += 1
                continue
            value = encoded
        problem = email_problem(email)
        if problem is not None:
            _skip(comp, stats, uid, email, problem)
            continue
        out.append((uid, email, value))
    return out
