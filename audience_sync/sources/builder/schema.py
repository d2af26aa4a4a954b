"""The source's tables as the builder needs them: checked with SQLAlchemy's inspector before anything is staged.

A builder computation reads ``[profiles]`` and (unless it only tests profile columns) ``[events]``. Before a run
stages anything, :func:`inspect_source` checks that every table and column the run's builder computations name
exists, and that their types can be read, and raises SourceError naming the computation, the table and the
column otherwise; the run then fails before any diff.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, column, inspect, table
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.expression import TableClause

from ...errors import SourceError
from .condition_models import Condition, DidNotPerform, Events, InAudience, Not, Performed, TraitIs
from .definitions import AudienceDefinition, TraitDefinition

if TYPE_CHECKING:
    from ...config import Computation, Config

Leaf = Performed | DidNotPerform | TraitIs


def split_table(spec: str) -> tuple[str | None, str]:
    """``"schema.table"`` -> ``("schema", "table")``; ``"table"`` -> ``(None, "table")``."""
    schema, _, name = spec.rpartition(".")
    return schema or None, name


@dataclass(frozen=True)
class SourceTable:
    """One reflected table: its real column names (matched case-insensitively) and their SQL types."""

    spec: str
    schema: str | None
    name: str
    columns: Mapping[str, tuple[str, Any]]  # lowercased name -> (real name, SQLAlchemy type)

    def real(self, name: str) -> str | None:
        """The column's real name, or None when the table has no such column."""
        hit = self.columns.get(name.lower())
        return None if hit is None else hit[0]

    def type_of(self, name: str) -> Any:
        """The SQLAlchemy type of column ``name`` (which exists)."""
        return self.columns[name.lower()][1]

    def clause(self) -> TableClause:
        """A lightweight ``table()`` with every column and its reflected type, for building statements."""
        return table(self.name, *(column(real, type_) for real, type_ in self.columns.values()), schema=self.schema)


@dataclass(frozen=True)
class SourceSchema:
    """The reflected ``[events]`` and ``[profiles]`` tables (``events`` None when no computation needs it)."""

    dialect: str
    profiles: SourceTable
    events: SourceTable | None = None


def _leaves(condition: Condition, audiences: Mapping[str, AudienceDefinition], seen: set[str]) -> Iterator[Leaf]:
    """Every leaf of ``condition``, following ``in_audience`` into the audiences it names (each once)."""
    if isinstance(condition, Performed | DidNotPerform | TraitIs):
        yield condition
    elif isinstance(condition, InAudience):
        if condition.key not in seen and condition.key in audiences:
            seen.add(condition.key)
            yield from _leaves(audiences[condition.key].condition, audiences, seen)
    elif isinstance(condition, Not):
        yield from _leaves(condition.part, audiences, seen)
    else:
        for part in condition.parts:
            yield from _leaves(part, audiences, seen)


@dataclass(frozen=True)
class Need:
    """One column a computation reads, and what in the config names its table and it."""

    table: str
    table_field: str
    column: str
    column_field: str


def needed_columns(comp: Computation, config: Config) -> list[Need]:
    """Every column ``comp`` reads on the source, following ``in_audience``; profiles first."""
    audiences = {c.key: c.builder for c in config.computations if isinstance(c.builder, AudienceDefinition)}
    profiles, events = config.profiles, config.events

    def on_profiles(col: str, what: str) -> Need:
        return Need(profiles.table, "[profiles] table", col, what)

    needs = [on_profiles(profiles.user_id, "[profiles] user_id")]
    if profiles.email:
        needs.append(on_profiles(profiles.email, "[profiles] email"))
    event_defs: list[Events] = []
    props: set[str] = set()
    if isinstance(comp.builder, TraitDefinition):
        event_defs.append(comp.builder.compute.events)
        if comp.builder.compute.property is not None:
            props.add(comp.builder.compute.property)
    elif isinstance(comp.builder, AudienceDefinition):
        for leaf in _leaves(comp.builder.condition, audiences, {comp.key}):
            if isinstance(leaf, TraitIs):
                needs.append(on_profiles(leaf.filter.property, f"the trait condition on {leaf.filter.property!r}"))
            else:
                event_defs.append(leaf.events)
    if not event_defs:
        return needs
    for name in ("user_id", "event", "timestamp"):
        needs.append(Need(events.table, "[events] table", getattr(events, name), f"[events] {name}"))
    if events.properties:
        needs.append(Need(events.table, "[events] table", events.properties, "[events] properties"))
    else:
        props |= {f.property for ev in event_defs for f in ev.where}
        needs += [
            Need(events.table, "[events] table", p, f"property {p!r}, a column since [events] properties = ''")
            for p in sorted(props)
        ]
    return needs


def _reflect(conn: Connection, spec: str) -> SourceTable | None:
    schema, name = split_table(spec)
    inspector = inspect(conn)
    if not inspector.has_table(name, schema=schema):
        return None
    cols = inspector.get_columns(name, schema=schema)
    return SourceTable(spec, schema, name, {c["name"].lower(): (c["name"], c["type"]) for c in cols})


def _check_types(comp: Computation, config: Config, tables: Mapping[str, SourceTable], dialect: str) -> None:
    """PostgreSQL types the builder reads in one way only: timestamps, and the JSON properties column."""
    events = tables.get(config.events.table)
    if dialect != "postgresql" or events is None:
        return
    ts = events.type_of(config.events.timestamp)
    if not isinstance(ts, sqltypes.DateTime):
        raise SourceError(
            f"{comp.label}: column {config.events.timestamp!r} of table {events.spec!r} is {ts}, "
            f"but [events] timestamp must be a timestamp or timestamptz column on PostgreSQL",
            computation=comp.key,
        )
    if config.events.properties:
        props = events.type_of(config.events.properties)
        if not isinstance(props, sqltypes.JSON | sqltypes.String):
            raise SourceError(
                f"{comp.label}: column {config.events.properties!r} of table {events.spec!r} is {props}, "
                f"but [events] properties must be json, jsonb or text holding JSON (or set properties = '')",
                computation=comp.key,
            )


def inspect_source(conn: Connection, config: Config, comps: Sequence[Computation]) -> SourceSchema:
    """Reflect the tables the builder computations ``comps`` read, checking every column they name.

    Raises SourceError naming the computation, the table and the column (and what in the config names it)
    for the first one missing, or the database's reason when the source cannot be inspected.
    """
    tables: dict[str, SourceTable] = {}
    try:
        for comp in comps:
            for need in needed_columns(comp, config):
                if need.table not in tables:
                    found = _reflect(conn, need.table)
                    if found is None:
                        raise SourceError(
                            f"{comp.label}: the source database has no table {need.table!r} "
                            f"(named by {need.table_field})",
                            computation=comp.key,
                        )
                    tables[need.table] = found
                if tables[need.table].real(need.column) is None:
                    present = ", ".join(real for real, _ in tables[need.table].columns.values()) or "none"
                    raise SourceError(
                        f"{comp.label}: table {need.table!r} has no column {need.column!r} "
                        f"(named by {need.column_field}; its columns: {present})",
                        computation=comp.key,
                    )
            _check_types(comp, config, tables, conn.dialect.name)
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        names = ", ".join(c.key for c in comps)
        raise SourceError(
            f"builder computations ({names}): cannot inspect the source database: {reason}",
            computation=comps[0].key if comps else "",
        ) from None
    profiles = tables.get(config.profiles.table)
    if profiles is None:  # no builder computation: nothing was needed
        profiles = SourceTable(config.profiles.table, *split_table(config.profiles.table), {})
    return SourceSchema(conn.dialect.name, profiles, tables.get(config.events.table))
