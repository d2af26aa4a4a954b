"""SQL functions the set-based statements need, rendered for each backend."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


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


def register_sqlite_functions(dbapi_conn: Any) -> None:
    """Make the functions above callable on a new SQLite connection."""
    dbapi_conn.create_function("as_sha256_hex", 1, _sha256, deterministic=True)
