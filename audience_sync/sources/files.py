"""File sources: CSV and Parquet, read in chunks through pyarrow, as written.

Nothing is guessed from the data, so a file yields the same values whatever the chunk size and whatever the
other rows say:

- CSV has no types: every field is read as the exact text between its delimiters (``NA``, ``null``, ``None``,
  ``nan``, ``N/A``, ``02134`` and `` x `` stay those strings). An empty field is the only "no value": an empty
  ``user_id`` is a missing id (dropped and counted), an empty ``email`` no email, an empty trait ``value`` no
  value. A trait's values are text unless its ``value_type`` says ``number``, ``boolean`` or ``json``.
- Parquet has types, and the column's declared type decides: values keep theirs (integers, floats, booleans,
  strings, lists, structs, timestamps). Ids and emails must be text or integers (integers as their decimal
  text); any other type has no faithful text form and is a SourceError naming the file, the column and the type.

pyarrow is imported when a file is read, not when the command starts.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import Computation, ValueType
from ..errors import SourceError
from .columns import locate
from .rows import RawRow

#: a number as ``value_type = "number"`` reads it: optional sign, digits with an optional fraction, exponent
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_BOOLEANS = {"true": True, "false": False}


def _fail(comp: Computation, path: Path, reason: str, user_id: str | None = None) -> SourceError:
    return SourceError(
        f"{comp.label}: file {str(path)!r}: {reason}",
        computation=comp.key,
        user_id=user_id,
    )


def _number(text: str) -> int | float:
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueError("is not a number")
    if "." not in text and match.group(1) is None:
        return int(text)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("is too large for a number")
    return value


def _boolean(text: str) -> bool:
    value = _BOOLEANS.get(text.lower())
    if value is None:
        raise ValueError("is not true or false")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"is not JSON ({name} is not a JSON number)")


def _json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON ({exc.msg})") from None


#: ``value_type`` -> how a non-empty CSV field becomes the value (ValueError saying why it cannot)
_CONVERTERS: dict[ValueType, Callable[[str], Any]] = {
    "text": lambda text: text,
    "number": _number,
    "boolean": _boolean,
    "json": _json,
}


def _csv_header(comp: Computation, path: Path) -> list[str]:
    """The names in the file's first record (a UTF-8 byte order mark is not part of the first name)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise _fail(comp, path, "is empty (expected a header row with user_id)")
    return header


def _read_csv(comp: Computation, path: Path, chunk_size: int) -> Iterator[list[RawRow]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(comp, path)
    uid, email, value = locate(comp, header, f"file {str(path)!r}")
    wanted = [header[i] for i in (uid, email, value) if i is not None]
    reader = pacsv.open_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        # every field as its exact text: no type inference, no null markers; an empty field is ""
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in wanted},
            include_columns=wanted,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    convert = _CONVERTERS[comp.value_type or "text"]
    row = 0  # data rows read so far (the header is not counted), for messages
    for batch in reader:
        ids = batch.column(header[uid]).to_pylist()
        emails = batch.column(header[email]).to_pylist() if email is not None else [None] * len(ids)
        if value is None:
            values: list[Any] = [None] * len(ids)
        else:
            values = []
            for i, text in enumerate(batch.column(header[value]).to_pylist()):
                if text == "":
                    values.append(None)  # an empty field: CSV's only way to say "no value"
                    continue
                try:
                    values.append(convert(text))
                except ValueError as exc:
                    raise _fail(
                        comp,
                        path,
                        f"row {row + i + 1} (user {ids[i]!r}): value {text!r} {exc} (value_type = {comp.value_type!r})",
                        user_id=ids[i],
                    ) from None
        for start in range(0, len(ids), chunk_size):
            end = start + chunk_size
            yield list(zip(ids[start:end], emails[start:end], values[start:end], strict=True))
        row += len(ids)


def _text_like(kind: Any) -> bool:
    """Whether a Parquet column of this Arrow type has a faithful text form as an id (text or an integer)."""
    import pyarrow.types as pat

    if pat.is_dictionary(kind):
        return _text_like(kind.value_type)
    return bool(
        pat.is_integer(kind)
        or pat.is_string(kind)
        or pat.is_large_string(kind)
        or getattr(pat, "is_string_view", lambda _: False)(kind)  # pyarrow >= 16
        or pat.is_null(kind)  # every row is null: every id is missing
    )


def _read_parquet(comp: Computation, path: Path, chunk_size: int) -> Iterator[list[RawRow]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    names = schema.names
    uid, email, value = locate(comp, names, f"file {str(path)!r}")
    for index in (uid, email):
        if index is not None and not _text_like(schema.field(index).type):
            raise _fail(
                comp,
                path,
                f"column {names[index]!r} has type {schema.field(index).type}, which has no faithful text form "
                f"for an id or email: write it as text (string) or integers (pandas: .astype(str) or "
                f".astype('Int64'))",
            )
    wanted = [names[i] for i in (uid, email, value) if i is not None]
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=wanted):
        data = batch.to_pydict()
        n = batch.num_rows
        ids = data[names[uid]]
        emails = data[names[email]] if email is not None else [None] * n
        values = data[names[value]] if value is not None else [None] * n
        yield list(zip(ids, emails, values, strict=True))


def read_file(comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
    """Yield the file's rows as ``(user_id, email, value)`` chunks of at most ``chunk_size``, read as written.

    Guarantees: the same file yields the same rows and values whatever ``chunk_size``; CSV fields are their
    exact text (a trait's value converted by its ``value_type``, an empty field None); Parquet values keep
    their declared types. Raises SourceError naming the computation and the file when it is missing,
    unreadable, lacks a column, has an id or email column of a type with no faithful text form, or has a
    CSV value its ``value_type`` cannot read (naming the row and the user).
    """
    assert comp.file is not None
    path = Path(comp.file)
    if not path.is_file():
        raise _fail(comp, path, "not found" if not path.exists() else "is not a file")
    try:
        if path.suffix.lower() == ".csv":
            yield from _read_csv(comp, path, chunk_size)
        else:
            yield from _read_parquet(comp, path, chunk_size)
    except SourceError:
        raise
    except (OSError, ValueError, csv.Error) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise _fail(comp, path, f"cannot be read: {' '.join(str(exc).split())}") from None
