"""File sources: CSV and Parquet, read in chunks through pandas and pyarrow.

pandas and pyarrow are imported when a file is read, not when the command starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Computation
from ..errors import SourceError
from .columns import locate
from .rows import RawRow


def _fail(comp: Computation, path: Path, reason: str) -> SourceError:
    return SourceError(
        f"{comp.computation_class} {comp.name!r} ({comp.key}): file {str(path)!r}: {reason}",
        computation=comp.key,
    )


def _plain(value: Any) -> Any:
    """pandas' missing markers become None; everything else is left to the value encoder."""
    import pandas as pd

    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _read_csv(comp: Computation, path: Path, chunk_size: int) -> Iterator[list[RawRow]]:
    import pandas as pd

    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise _fail(comp, path, "is empty (expected a header row with user_id)") from None
    uid, email, value = locate(comp, list(header), f"file {str(path)!r}")
    as_text = {header[uid]: "string"} | ({header[email]: "string"} if email is not None else {})
    for frame in pd.read_csv(path, chunksize=chunk_size, dtype=as_text, keep_default_na=True):
        if value is not None:
            frame[header[value]] = frame[header[value]].convert_dtypes()
        columns = [
            frame[header[uid]],
            frame[header[email]] if email is not None else None,
            frame[header[value]] if value is not None else None,
        ]
        n = len(frame)
        cols = [list(c) if c is not None else [None] * n for c in columns]
        yield [(_plain(u), _plain(e), _plain(v)) for u, e, v in zip(*cols, strict=True)]


def _read_parquet(comp: Computation, path: Path, chunk_size: int) -> Iterator[list[RawRow]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    uid, email, value = locate(comp, names, f"file {str(path)!r}")
    wanted = [names[i] for i in (uid, email, value) if i is not None]
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=wanted):
        data = batch.to_pydict()
        n = batch.num_rows
        ids = data[names[uid]]
        emails = data[names[email]] if email is not None else [None] * n
        values = data[names[value]] if value is not None else [None] * n
        yield list(zip(ids, emails, values, strict=True))


def read_file(comp: Computation, chunk_size: int) -> Iterator[list[RawRow]]:
    """Yield the file's rows as ``(user_id, email, value)`` chunks of at most ``chunk_size``.

    ``user_id`` and ``email`` are read as text, so ``007`` keeps its zeros. Raises SourceError naming the
    computation and the file when it is missing, unreadable or lacks a column.
    """
    assert comp.file is not None
    import pandas as pd

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
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _fail(comp, path, f"cannot be read: {' '.join(str(exc).split())}") from None
