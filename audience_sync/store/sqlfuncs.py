"""SQL functions the set-based statements and the pushed-down loads need, rendered for each backend, and the
Python functions SQLite runs for them (registered on every SQLite connection by ``store/engine.py``)."""

from __future__ import annotations

import decimal
import hashlib
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from ..values import encode
from .normalize import checked_email, checked_user_id


class sha256_hex(FunctionElement[str]):
    """Lowercase hex SHA-256 of a text's UTF-8 bytes; the same digits on PostgreSQL and SQLite."""

    type = String()
    inherit_cache = True
    name = "sha256_hex"


@compiles(sha256_hex, "postgresql")
def _sha256_hex_postgresql(element: sha256_hex, compiler: SQLCompiler, **kw: Any) -> str:
    return f"encode(sha256(convert_to({compiler.process(element.clauses, **kw)}, 'UTF8')), 'hex')"


@compiles(sha256_hex, "sqlite")
def _sha256_hex_sqlite(element: sha256_hex, compiler: SQLCompiler, **kw: Any) -> str:
    return f"as_sha256_hex({compiler.process(element.clauses, **kw)})"


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


# wide enough to add any doubles exactly (their decimals span about 630 digits)
_EXACT = decimal.Context(prec=1000, Emin=-10_000, Emax=10_000)


class ExactSum:
    """``as_exact_sum(x)``, the builder's sum on SQLite: the exact sum of integers and of floats read as the
    decimal of their shortest text (``Decimal(repr(x))``), rounded once: an integer when every value was one,
    else the nearest double. NULLs are skipped; no value gives NULL. PostgreSQL gets the same from ``sum()``
    over ``numeric``."""

    def __init__(self) -> None:
        self.total = decimal.Decimal(0)
        self.floats = False
        self.seen = False

    def step(self, value: Any) -> None:
        if value is None:
            return
        self.seen = True
        if isinstance(value, float):
            self.floats = True
            value = decimal.Decimal(repr(value))
        self.total = _EXACT.add(self.total, decimal.Decimal(value))

    def finalize(self) -> int | float | None:
        if not self.seen:
            return None
        return float(self.total) if self.floats else int(self.total)


def _utf8(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _json_value(value: Any) -> str | None:
    return encode(value)  # an error for values with no JSON form: the statement fails and the run streams


def register_sqlite_functions(dbapi_conn: Any) -> None:
    """Make the functions above callable on a new SQLite connection: ``as_sha256_hex``, the builder's
    ``as_exact_sum``, the pushdown's ``as_user_id``, ``as_email`` and ``as_json_value`` (the streamed path's own
    normalising, :mod:`audience_sync.store.normalize`), and ``as_utf8``, a text's UTF-8 bytes whatever the
    database's encoding (``CAST(text AS BLOB)`` gives the database's own)."""
    dbapi_conn.create_function("as_sha256_hex", 1, _sha256, deterministic=True)
    dbapi_conn.create_aggregate("as_exact_sum", 1, ExactSum)
    dbapi_conn.create_function("as_user_id", 1, checked_user_id, deterministic=True)
    dbapi_conn.create_function("as_email", 1, checked_email, deterministic=True)
    dbapi_conn.create_function("as_json_value", 1, _json_value, deterministic=True)
    dbapi_conn.create_function("as_utf8", 1, _utf8, deterministic=True)
