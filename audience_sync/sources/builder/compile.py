"""A builder computation compiled to one SQLAlchemy Core statement, and that statement as SQL text.

The statement returns what a ``sql`` computation's query would: ``user_id``, ``email`` (the profile's) and, for
a trait, ``value`` (canonical JSON text). Every value from the config is a bound parameter; :func:`to_sql`
renders the statement for a dialect with named parameters (SQLite ``:name``, psycopg ``%(name)s``) and gives
their values, which is what the pushdown runs and what ``explain`` shows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from .conditions import audience_statement
from .context import Context
from .definitions import AudienceDefinition, TraitDefinition
from .schema import SourceSchema
from .traits import trait_statement
from .windows import as_utc

if TYPE_CHECKING:
    from ...config import Computation, Config


def compile_statement(comp: Computation, config: Config, schema: SourceSchema, as_of: dt.datetime) -> Any:
    """The one statement computing ``comp`` (a builder computation) as of ``as_of`` on ``schema``'s source."""
    audiences = {c.key: c.builder for c in config.computations if isinstance(c.builder, AudienceDefinition)}
    ctx = Context(schema, config.events, config.profiles, as_utc(as_of), audiences)
    if isinstance(comp.builder, AudienceDefinition):
        return audience_statement(ctx, comp.builder.condition)
    assert isinstance(comp.builder, TraitDefinition), f"{comp.key} is not a builder computation"
    return trait_statement(ctx, comp.builder.compute)


@dataclass(frozen=True)
class SqlText:
    """A compiled statement as the driver runs it: text with named parameters, and their values."""

    text: str
    params: dict[str, Any]


def render_dialect(name: str) -> Dialect:
    """The dialect :func:`to_sql` renders for: named parameters on SQLite, psycopg's on PostgreSQL."""
    if name == "sqlite":
        return sqlite.dialect(paramstyle="named")
    return postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def to_sql(statement: Any, dialect: str) -> SqlText:
    """``statement`` as SQL text for ``dialect`` with its (expanded) parameters."""
    compiled = statement.compile(dialect=render_dialect(dialect), compile_kwargs={"render_postcompile": True})
    return SqlText(str(compiled), dict(compiled.params))
