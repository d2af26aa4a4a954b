"""Reading one event property or profile column in SQL, typed the way JSON types it, on SQLite and PostgreSQL.

A :class:`Value` gives, for one property, SQL expressions that are NULL unless the property holds that type:
``number()`` (numbers compare as numbers), ``text()`` (text compares by code point), ``boolean()``; ``present()``
(not null, not absent; always true or false) and ``json()``: the value's canonical JSON text, exactly as
:func:`audience_sync.values.encode` writes the value Python would read (``1`` and ``1.0`` differ, floats as
Python's ``repr``, strings escaped as ``json.dumps`` does; on PostgreSQL floats exact but maybe not canonical,
see below), NULL for null, objects and arrays. ``sort_keys()``
order values as the builder's "smallest" means: booleans (false, true), then numbers by value (an integer
before an equal float), then text by code point.

Where the values come from:
- a JSON column (``[events] properties``): SQLite ``json_type`` / ``json_extract``; PostgreSQL ``->`` / ``->>`` on
  json or jsonb (text is read as json);
- a plain column (``properties = ""``, and profile columns): SQLite by each value's own storage class;
  PostgreSQL by the column's declared type.

Floats have no canonical SQL text form on either backend: SQLite renders them with the Python function
``as_json_value`` registered on every connection audience-sync opens; PostgreSQL with :func:`pg_float_json`,
which is exact but not always Python's shortest form, so a PostgreSQL value that may hold a float is re-encoded
by Python (the computation is streamed, never pushed down).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Boolean, Numeric, Text, and_, bindparam, case, cast, func, literal_column
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, JSON, JSONB
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.elements import ColumnElement


def const(text: str) -> ColumnElement[Any]:
    """A SQL string literal of the builder's own (never a user's value: those are bound)."""
    return literal_column("'" + text.replace("'", "''") + "'", Text)


def number_const(value: int) -> ColumnElement[Any]:
    """A SQL integer literal of the builder's own."""
    return literal_column(str(int(value)), sqltypes.Integer)


def cat(*parts: ColumnElement[Any]) -> ColumnElement[Any]:
    """SQL string concatenation (``||``) of ``parts``."""
    out = parts[0]
    for part in parts[1:]:
        out = out.op("||", return_type=Text)(part)
    return out


def pg_float_json(x: ColumnElement[Any]) -> ColumnElement[Any]:
    """PostgreSQL: the float8 ``x`` as JSON text that Python reads back as the same float.

    PostgreSQL prints a double with digits that read back exactly (``extra_float_digits`` >= 1, the default)
    but not always Python's shortest ones (integral values between 2**53 and 2**63 get 17 digits), and drops
    the ``.0`` of integral values (``3``, ``-0``), which JSON would read as integers: this adds it back. The text
    is exact, not canonical: computations whose values may hold floats are streamed on PostgreSQL, so that
    Python writes them canonically.
    """
    t = cast(x, Text)
    integral = and_(func.strpos(t, const(".")) == number_const(0), func.strpos(t, const("e")) == number_const(0))
    return case((integral, cat(t, const(".0"))), else_=t)


def float_json(dialect: str, x: ColumnElement[Any]) -> ColumnElement[Any]:
    """The double ``x`` as canonical JSON text on ``dialect``."""
    if dialect == "postgresql":
        return pg_float_json(cast(x, DOUBLE_PRECISION))
    return func.as_json_value(cast(x, sqltypes.REAL))


def text_order(dialect: str, x: ColumnElement[Any]) -> ColumnElement[Any]:
    """``x`` compared and sorted by code point (PostgreSQL: ``COLLATE "C"``; SQLite's default already is)."""
    return x.collate("C") if dialect == "postgresql" else x


class Value(Protocol):
    """One property of an event (or column of a profile), typed as JSON types it; see the module docstring."""

    dialect: str

    def present(self) -> ColumnElement[Any]: ...
    def number(self) -> ColumnElement[Any]: ...
    def integral(self) -> ColumnElement[Any]: ...
    def text(self) -> ColumnElement[Any]: ...
    def boolean(self) -> ColumnElement[Any]: ...
    def rank(self) -> ColumnElement[Any]: ...
    def json(self) -> ColumnElement[Any]: ...
    def exact(self) -> ColumnElement[Any]: ...


def sort_keys(v: Value) -> list[ColumnElement[Any]]:
    """ORDER BY terms putting the smallest value first: type (booleans, numbers, text), then the value; for equal
    numbers the integer first."""
    rank = v.rank()
    return [
        rank,
        case((rank == number_const(0), v.boolean())),  # SQLite columns read 1 and 0 as booleans too, in filters only
        v.number(),
        case((v.integral(), number_const(0)), else_=number_const(1)),
        text_order(v.dialect, v.text()),
    ]


class _Typed:
    """Shared by the implementations: ``kind`` is a SQL text naming the value's type, NULL when absent."""

    dialect = ""
    kind: ColumnElement[Any]
    null_kinds: tuple[str, ...] = ()
    bool_kinds: tuple[str, ...] = ()
    number_kinds: tuple[str, ...] = ()
    text_kinds: tuple[str, ...] = ()

    def _is(self, kinds: tuple[str, ...]) -> ColumnElement[Any]:
        return self.kind.in_([const(k) for k in kinds]) if len(kinds) > 1 else self.kind == const(kinds[0])

    def rank(self) -> ColumnElement[Any]:
        whens = [(self._is(self.number_kinds), number_const(1)), (self._is(self.text_kinds), number_const(2))]
        if self.bool_kinds:
            whens.insert(0, (self._is(self.bool_kinds), number_const(0)))
        return case(*whens)


class SqliteJsonProperty(_Typed):
    """SQLite: property ``name`` of a JSON text column, through ``json_type`` and ``json_extract``."""

    dialect = "sqlite"
    bool_kinds = ("true", "false")
    number_kinds = ("integer", "real")
    text_kinds = ("text",)

    def __init__(self, doc: ColumnElement[Any], name: str) -> None:
        # a user's name: bound, quoted as a JSON path key
        path: ColumnElement[Any] = bindparam("property", f'$."{name}"', unique=True)
        self.kind = func.json_type(doc, path)
        self.raw = func.json_extract(doc, path)

    def present(self) -> ColumnElement[Any]:
        return func.coalesce(self.kind, const("null")) != const("null")

    def number(self) -> ColumnElement[Any]:
        return case((self._is(self.number_kinds), self.raw))

    def integral(self) -> ColumnElement[Any]:
        return self.kind == const("integer")

    def text(self) -> ColumnElement[Any]:
        return case((self.kind == const("text"), self.raw))

    def boolean(self) -> ColumnElement[Any]:
        return case((self.kind == const("true"), number_const(1)), (self.kind == const("false"), number_const(0)))

    def json(self) -> ColumnElement[Any]:
        return case(
            (self.kind == const("integer"), cast(self.raw, Text)),
            (self.kind == const("real"), func.as_json_value(self.raw)),
            (self.kind == const("text"), func.json_quote(self.raw)),
            (self._is(self.bool_kinds), self.kind),
        )

    def exact(self) -> ColumnElement[Any]:
        return self.number()


class SqliteColumn(_Typed):
    """SQLite: a plain column, typed by each value's storage class (SQLite has no booleans: 1 and 0 match them)."""

    dialect = "sqlite"
    number_kinds = ("integer", "real")
    text_kinds = ("text",)

    def __init__(self, col: ColumnElement[Any]) -> None:
        self.col = col
        self.kind = func.typeof(col)

    def present(self) -> ColumnElement[Any]:
        return self.col.is_not(None)

    def number(self) -> ColumnElement[Any]:
        return case((self._is(self.number_kinds), self.col))

    def integral(self) -> ColumnElement[Any]:
        return self.kind == const("integer")

    def text(self) -> ColumnElement[Any]:
        return case((self.kind == const("text"), self.col))

    def boolean(self) -> ColumnElement[Any]:
        return case((and_(self.kind == const("integer"), self.col.in_([number_const(0), number_const(1)])), self.col))

    def json(self) -> ColumnElement[Any]:
        return case(
            (self.kind == const("integer"), cast(self.col, Text)),
            (self.kind == const("real"), func.as_json_value(self.col)),
            (self.kind == const("text"), func.json_quote(self.col)),
        )

    def exact(self) -> ColumnElement[Any]:
        return self.number()


def _pg_exact_float(text: ColumnElement[Any]) -> ColumnElement[Any]:
    """The decimal of the text PostgreSQL prints for the double ``text`` reads as (``float8`` to ``numeric`` keeps
    only 15 digits); the shortest one, as Python's ``repr``, except for integral doubles above 2**53."""
    return cast(cast(cast(text, DOUBLE_PRECISION), Text), Numeric)


class PgJsonProperty(_Typed):
    """PostgreSQL: property ``name`` of a json or jsonb column (a text column is read as json)."""

    dialect = "postgresql"
    bool_kinds = ("boolean",)
    number_kinds = ("number",)
    text_kinds = ("string",)

    def __init__(self, doc: ColumnElement[Any], name: str, column_type: Any) -> None:
        key: ColumnElement[Any] = bindparam("property", name, unique=True)
        if isinstance(column_type, sqltypes.String):
            doc = cast(doc, JSON)
        is_jsonb = isinstance(column_type, JSONB)
        node = doc.op("->", return_type=JSONB if is_jsonb else JSON)(key)
        self.kind = (func.jsonb_typeof if is_jsonb else func.json_typeof)(node)
        self.raw = doc.op("->>", return_type=Text)(key)

    def present(self) -> ColumnElement[Any]:
        return func.coalesce(self.kind, const("null")) != const("null")

    def number(self) -> ColumnElement[Any]:
        return case((self.kind == const("number"), cast(self.raw, Numeric)))

    def integral(self) -> ColumnElement[Any]:
        # json.loads reads a number with a point or an exponent as a float, any other as an int
        return and_(self.kind == const("number"), self.raw.op("!~")(const("[.eE]")))

    def text(self) -> ColumnElement[Any]:
        return case((self.kind == const("string"), self.raw))

    def boolean(self) -> ColumnElement[Any]:
        return case((self.kind == const("boolean"), cast(self.raw, Boolean)))

    def json(self) -> ColumnElement[Any]:
        return case(
            (self.integral(), cast(cast(self.raw, Numeric), Text)),
            (self.kind == const("number"), pg_float_json(cast(self.raw, DOUBLE_PRECISION))),
            (self.kind == const("string"), cast(func.to_json(self.raw), Text)),
            (self.kind == const("boolean"), self.raw),
        )

    def exact(self) -> ColumnElement[Any]:
        return self.number()  # the number exactly as the JSON writes it


class PgColumn:
    """PostgreSQL: a plain column, typed by its declared type (as psycopg hands it to Python): integers, floats,
    numerics (integral ones as integers, as :func:`audience_sync.values.encode` does), booleans, text; any
    other type is read as its text."""

    dialect = "postgresql"

    def __init__(self, col: ColumnElement[Any], column_type: Any) -> None:
        self.col = col
        if isinstance(column_type, sqltypes.Boolean):
            self.kind = "boolean"
        elif isinstance(column_type, sqltypes.Integer):
            self.kind = "integer"
        elif isinstance(column_type, sqltypes.Float):
            self.kind = "float"
        elif isinstance(column_type, sqltypes.Numeric):
            self.kind = "numeric"
        else:
            self.kind = "text" if isinstance(column_type, sqltypes.String) else "other"

    def _when(self, kinds: tuple[str, ...], expr: ColumnElement[Any]) -> ColumnElement[Any]:
        return expr if self.kind in kinds else cast(literal_column("NULL"), expr.type)

    def present(self) -> ColumnElement[Any]:
        return self.col.is_not(None)

    def number(self) -> ColumnElement[Any]:
        return self._when(("integer", "float", "numeric"), cast(self.col, Numeric))

    def integral(self) -> ColumnElement[Any]:
        if self.kind == "numeric":
            return self.col == func.trunc(self.col)
        return literal_column("true" if self.kind == "integer" else "false", Boolean)

    def text(self) -> ColumnElement[Any]:
        return self._when(("text", "other"), cast(self.col, Text))

    def boolean(self) -> ColumnElement[Any]:
        return self._when(("boolean",), cast(self.col, Boolean))

    def rank(self) -> ColumnElement[Any]:
        rank = {"boolean": 0, "integer": 1, "float": 1, "numeric": 1}.get(self.kind, 2)
        return case((self.col.is_not(None), number_const(rank)))

    def json(self) -> ColumnElement[Any]:
        if self.kind == "integer":
            return cast(self.col, Text)
        if self.kind == "float":
            return pg_float_json(cast(self.col, DOUBLE_PRECISION))
        if self.kind == "numeric":
            return case(
                (self.integral(), cast(func.trunc(self.col), Text)),
                else_=pg_float_json(cast(self.col, DOUBLE_PRECISION)),
            )
        if self.kind == "boolean":
            return case((self.col, const("true")), (~self.col, const("false")))
        return cast(func.to_json(cast(self.col, Text)), Text)

    def exact(self) -> ColumnElement[Any]:
        if self.kind == "integer":
            return cast(self.col, Numeric)
        if self.kind == "float":
            return _pg_exact_float(cast(self.col, Text))
        return case((self.integral(), cast(self.col, Numeric)), else_=_pg_exact_float(cast(self.col, Text)))
