"""What every part of a compiled statement shares: the source's tables, the dialect and the as-of instant.

:class:`Context` hands out the profile row and event aliases, reads properties and profile columns as
:class:`~.properties.Value`, and gives the predicates of "qualifying events" (event name, the as-of bound, the
window, the property filters). Instants are bound parameters: on SQLite text in the form
``strftime('%Y-%m-%d %H:%M:%f', timestamp)`` gives the timestamps (so ``'2017-04-01T00:00:00Z'`` and
``'2017-04-01 00:00:00'`` are the same instant), plus a coarse range on the raw text by whole days that an index
can use; on PostgreSQL datetimes (naive UTC for a ``timestamp`` column, aware for ``timestamptz``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, String, bindparam, cast, func, null
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FromClause

from .condition_models import Events
from .definitions import AudienceDefinition
from .filters import filter_expr
from .properties import PgColumn, PgJsonProperty, SqliteColumn, SqliteJsonProperty, Value, const
from .schema import SourceSchema, SourceTable
from .windows import sqlite_instant

if TYPE_CHECKING:
    from ...config import EventsConfig, ProfilesConfig

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Context:
    """The source schema, the config's table mapping, the as-of instant and the condition audiences by key."""

    schema: SourceSchema
    events_config: EventsConfig
    profiles_config: ProfilesConfig
    as_of: dt.datetime
    audiences: Mapping[str, AudienceDefinition]

    @property
    def dialect(self) -> str:
        return self.schema.dialect

    # -- profiles
    def profiles(self) -> FromClause:
        """The profile row every condition tests (one alias, ``p``, shared by nested conditions)."""
        return self.schema.profiles.clause().alias("p")

    def profile_column(self, p: FromClause, name: str) -> ColumnElement[Any]:
        real = self.schema.profiles.real(name)
        assert real is not None, f"{name} was checked by inspect_source"
        return p.c[real]

    def profile_id(self, p: FromClause) -> ColumnElement[Any]:
        return self.profile_column(p, self.profiles_config.user_id)

    def profile_email(self, p: FromClause) -> ColumnElement[Any]:
        if not self.profiles_config.email:
            return cast(null(), String)
        return self.profile_column(p, self.profiles_config.email)

    def profile_value(self, p: FromClause, name: str) -> Value:
        """A profile column (a trait condition's), typed as :mod:`.properties` says."""
        col = self.profile_column(p, name)
        if self.dialect == "postgresql":
            return PgColumn(col, self.schema.profiles.type_of(name))
        return SqliteColumn(col)

    # -- events
    @property
    def _events(self) -> SourceTable:
        assert self.schema.events is not None, "inspect_source reflects [events] for computations that read it"
        return self.schema.events

    def events(self) -> FromClause:
        """A fresh alias of the events table (one per subquery)."""
        return self._events.clause().alias()

    def event_column(self, e: FromClause, name: str) -> ColumnElement[Any]:
        real = self._events.real(name)
        assert real is not None, f"{name} was checked by inspect_source"
        return e.c[real]

    def event_user(self, e: FromClause) -> ColumnElement[Any]:
        return self.event_column(e, self.events_config.user_id)

    def timestamp(self, e: FromClause) -> ColumnElement[Any]:
        """The event's instant, comparable with :meth:`instant` (SQLite: normalised text, to the millisecond)."""
        col = self.event_column(e, self.events_config.timestamp)
        if self.dialect == "sqlite":
            return func.strftime(const("%Y-%m-%d %H:%M:%f"), col)
        return col

    def instant(self, name: str, when: dt.datetime) -> ColumnElement[Any]:
        """``when`` as a bound parameter of the timestamp column's kind."""
        if self.dialect == "sqlite":
            return bindparam(name, sqlite_instant(when), type_=String(), unique=True)
        ts_type = self._events.type_of(self.events_config.timestamp)
        if getattr(ts_type, "timezone", False):
            return bindparam(name, when, type_=DateTime(timezone=True), unique=True)
        naive = when.astimezone(dt.UTC).replace(tzinfo=None)  # timestamp without time zone holds UTC (when is UTC)
        return bindparam(name, naive, type_=DateTime(), unique=True)

    def _sqlite_date_range(
        self, e: FromClause, lower: dt.datetime | None, upper: dt.datetime
    ) -> list[ColumnElement[Any]]:
        """SQLite: the same window, coarsened to whole days on the raw text, which an index on the timestamp
        column can serve (``strftime`` of the column cannot). A text timestamp starts with its local date, at
        most a day off its UTC date, so these never drop an event the exact bounds keep."""
        raw = self.event_column(e, self.events_config.timestamp)
        after = (upper + 2 * _DAY).date().isoformat()
        clauses = [raw < bindparam("before_day", after, type_=String(), unique=True)]
        if lower is not None:
            clauses.append(raw >= bindparam("from_day", (lower - _DAY).date().isoformat(), type_=String(), unique=True))
        return clauses

    def event_value(self, e: FromClause, name: str) -> Value:
        """Event property ``name``: from the JSON properties column, or its own column (``properties = ""``)."""
        props = self.events_config.properties
        if props:
            doc = self.event_column(e, props)
            if self.dialect == "postgresql":
                return PgJsonProperty(doc, name, self._events.type_of(props))
            return SqliteJsonProperty(doc, name)
        col = self.event_column(e, name)
        if self.dialect == "postgresql":
            return PgColumn(col, self._events.type_of(name))
        return SqliteColumn(col)

    def qualifying(self, e: FromClause, events: Events) -> list[ColumnElement[Any]]:
        """The predicates of a qualifying event: a user, the event name, at or before as-of, in the window,
        passing every filter."""
        ts = self.timestamp(e)
        upper = self.as_of
        clauses = [
            self.event_user(e).is_not(None),
            self.event_column(e, self.events_config.event) == bindparam("event", events.event, String(), unique=True),
        ]
        lower = None
        if events.window is not None:
            lower, upper = events.window.bounds(self.as_of)
            clauses.append(ts > self.instant("since", lower))
        clauses.append(ts <= self.instant("until" if upper != self.as_of else "as_of", upper))
        if self.dialect == "sqlite":
            clauses += self._sqlite_date_range(e, lower, upper)
        clauses += [filter_expr(self.event_value(e, f.property), f) for f in events.where]
        return clauses
