"""An independent evaluation of builder definitions in plain Python, over events and profiles as read back from the
source (so that what each backend stores, such as jsonb's numbers or a typed column, is what both sides see).

It follows DESIGN.md section 6 directly: windows ``as_of - D < ts <= as_of``, filters typed by their value, a null
property passing only ``not_exists``, text by code point, smallest = booleans, then numbers, then text.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from audience_sync.sources.builder.definitions import (
    AllOf,
    AnyOf,
    AudienceDefinition,
    Compute,
    Condition,
    DidNotPerform,
    Events,
    Filter,
    InAudience,
    Not,
    Performed,
    TraitIs,
)
from audience_sync.values import encode

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Event:
    user: str | None
    event: str | None
    ts: dt.datetime | None
    props: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    id: str | None
    email: str | None
    columns: Mapping[str, Any] = field(default_factory=dict)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_scalar(v: Any) -> bool:
    return isinstance(v, bool | str) or is_number(v)


def sort_key(v: Any) -> tuple[Any, ...]:
    """Smallest first: booleans (false, true), numbers (an integer before an equal float), text by code point."""
    if isinstance(v, bool):
        return (0, v, 0, 0, "")
    if is_number(v):
        return (1, False, v, isinstance(v, float), "")
    return (2, False, 0, 0, v)


def exact(v: int | float) -> Fraction:
    return Fraction(v) if isinstance(v, int) else Fraction(Decimal(repr(v)))


class Reference:
    """Members and values as of ``as_of``. ``ints_are_booleans``: SQLite columns, where 1 and 0 match booleans."""

    def __init__(
        self,
        events: Iterable[Event],
        profiles: Iterable[Profile],
        audiences: Mapping[str, AudienceDefinition],
        as_of: dt.datetime,
        *,
        event_ints_are_booleans: bool = False,
        profile_ints_are_booleans: bool = False,
    ) -> None:
        self.events = list(events)
        self.profiles = [p for p in profiles if p.id is not None]
        self.audiences = audiences
        self.as_of = as_of
        self.event_ints = event_ints_are_booleans
        self.profile_ints = profile_ints_are_booleans

    # -- filters
    @staticmethod
    def _typed(v: Any, target: Any, ints_are_booleans: bool) -> Any:
        if isinstance(target, bool):
            if isinstance(v, bool):
                return v
            if ints_are_booleans and isinstance(v, int) and v in (0, 1):
                return bool(v)
            return None
        if is_number(target):
            return v if is_number(v) else None
        return v if isinstance(v, str) else None

    def passes(self, v: Any, flt: Filter, ints_are_booleans: bool) -> bool:
        op, target = flt.op, flt.value
        if op == "exists":
            return v is not None
        if op == "not_exists":
            return v is None
        if op == "in":
            assert isinstance(target, tuple)
            return any(self.passes(v, Filter(flt.property, "=", t), ints_are_booleans) for t in target)
        if op == "!=":
            return v is not None and not self.passes(v, Filter(flt.property, "=", target), ints_are_booleans)
        if op == "contains":
            assert isinstance(target, str)
            return isinstance(v, str) and target.translate(_ASCII_LOWER) in v.translate(_ASCII_LOWER)
        typed = self._typed(v, target, ints_are_booleans)
        if typed is None:
            return False
        if op == "=":
            return bool(typed == target)
        return bool({"<": typed < target, "<=": typed <= target, ">": typed > target, ">=": typed >= target}[op])

    # -- events
    def qualifying(self, spec: Events) -> list[Event]:
        upper, lower = self.as_of, None
        if spec.window is not None:
            lower, upper = spec.window.bounds(self.as_of)
        return [
            e
            for e in self.events
            if e.user is not None
            and e.event == spec.event
            and e.ts is not None
            and e.ts <= upper
            and (lower is None or e.ts > lower)
            and all(self.passes(e.props.get(f.property), f, self.event_ints) for f in spec.where)
        ]

    def _by_user(self, events: list[Event]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {}
        for e in events:
            assert e.user is not None
            out.setdefault(e.user, []).append(e)
        return out

    # -- audiences
    def members(self, condition: Condition) -> set[str]:
        every = {p.id for p in self.profiles if p.id is not None}
        if isinstance(condition, Performed):
            counts = Counter(e.user for e in self.qualifying(condition.events))
            n = condition.count
            test = {"at_least": lambda c: c >= n, "at_most": lambda c: 1 <= c <= n, "exactly": lambda c: c == n}
            return {u for u in every if counts.get(u, 0) >= 1 and test[condition.bound](counts.get(u, 0))}
        if isinstance(condition, DidNotPerform):
            return every - {e.user for e in self.qualifying(condition.events) if e.user is not None}
        if isinstance(condition, TraitIs):
            flt = condition.filter
            return {
                p.id
                for p in self.profiles
                if p.id is not None and self.passes(p.columns.get(flt.property), flt, self.profile_ints)
            }
        if isinstance(condition, InAudience):
            inner = self.members(self.audiences[condition.key].condition)
            return every - inner if condition.negated else inner
        if isinstance(condition, Not):
            return every - self.members(condition.part)
        parts = [self.members(p) for p in condition.parts]
        if isinstance(condition, AllOf):
            return set.intersection(*parts)
        assert isinstance(condition, AnyOf)
        return set.union(*parts)

    # -- traits
    def trait(self, compute: Compute) -> dict[str, Any]:
        """user id -> value (Python), for profiles with a value."""
        ids = {p.id for p in self.profiles}
        per_user = self._by_user(self.qualifying(compute.events))
        out: dict[str, Any] = {}
        for user, events in per_user.items():
            if user not in ids:
                continue
            value = self._value(compute, events)
            if value is not None:
                out[user] = value
        return out

    def _value(self, compute: Compute, events: list[Event]) -> Any:
        form = compute.form
        if form == "count":
            return len(events)
        assert compute.property is not None
        values = [(e, e.props.get(compute.property)) for e in events]
        if form in ("sum", "avg", "min", "max"):
            nums: list[int | float] = [v for _, v in values if v is not None and is_number(v)]
            if not nums:
                return None
            integers = all(isinstance(v, int) for v in nums)
            total = sum((exact(v) for v in nums), Fraction(0))
            if form == "sum":
                return int(total) if integers else float(total)
            if form == "avg":  # the sum rounded to a double, then divided: as SQL does
                return float(int(total) if integers else float(total)) / len(nums)
            extreme = min(nums) if form == "min" else max(nums)
            return int(extreme) if integers else float(extreme)
        scalars = [(e, v) for e, v in values if is_scalar(v)]
        if not scalars:
            return None
        if form in ("first", "last"):
            when = [e.ts for e, _ in scalars if e.ts is not None]
            instant = min(when) if form == "first" else max(when)
            return min((v for e, v in scalars if e.ts == instant), key=sort_key)
        distinct = {encode(v): v for _, v in scalars}
        if form == "unique_count":
            return len(distinct)
        if form == "unique_list":
            return sorted(distinct.values(), key=sort_key)
        assert form == "most_frequent"
        counts = Counter(encode(v) for _, v in scalars)
        top = max(counts.values())
        if top < 2:
            return None
        return min((distinct[k] for k, c in counts.items() if c == top), key=sort_key)
