"""Canonical encoding of trait values, so that equal values compare equal as text in SQL.

Values are stored as canonical JSON text (sorted keys, no spaces). ``None`` means "no value" and is stored
as SQL NULL, never as the text ``null``. Booleans and numbers stay distinct: ``0`` encodes as ``0`` and
``False`` as ``false``, so the diff never confuses them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]

TRUE = "true"
FALSE = "false"


class NoJsonForm(ValueError):
    """A number JSON cannot write: NaN or an infinity (a float, a ``Decimal``, or one inside a list or object).

    The value is of a usable type, so the user is skipped with this reason; it is not "no value" (NULL is).
    """


def _plain(value: Any) -> Any:
    """Convert database and numpy scalars to plain JSON types; raise NoJsonForm for NaN and infinities,
    TypeError for values of any other type."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            raise NoJsonForm(f"{value!r} has no JSON form (NaN and infinite numbers cannot be sent)")
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise NoJsonForm(f"numeric {value} has no JSON form (NaN and infinite numbers cannot be sent)")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _plain(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return _plain(tolist())
    raise TypeError(f"unsupported value type {type(value).__name__}")


def encode(value: Any) -> str | None:
    """Return the canonical JSON text of ``value``, or None when it means "no value".

    Guarantees: ``encode(a) == encode(b)`` exactly when the values are equal as JSON with their types
    (``0`` and ``False`` differ, ``1`` and ``1.0`` differ), and ``decode(encode(v))`` equals the plain form of
    ``v``. Raises NoJsonForm for NaN and infinite numbers (anywhere in the value), TypeError for values of a type
    JSON has no form for.
    """
    plain = _plain(value)
    if plain is None:
        return None
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_COMMON: dict[str, JsonValue] = {TRUE: True, FALSE: False}


def decode(text: str | None) -> JsonValue:
    """Inverse of :func:`encode`: SQL NULL decodes to None."""
    if text is None:
        return None
    common = _COMMON.get(text)
    if common is not None:
        return common
    result: JsonValue = json.loads(text)
    return result
