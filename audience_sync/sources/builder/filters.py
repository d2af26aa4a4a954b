"""Property filters (``where``) and trait conditions as SQL predicates that are always true or false, never NULL.

Semantics, identical on SQLite and PostgreSQL:
- the filter's value picks the comparison: a number compares the property as a number, a string as text (by
  code point), a boolean as a boolean; a property of another type fails (``!=`` passes it: it is not equal);
- ``contains`` is a case-insensitive substring test on text (letters A-Z match either case; other characters
  match as written, on both backends alike);
- ``in`` passes when ``=`` passes for one of the listed values;
- a null or absent property passes only ``not_exists``; it fails every other operator, ``!=`` included.

Every value from the config is a bound parameter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, String, and_, bindparam, false, func, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from .condition_models import Filter, Scalar
from .properties import Value, number_const, text_order

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``text`` with A-Z lowered and nothing else changed: what SQL's ``lower`` does on both backends here."""
    return text.translate(_ASCII_LOWER)


def _sql_type(value: Scalar) -> Any:
    """The bound type of a filter value: integers as bigint, floats as double (never rounded to an integer)."""
    if isinstance(value, bool):
        return Boolean()
    if isinstance(value, int):
        return BigInteger()
    return Float() if isinstance(value, float) else String()


def _bind(value: Scalar) -> ColumnElement[Any]:
    return bindparam("value", value, type_=_sql_type(value), unique=True)


def _definite(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """NULL (a property of another type) counts as false, so that ``not`` and ``!=`` stay complements."""
    return func.coalesce(expr, false())


def _typed(v: Value, value: Scalar) -> ColumnElement[Any]:
    """The property read as the type of ``value``."""
    if isinstance(value, bool):
        return v.boolean()
    if isinstance(value, int | float):
        return v.number()
    return text_order(v.dialect, v.text())


def _equals(v: Value, value: Scalar) -> ColumnElement[Any]:
    return _definite(_typed(v, value) == _bind(value))


def _contains(v: Value, value: str) -> ColumnElement[Any]:
    text = text_order(v.dialect, v.text())
    needle = _bind(ascii_lower(value))
    if v.dialect == "postgresql":
        position = func.strpos(func.lower(text), needle)
    else:
        position = func.instr(func.lower(text), needle)
    return _definite(position > number_const(0))


def _one_of(v: Value, values: tuple[Scalar, ...]) -> ColumnElement[Any]:
    groups: dict[str, list[Scalar]] = {}
    for item in values:
        groups.setdefault(type(item).__name__, []).append(item)  # bool, int, float, str: one bound type each
    tests = [
        _definite(
            _typed(v, items[0]).in_(bindparam("values", items, type_=_sql_type(items[0]), expanding=True, unique=True))
        )
        for items in groups.values()
    ]
    return or_(*tests) if len(tests) > 1 else tests[0]


def filter_expr(v: Value, flt: Filter) -> ColumnElement[Any]:
    """The predicate ``flt`` applies to the value ``v``: true or false for every row, never NULL."""
    op, value = flt.op, flt.value
    if op == "exists":
        return v.present()
    if op == "not_exists":
        return not_(v.present())
    if op == "in":
        assert isinstance(value, tuple)
        return _one_of(v, value)
    assert value is not None and not isinstance(value, tuple)
    if op == "=":
        return _equals(v, value)
    if op == "!=":
        return and_(v.present(), not_(_equals(v, value)))
    if op == "contains":
        assert isinstance(value, str)
        return _contains(v, value)
    typed, bound = _typed(v, value), _bind(value)
    comparisons = {"<": typed < bound, "<=": typed <= bound, ">": typed > bound, ">=": typed >= bound}
    return _definite(comparisons[op])
