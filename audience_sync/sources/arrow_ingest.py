"""Landing Arrow record batches: a computation's rows, as an Arrow-native driver hands them back, moved into the
state database so that the pushdown stages exactly what streaming the same rows would.

Streaming gets the Python objects a driver returns (``int``, ``Decimal``, ``float``, ``datetime`` with its
``tzinfo``, ``date``, ``list``, ``None``, ...) and normalises them in Python (``rows.py``, ``values.py``).
Here each used column of a batch is rendered, in Arrow, as the text streaming would make of those objects, and
landed as text (``store/landing.py``): the user id as ``str()`` gives it, the email as given, the value as its
canonical JSON (:func:`audience_sync.values.encode`), which the pushdown then takes as it is
(``pushdown.plan_table(..., value_is_json=True)``). Blank ids and emails are trimmed, and ids too long or with
a NUL byte found, by the pushdown's SQL, as for any landed table.

Rendered with Arrow compute functions (no Python per row):

- integers of every width, signed or not (beyond int64 too), and decimals of scale 0 (Snowflake's
  ``NUMBER(38,0)``, DuckDB's ``HUGEINT``): their digits, as ids or as values;
- booleans: ``true`` / ``false``; strings (also large, view, dictionary-encoded): JSON-quoted, escaping
  ``"``, ``\\`` and control characters exactly as ``json.dumps`` does;
- dates (``date32``, ``date64``) and timestamps of any unit, with or without a time zone: ``isoformat()``'s
  text (microseconds only when not zero, the offset of the column's zone at that instant, seconds in the
  offset when it has any, as for historic local mean times);
- null-typed columns, and emails that are all null whatever their type: no value.

Rendered per batch with :func:`audience_sync.values.encode`, in Python, because no Arrow function writes them
as Python does: floats (``repr``'s shortest form), decimals of another scale (``float(Decimal)`` unless
integral), and lists of scalars (canonical JSON arrays).

Not landable (:class:`NotLandable`: the computation is streamed, and whatever streaming says of its rows is
said): a float NaN or infinity (streaming skips that user, and says why), a timestamp with a non-zero part
below the microsecond (a Python ``datetime`` cannot hold it, so what a driver gives is its own choice), a
date or timestamp outside years 1 to 9999, ids of any type but integers, decimals of scale 0 and strings,
emails of any type but strings, and values of any other type (binary, structs, maps, times, durations,
extension types such as PostgreSQL's opaque ``numeric``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection

from ..config import Computation
from ..store import landing
from ..store.dialect import is_postgresql
from ..values import NoJsonForm, encode
from .columns import locate


class NotLandable(Exception):
    """The computation's rows cannot be landed (a column type, a column missing): stream them instead."""


def used_columns(comp: Computation, names: Sequence[str]) -> list[tuple[str, int]]:
    """The landed names of the columns ``comp`` uses and their positions among the query's ``names``.

    NotLandable when a required column is missing (the streamed path then reports it in its own words).
    """
    from ..errors import SourceError

    try:
        found = locate(comp, list(names), "the query")
    except SourceError as exc:  # said again, in the same words, by the streamed path
        raise NotLandable(str(exc)) from None
    return [(canonical, i) for canonical, i in zip(landing.COLUMNS, found, strict=True) if i is not None]


# JSON string escapes, as json.dumps(ensure_ascii=False) writes them (the backslash first)
_ESCAPES = [("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f")]
_ESCAPES += [(chr(c), f"\\u{c:04x}") for c in range(0x20) if chr(c) not in "\n\r\t\b\f"]
_NEEDS_ESCAPE = '[\\x00-\\x1f"\\\\]'


def _pa() -> Any:
    import pyarrow

    return pyarrow


def _pc() -> Any:
    import pyarrow.compute

    return pyarrow.compute


def _plain(array: Any) -> Any:
    """``array`` without dictionary encoding, its strings as ``string``."""
    pa = _pa()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type) or getattr(pa.types, "is_string_view", lambda _t: False)(array.type):
        array = array.cast(pa.string())
    return array


def _is_integer_text(t: Any) -> bool:
    """An Arrow type whose values' digits are what ``str()`` of the Python ``int`` would give."""
    pa = _pa()
    return bool(pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0))


def _quoted(text: Any) -> Any:
    return _pc().binary_join_element_wise('"', text, '"', "")


def _json_string(array: Any) -> Any:
    pc = _pc()
    if pc.any(pc.match_substring_regex(array, _NEEDS_ESCAPE)).as_py():
        for char, escaped in _ESCAPES:
            array = pc.replace_substring(array, char, escaped)
    return _quoted(array)


def _check_years(comp: Computation, name: str, years: Any) -> None:
    pc = _pc()
    low, high = pc.min_max(years).values()
    if low.is_valid and (low.as_py() < 1 or high.as_py() > 9999):
        raise NotLandable(f"column {name!r} has a date outside the years 1 to 9999 ({comp.key})")


def _pad(numbers: Any, width: int) -> Any:
    pa, pc = _pa(), _pc()
    return pc.utf8_lpad(numbers.cast(pa.string()), width=width, padding="0")


def _timestamps(comp: Computation, name: str, array: Any) -> Any:
    """``datetime.isoformat()`` of each timestamp, in the column's time zone."""
    pa, pc = _pa(), _pc()
    tz = array.type.tz
    try:
        micros = array.cast(pa.timestamp("us", tz))  # safe: fails when a nanosecond part would be lost
    except pa.ArrowInvalid:
        raise NotLandable(f"column {name!r} has timestamps finer than a microsecond ({comp.key})") from None
    local = pc.local_timestamp(micros) if tz else micros
    _check_years(comp, name, pc.year(local))
    seconds = pc.floor_temporal(local, unit="second")
    text = pc.strftime(seconds.cast(pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%S")
    fraction = pc.subtract(local.cast(pa.int64()), seconds.cast(pa.int64()))
    text = pc.if_else(pc.equal(fraction, 0), text, pc.binary_join_element_wise(text, _pad(fraction, 6), "."))
    if not tz:
        return text
    offset = pc.divide(pc.subtract(local.cast(pa.int64()), micros.cast(pa.int64())), 1_000_000)
    size = pc.abs(offset)
    hours = pc.divide(size, 3600)
    minutes = pc.divide(pc.subtract(size, pc.multiply(hours, 3600)), 60)
    rest = pc.subtract(pc.subtract(size, pc.multiply(hours, 3600)), pc.multiply(minutes, 60))
    sign = pc.if_else(pc.less(offset, 0), "-", "+")
    zone = pc.binary_join_element_wise(sign, _pad(hours, 2), ":", _pad(minutes, 2), "")
    zone = pc.if_else(pc.equal(rest, 0), zone, pc.binary_join_element_wise(zone, _pad(rest, 2), ":"))
    return pc.binary_join_element_wise(text, zone, "")


def _dates(comp: Computation, name: str, array: Any) -> Any:
    pa, pc = _pa(), _pc()
    days = array.cast(pa.date32())
    _check_years(comp, name, pc.year(days))
    return days.cast(pa.string())


def _scalar_list_item(t: Any) -> bool:
    pa = _pa()
    if pa.types.is_timestamp(t):
        return bool(t.unit != "ns")  # Python objects of nanosecond timestamps are not datetimes
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date(t)
        or pa.types.is_null(t)
    )


def _encoded(comp: Computation, name: str, array: Any) -> Any:
    """Each value's canonical JSON, written by :func:`encode` (per value, in Python)."""
    pa = _pa()
    try:
        return pa.array([None if v is None else encode(v) for v in array.to_pylist()], type=pa.string())
    except NoJsonForm:
        raise NotLandable(f"column {name!r} has a value with no JSON form: streamed, to report it") from None
    except (TypeError, ValueError) as exc:
        raise NotLandable(f"column {name!r}: {exc}") from None


def _value_json(comp: Computation, name: str, array: Any) -> Any:
    """The canonical JSON text of each value of ``array``, as :func:`encode` writes the Python object."""
    pa, pc = _pa(), _pc()
    array = _plain(array)
    t = array.type
    if pa.types.is_null(t):
        return pa.nulls(len(array), pa.string())
    if pa.types.is_boolean(t):
        return pc.if_else(array, "true", "false")
    if _is_integer_text(t):
        return array.cast(pa.string())
    if pa.types.is_string(t):
        return _json_string(array)
    if pa.types.is_date(t):
        return _quoted(_dates(comp, name, array))
    if pa.types.is_timestamp(t):
        return _quoted(_timestamps(comp, name, array))
    if pa.types.is_floating(t):
        if pc.any(pc.invert(pc.is_finite(array))).as_py():
            raise NotLandable(f"column {name!r} has a NaN or an infinity ({comp.key}): streamed, to report it")
        return _encoded(comp, name, array)
    if pa.types.is_decimal(t):
        return _encoded(comp, name, array)
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _scalar_list_item(t.value_type):
        return _encoded(comp, name, array)
    raise NotLandable(f"column {name!r} has Arrow type {t}, which is not landed")


def _id_text(comp: Computation, name: str, array: Any) -> Any:
    pa = _pa()
    array = _plain(array)
    t = array.type
    if pa.types.is_null(t) or _is_integer_text(t):
        return array.cast(pa.string())
    if pa.types.is_string(t):
        return array
    raise NotLandable(f"column {name!r} has Arrow type {t}, which is not landed as a user id")


def _email_text(comp: Computation, name: str, array: Any) -> Any:
    pa = _pa()
    array = _plain(array)
    if array.null_count == len(array):  # no email at all, whatever type a driver gave the column (SQLite: int64)
        return pa.nulls(len(array), pa.string())
    if pa.types.is_string(array.type):
        return array
    raise NotLandable(f"column {name!r} has Arrow type {array.type}, which is not landed as an email")


_RENDER: dict[str, Callable[[Computation, str, Any], Any]] = {
    "user_id": _id_text,
    "email": _email_text,
    "value": _value_json,
}


def rendered(comp: Computation, names: Sequence[str], batches: Iterable[Any]) -> Iterator[Any]:
    """Each of ``batches`` (columns ``names``) as a record batch of the landed columns, all text: the user id,
    the email and the value's canonical JSON. NotLandable as the module says."""
    pa = _pa()
    used = used_columns(comp, names)
    landed = [canonical for canonical, _ in used]
    for batch in batches:
        columns = [_RENDER[canonical](comp, names[i], batch.column(i)) for canonical, i in used]
        yield pa.record_batch(columns, names=landed)


def land(conn: Connection, comp: Computation, names: Sequence[str], batches: Iterable[Any], via: str) -> landing.Landed:
    """Land ``batches`` (Arrow record batches whose columns are ``names``: the query's) on ``conn`` (the state,
    inside a transaction): ``COPY`` of their CSV form on PostgreSQL, one ``executemany`` per batch on SQLite.

    Returns the rows landed, their values as canonical JSON, read ``via`` (what read the batches, for the log).
    NotLandable (before or while landing) when a used column's type or a value cannot be rendered as streaming
    would; the driver's error when the state refuses the data (PostgreSQL: a NUL byte in a text).
    """
    import pyarrow.csv

    used = used_columns(comp, names)
    postgres = is_postgresql(conn)
    landed = [canonical for canonical, _ in used]
    landing.create(conn, [(c, "text" if postgres else "") for c in landed])
    batches_out = rendered(comp, names, batches)
    rows = 0
    if postgres:
        options = pyarrow.csv.WriteOptions(include_header=False)  # text quoted, NULL unquoted and empty

        def blocks() -> Iterator[bytes]:
            nonlocal rows
            for batch in batches_out:
                rows += batch.num_rows
                out = io.BytesIO()
                pyarrow.csv.write_csv(batch, out, options)
                yield out.getvalue()

        landing.copy_blocks(conn, landed, blocks(), csv=True)
    else:
        rows = insert_batches(conn, landed, batches_out)
    return landing.Landed(rows, via, value_is_json=True)


def insert_batches(conn: Connection, names: list[str], batches: Iterable[Any]) -> int:
    """SQLite: land Arrow ``batches`` (columns ``names``) column by column in one ``executemany`` per batch;
    return the rows landed."""
    rows = 0

    def columns() -> Iterator[list[list[Any]]]:
        nonlocal rows
        for batch in batches:
            rows += batch.num_rows
            yield [column.to_pylist() for column in batch.columns]

    landing.insert_columns(conn, names, columns())
    return rows
