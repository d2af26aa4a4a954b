"""The parts of a builder definition, as frozen models: filters, qualifying events, an audience's conditions and a
computed trait's form, with the names the language allows for each (operators, bounds, forms).

Like ``definitions.py``, this module imports nothing from the rest of the package but the builder's windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .windows import Window

Scalar = str | int | float | bool

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
OPERATORS = (*COMPARISONS, "contains", "in", "exists", "not_exists")
BOUNDS = ("at_least", "at_most", "exactly")
NUMERIC_FORMS = ("sum", "avg", "min", "max")
VALUE_FORMS = ("most_frequent", "first", "last", "unique_list", "unique_count")
FORMS = ("count", *NUMERIC_FORMS, *VALUE_FORMS)


@dataclass(frozen=True)
class Filter:
    """``{ property = "p", op = "=", value = ... }``: one test of an event property or a profile column."""

    property: str
    op: str
    #: a scalar; a tuple of scalars for ``in``; None for ``exists`` / ``not_exists``
    value: Scalar | tuple[Scalar, ...] | None = None


@dataclass(frozen=True)
class Events:
    """The qualifying events of one condition or trait: one event name, an optional window, filters."""

    event: str
    window: Window | None = None
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class Performed:
    """Users with at least one qualifying event whose count satisfies ``bound`` (``at_least = 1`` by default)."""

    events: Events
    bound: Literal["at_least", "at_most", "exactly"] = "at_least"
    count: int = 1


@dataclass(frozen=True)
class DidNotPerform:
    """Profiles with no qualifying event."""

    events: Events


@dataclass(frozen=True)
class TraitIs:
    """Profiles whose column passes the filter."""

    filter: Filter


@dataclass(frozen=True)
class InAudience:
    """Members (``negated``: non-members) of another condition audience of the config, at the same as-of."""

    key: str
    negated: bool = False


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    part: Condition


Condition = Performed | DidNotPerform | TraitIs | InAudience | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Compute:
    """A computed trait: ``form`` over the qualifying events (of ``property``, for every form but ``count``)."""

    form: str
    events: Events
    property: str | None = None
