"""The audience builder: Engage-style conditions and computed traits from the config, compiled to one SQL
statement per computation (SQLAlchemy Core) over the ``[events]`` and ``[profiles]`` tables of the source.

definitions (the language, validated) -> schema (the source's tables, inspected) -> context, properties,
filters, conditions, traits (SQL expressions) -> compile (one statement) -> source (streamed or pushed down,
like a ``sql`` query) and explain (the SQL, its parameters and the current size).
"""

from __future__ import annotations

from .source import BuilderSource

__all__ = ["BuilderSource"]
