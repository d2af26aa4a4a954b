"""The builder's language, parsed and validated: audience conditions and computed-trait forms.

A config's ``[audiences.condition]`` and ``[computed_traits.compute]`` tables are turned into the frozen models
below by :func:`parse_condition` and :func:`parse_compute`, which report every problem with the field it sits
in (``condition.all[1].within``); :func:`check_references` then checks ``in_audience`` keys and cycles across the
config. Nothing here touches a database: :mod:`.compile` turns the models into SQL.

The parts a definition is made of (filters, events, conditions, forms) are the models of ``condition_models.py``,
and ``parser.py`` walks a raw table into them; their names are importable from here too. None of these modules
imports anything from the rest of the package, so that ``config.py`` can use them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .condition_models import (
    BOUNDS,
    COMPARISONS,
    FORMS,
    NUMERIC_FORMS,
    OPERATORS,
    VALUE_FORMS,
    AllOf,
    AnyOf,
    Compute,
    Condition,
    DidNotPerform,
    Events,
    Filter,
    InAudience,
    Not,
    Performed,
    Scalar,
    TraitIs,
)
from .parser import Parser, Problem

__all__ = [
    "BOUNDS",
    "COMPARISONS",
    "FORMS",
    "NUMERIC_FORMS",
    "OPERATORS",
    "VALUE_FORMS",
    "AllOf",
    "AnyOf",
    "AudienceDefinition",
    "Compute",
    "Condition",
    "Definition",
    "DidNotPerform",
    "Events",
    "Filter",
    "InAudience",
    "Not",
    "Performed",
    "Problem",
    "Scalar",
    "TraitDefinition",
    "TraitIs",
    "canonical_text",
    "check_references",
    "parse_compute",
    "parse_condition",
    "references",
]


@dataclass(frozen=True)
class AudienceDefinition:
    """A condition audience, with the canonical text of its definition (for the definition hash)."""

    condition: Condition
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class TraitDefinition:
    """A computed trait by form, with the canonical text of its definition."""

    compute: Compute
    text: str = field(default="", compare=False)


Definition = AudienceDefinition | TraitDefinition


def canonical_text(raw: Any) -> str:
    """The definition as canonical JSON (sorted keys), so that equal definitions hash equally."""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def parse_condition(raw: Any, path: str = "condition") -> tuple[AudienceDefinition | None, list[Problem]]:
    """An audience's ``condition`` table as a model, or None with every problem (field path, message)."""
    parser = Parser()
    condition = parser.condition(raw, path)
    if condition is None or parser.problems:
        return None, parser.problems or [(path, "invalid condition")]
    return AudienceDefinition(condition, canonical_text(raw)), []


def parse_compute(raw: Any, path: str = "compute") -> tuple[TraitDefinition | None, list[Problem]]:
    """A computed trait's ``compute`` table as a model, or None with every problem (field path, message)."""
    parser = Parser()
    compute = parser.compute(raw, path)
    if compute is None or parser.problems:
        return None, parser.problems or [(path, "invalid compute")]
    return TraitDefinition(compute, canonical_text(raw)), []


def references(condition: Condition, path: str = "condition") -> list[tuple[str, str]]:
    """Every ``in_audience`` / ``not_in_audience`` key in ``condition``, with the field path it sits at."""
    if isinstance(condition, InAudience):
        return [(condition.key, f"{path}.{'not_in_audience' if condition.negated else 'in_audience'}")]
    if isinstance(condition, AllOf | AnyOf):
        head = "all" if isinstance(condition, AllOf) else "any"
        return [r for i, part in enumerate(condition.parts) for r in references(part, f"{path}.{head}[{i}]")]
    if isinstance(condition, Not):
        return references(condition.part, f"{path}.not")
    return []


def check_references(
    audiences: Mapping[str, AudienceDefinition], other_keys: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """Problems ``(audience key, field path, message)`` with ``in_audience`` keys: unknown, not a condition
    audience (``other_keys``: key -> what it is, for every other computation), or part of a cycle."""
    problems: list[tuple[str, str, str]] = []
    for key, definition in audiences.items():
        for target, path in references(definition.condition):
            if target in audiences:
                continue
            known = ", ".join(sorted(audiences)) or "none"
            if target in other_keys:
                message = f"{target!r} is {other_keys[target]}, not a condition audience (condition audiences: {known})"
            else:
                message = f"unknown audience key {target!r} (condition audiences: {known})"
            problems.append((key, path, message))
    reported: set[frozenset[str]] = set()
    for start in audiences:
        cycle = _cycle_from(start, audiences)
        if cycle is not None and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            path = next(p for k, p in references(audiences[start].condition) if k == cycle[1 % len(cycle)])
            chain = " -> ".join([*cycle, cycle[0]])
            problems.append((start, path, f"in_audience cycle: {chain}"))
    return problems


def _cycle_from(start: str, audiences: Mapping[str, AudienceDefinition]) -> list[str] | None:
    """The keys of a cycle of references through ``start``, starting with it, or None."""

    def walk(key: str, trail: list[str]) -> list[str] | None:
        for target, _ in references(audiences[key].condition):
            if target == start:
                return trail
            if target in audiences and target not in trail:
                found = walk(target, [*trail, target])
                if found is not None:
                    return found
        return None

    return walk(start, [start])
