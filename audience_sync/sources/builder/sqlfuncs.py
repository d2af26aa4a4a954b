"""The Python function SQLite runs for the builder: an exact sum (registered on every SQLite connection)."""

from __future__ import annotations

import decimal
from typing import Any

# wide enough to add any doubles exactly (their decimals span about 630 digits)
_EXACT = decimal.Context(prec=1000, Emin=-10_000, Emax=10_000)


class ExactSum:
    """``as_exact_sum(x)``: the exact sum of integers and of floats read as the decimal of their shortest text
    (``Decimal(repr(x))``), rounded once: an integer when every value was one, else the nearest double. NULLs
    are skipped; no value gives NULL. PostgreSQL gets the same from ``sum()`` over ``numeric``."""

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


def register_builder_functions(dbapi_conn: Any) -> None:
    """Make ``as_exact_sum`` callable from SQL on a new SQLite connection."""
    dbapi_conn.create_aggregate("as_exact_sum", 1, ExactSum)
