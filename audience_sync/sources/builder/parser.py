"""Walking one raw definition table (a config's ``condition`` or ``compute``) into the models of
``condition_models.py``, collecting every problem with the field path it sits at (``condition.all[1].within``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .condition_models import (
    BOUNDS,
    FORMS,
    OPERATORS,
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
from .windows import parse_window

#: (field path inside the definition, message)
Problem = tuple[str, str]
_HEADS = ("performed", "did_not_perform", "trait", "in_audience", "not_in_audience", "all", "any", "not")
_WINDOW_KEYS = ("within", "between")


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


def _name_of(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


class Parser:
    """Collects problems while walking one definition; each problem names its field path."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def fail(self, path: str, message: str) -> None:
        """Note a problem at ``path``."""
        self.problems.append((path, message))

    def table(self, raw: Any, path: str, what: str) -> Mapping[str, Any] | None:
        """``raw`` if it is a table; None, with a problem saying it must be ``what``, otherwise."""
        if not isinstance(raw, Mapping):
            self.fail(path, f"must be a table ({what}), not {raw!r}")
            return None
        return raw

    def unknown_keys(self, raw: Mapping[str, Any], allowed: Sequence[str], path: str, what: str) -> None:
        """A problem for each key of ``raw`` that ``what`` does not take."""
        for key in raw:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key for {what} (allowed: {', '.join(allowed)})")

    def filter(self, raw: Any, path: str, name_key: str) -> Filter | None:
        """A filter naming its property or column under ``name_key``, or None when it has problems."""
        spec = self.table(raw, path, f"a filter like {{ {name_key} = 'x', op = '=', value = 1 }}")
        if spec is None:
            return None
        self.unknown_keys(spec, (name_key, "op", "value"), path, "a filter")
        ok = True
        try:
            name = _name_of(spec.get(name_key), f"`{name_key}`")
            if name_key == "property" and '"' in name:
                raise ValueError(f"property names cannot contain '\"' ({name!r})")
        except ValueError as exc:
            self.fail(f"{path}.{name_key}", str(exc))
            name, ok = "", False
        op = spec.get("op")
        if op not in OPERATORS:
            self.fail(f"{path}.op", f"unknown operator {op!r} (operators: {', '.join(OPERATORS)})")
            return None
        value = spec.get("value")
        try:
            checked = filter_value(str(op), value, "value" in spec)
        except ValueError as exc:
            self.fail(f"{path}.value", str(exc))
            return None
        return Filter(name, str(op), checked) if ok else None

    def events(self, raw: Mapping[str, Any], head: str, path: str) -> Events | None:
        """The qualifying events named under ``head``, with their window and filters, or None."""
        ok = True
        try:
            event = _name_of(raw.get(head), f"`{head}` (an event name)")
        except ValueError as exc:
            self.fail(f"{path}.{head}", str(exc))
            event, ok = "", False
        try:
            window = parse_window(raw.get("within"), raw.get("between"))
        except ValueError as exc:
            where = "between" if "between" in raw and "within" not in raw else "within"
            self.fail(f"{path}.{where}", f"bad window: {exc}")
            window, ok = None, False
        filters: list[Filter] = []
        where_raw = raw.get("where", [])
        if not isinstance(where_raw, list):
            self.fail(f"{path}.where", "must be a list of filters like [{ property = 'p', op = '=', value = 1 }]")
            ok = False
        else:
            for i, item in enumerate(where_raw):
                parsed = self.filter(item, f"{path}.where[{i}]", "property")
                if parsed is None:
                    ok = False
                else:
                    filters.append(parsed)
        return Events(event, window, tuple(filters)) if ok else None

    def condition(self, raw: Any, path: str) -> Condition | None:
        """An audience condition (nested ones included), or None when it has problems."""
        spec = self.table(raw, path, "a condition")
        if spec is None:
            return None
        heads = [h for h in _HEADS if h in spec]
        if len(heads) != 1:
            found = f" (found {', '.join(heads)})" if heads else ""
            self.fail(path, f"give exactly one of {', '.join(_HEADS)}{found}")
            return None
        head = heads[0]
        if head in ("performed", "did_not_perform"):
            return self._performed(spec, head, path)
        if head == "trait":
            self.unknown_keys(spec, ("trait", "op", "value"), path, "a trait condition")
            flt = self.filter(spec, path, "trait")
            return None if flt is None else TraitIs(flt)
        if head in ("in_audience", "not_in_audience"):
            self.unknown_keys(spec, (head,), path, f"`{head}`")
            key = spec[head]
            if not isinstance(key, str) or not key:
                self.fail(f"{path}.{head}", f"must be an audience key, not {key!r}")
                return None
            return InAudience(key, negated=head == "not_in_audience")
        self.unknown_keys(spec, (head,), path, f"`{head}`")
        if head == "not":
            part = self.condition(spec["not"], f"{path}.not")
            return None if part is None else Not(part)
        items = spec[head]
        if not isinstance(items, list) or not items:
            self.fail(f"{path}.{head}", "must be a non-empty list of conditions")
            return None
        parts = [self.condition(item, f"{path}.{head}[{i}]") for i, item in enumerate(items)]
        if any(p is None for p in parts):
            return None
        done = tuple(p for p in parts if p is not None)
        return AllOf(done) if head == "all" else AnyOf(done)

    def _performed(self, spec: Mapping[str, Any], head: str, path: str) -> Condition | None:
        negated = head == "did_not_perform"
        allowed = (head, *_WINDOW_KEYS, "where") + (() if negated else BOUNDS)
        self.unknown_keys(spec, allowed, path, f"`{head}`")
        events = self.events(spec, head, path)
        if negated:
            return None if events is None else DidNotPerform(events)
        bounds = [b for b in BOUNDS if b in spec]
        if len(bounds) > 1:
            self.fail(path, f"give at most one of at_least, at_most, exactly (found {', '.join(bounds)})")
            return None
        bound = bounds[0] if bounds else "at_least"
        count = spec.get(bound, 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            self.fail(
                f"{path}.{bound}",
                f"must be a whole number of at least 1, not {count!r} (for users without such events use "
                f"`did_not_perform`)",
            )
            return None
        if events is None:
            return None
        return Performed(events, bound, count)  # type: ignore[arg-type]

    def compute(self, raw: Any, path: str) -> Compute | None:
        """A computed trait's form, or None when it has problems."""
        spec = self.table(raw, path, "a computed trait form")
        if spec is None:
            return None
        forms = [f for f in FORMS if f in spec]
        if len(forms) != 1:
            found = f" (found {', '.join(forms)})" if forms else ""
            self.fail(path, f"give exactly one of {', '.join(FORMS)}{found}")
            return None
        form = forms[0]
        allowed = (form, *_WINDOW_KEYS, "where") + (() if form == "count" else ("property",))
        self.unknown_keys(spec, allowed, path, f"`{form}`")
        events = self.events(spec, form, path)
        prop: str | None = None
        if form != "count":
            if "property" not in spec:
                self.fail(f"{path}.property", f"`{form}` needs the `property` whose values it aggregates")
                return None
            try:
                prop = _name_of(spec["property"], "`property`")
                if '"' in prop:
                    raise ValueError(f"property names cannot contain '\"' ({prop!r})")
            except ValueError as exc:
                self.fail(f"{path}.property", str(exc))
                return None
        return None if events is None else Compute(form, events, prop)


def filter_value(op: str, value: Any, given: bool) -> Scalar | tuple[Scalar, ...] | None:
    """The filter's value, checked against its operator; ValueError saying what it must be."""
    if op in ("exists", "not_exists"):
        if given:
            raise ValueError(f"`{op}` takes no value")
        return None
    if not given:
        raise ValueError(f"`{op}` needs a value")
    if op == "in":
        if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
            raise ValueError(f"`in` needs a non-empty list of strings, numbers or booleans, not {value!r}")
        return tuple(value)
    if op == "contains":
        if not isinstance(value, str):
            raise ValueError(f"`contains` needs a string, not {value!r}")
        return value
    if not _scalar(value):
        raise ValueError(f"`{op}` needs a string, a number or a boolean, not {value!r}")
    if isinstance(value, bool) and op not in ("=", "!="):
        raise ValueError(f"`{op}` compares numbers or strings; booleans take only =, != and in")
    return value  # type: ignore[no-any-return]
