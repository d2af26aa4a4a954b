"""``audience-sync explain KEY``: a builder computation's compiled SQL, its parameters, and its size as of an
instant, computed on the source without touching the state database."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import distinct, func, select

from ...errors import ConfigError
from ...store.engine import create_source_engine
from .source import BuilderSource
from .windows import as_utc

if TYPE_CHECKING:
    from ...config import Config


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def explain(config: Config, key: str, as_of: dt.datetime | None = None) -> dict[str, Any]:
    """What the builder runs for ``key`` as of ``as_of`` (default: now) and how many users it yields.

    Returns ``key, name, class, as_of, dialect, sql, parameters, size`` (members of an audience, users with a
    value of a trait). ConfigError when ``key`` is unknown or not a builder computation; SourceError when the
    source lacks a table or column it names, or the statement fails.
    """
    comp = config.computation(key)
    if comp.builder is None:
        kind = "sql" if comp.sql is not None else "file"
        raise ConfigError(
            f"{config.path}: {comp.key!r} is a `{kind}` {comp.computation_class}: explain shows builder "
            f"computations (with `condition` or `compute`)",
            path=config.path,
        )
    instant = as_utc(as_of or dt.datetime.now(dt.UTC))
    source = create_source_engine(config.source_url)
    try:
        builder = BuilderSource(config, source, [comp], instant)
        sql = builder.sql(comp)
        rows = builder.statement(comp).subquery("computed")
        count = select(func.count(distinct(rows.c.user_id))).where(rows.c.user_id.is_not(None))
        size = builder.scalar(comp, count)
    finally:
        source.dispose()
    return {
        "key": comp.key,
        "name": comp.name,
        "class": comp.computation_class,
        "as_of": instant.isoformat(),
        "dialect": builder.check().dialect,
        "sql": sql.text,
        "parameters": {name: _plain(value) for name, value in sql.params.items()},
        "size": size,
    }


def explain_text(result: dict[str, Any]) -> str:
    """The explanation for people: the statement, then its parameters, then the size."""
    what = "members" if result["class"] == "audience" else "users with a value"
    lines = [
        f"-- {result['class']} {result['name']!r} ({result['key']}) as of {result['as_of']} on {result['dialect']}",
        result["sql"].rstrip() + ";",
        "-- parameters:",
        *(f"--   {name} = {value!r}" for name, value in result["parameters"].items()),
        f"-- size: {result['size']} {what}",
    ]
    return "\n".join(lines) + "\n"
