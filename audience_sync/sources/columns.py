"""The columns a computation's source must return, and how they are found in a result."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Computation
from ..errors import SourceError

USER_ID = "user_id"
EMAIL = "email"
VALUE = "value"


def locate(comp: Computation, columns: Sequence[str], where: str) -> tuple[int, int | None, int | None]:
    """Positions of ``user_id``, ``email`` (optional) and ``value`` (traits) among ``columns``.

    Names match case-insensitively. Raises SourceError naming the computation, the missing column and the
    columns that were there.
    """
    lowered = [str(c).lower() for c in columns]

    def find(name: str) -> int | None:
        return lowered.index(name) if name in lowered else None

    needed = [USER_ID] + ([VALUE] if comp.computation_class == "trait" else [])
    missing = [name for name in needed if find(name) is None]
    if missing:
        raise SourceError(
            f"{comp.label}: {where} has no "
            f"{' or '.join(repr(m) for m in missing)} column (columns: {', '.join(map(str, columns)) or 'none'})",
            computation=comp.key,
        )
    uid = find(USER_ID)
    assert uid is not None
    return uid, find(EMAIL), find(VALUE) if comp.computation_class == "trait" else None
