"""Turning raw source rows into staged rows: string user ids, clean emails, canonical values."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import Computation
from ..errors import SourceError
from ..store.staging import StagedRow
from ..values import TRUE, encode

RawRow = tuple[Any, Any, Any]  # (user_id, email, value); value is ignored for audiences


@dataclass
class SourceStats:
    """What a computation's source returned: rows read, rows dropped for a null user id or null value."""

    rows: int = 0
    null_user_ids: int = 0
    null_values: int = 0
    #: distinct users staged, when the load knows it without counting (a plain insert of a pushdown)
    members: int | None = None


def _user_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, float):
        if math.isnan(raw):
            return None
        if raw.is_integer():
            return str(int(raw))
    text = str(raw)
    return text if text.strip() else None


def _email(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    text = str(raw).strip()
    return text or None


def normalize(comp: Computation, raw_rows: Iterable[RawRow], stats: SourceStats) -> list[StagedRow]:
    """Staged rows for ``raw_rows``, updating ``stats``.

    Guarantees: user ids are non-empty strings (integers lose no digits, ``7.0`` becomes ``"7"``); rows with a
    null or empty user id are dropped and counted; audience rows carry the value ``true``; trait rows with a
    null value are dropped and counted (null means "no value"). Raises SourceError naming the computation and
    the user when a value has no JSON form.
    """
    out: list[StagedRow] = []
    is_trait = comp.computation_class == "trait"
    for raw_uid, raw_email, raw_value in raw_rows:
        stats.rows += 1
        uid = _user_id(raw_uid)
        if uid is None:
            stats.null_user_ids += 1
            continue
        if not is_trait:
            out.append((uid, _email(raw_email), TRUE))
            continue
        try:
            value = encode(raw_value)
        except (TypeError, ValueError) as exc:
            raise SourceError(
                f"trait {comp.name!r} ({comp.key}): user {uid!r} has a value of unusable type: {exc}",
                computation=comp.key,
                user_id=uid,
            ) from None
        if value is None:
            stats.null_values += 1
            continue
        out.append((uid, _email(raw_email), value))
    return out
