"""Engage-shaped messages rendered by the state database, for sinks that only need the JSON text.

:func:`line_columns` builds, from a ``diffs`` row, SQL expressions for the identify call and the track event
that :mod:`audience_sync.destinations.messages` builds in Python, as JSON text: the same keys in the same
order with the same values (``json.loads`` of both is equal; only the whitespace between tokens may differ).
The JSONL sink uses them so that a large initial sync costs no Python per change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, ColumnElement, String, Table, Text, and_, case, cast, func, literal, or_

from .messages import MessageOptions


@dataclass(frozen=True)
class LineFormat:
    """What a sink rendered in SQL writes: which calls (``identify`` and/or ``track``) and their options."""

    send: tuple[str, ...]
    options: MessageOptions


def _text(value: str) -> ColumnElement[str]:
    return cast(literal(value, String), Text)


def _obj(dialect: str, *pairs: tuple[str, Any]) -> ColumnElement[Any]:
    args: list[Any] = []
    for key, value in pairs:
        args += [_text(key), value]
    return func.json_object(*args) if dialect == "sqlite" else func.json_build_object(*args)


def _json(dialect: str, text: Any) -> ColumnElement[Any]:
    """A canonical JSON text column as a JSON value inside an object (NULL becomes ``null``)."""
    return func.json(text) if dialect == "sqlite" else cast(text, JSON)


def line_columns(dialect: str, diffs: Table, fmt: LineFormat, ts: str) -> list[ColumnElement[str]]:
    """SQL expressions, one per configured call (identify first), rendering a ``diffs`` row as a JSON line."""
    d = diffs.c
    opts = fmt.options
    value = _json(dialect, d.new_value)
    is_audience = d.computation_class == "audience"
    personas = _obj(
        dialect,
        ("computation_class", d.computation_class),
        ("computation_id", case((is_audience, _text("aud_")), else_=_text("tra_")) + d.computation_key),
        ("computation_key", d.computation_key),
        ("namespace", _text(f"spa_{opts.space_id}")),
        ("space_id", _text(opts.space_id)),
    )
    stamp = _text(ts)
    columns: list[ColumnElement[Any]] = []
    if "identify" in fmt.send:
        with_email = func.json_object if dialect == "sqlite" else func.json_build_object
        traits = case(
            (d.email.is_(None), with_email(d.computation_key, value)),
            (d.computation_key == "email", with_email(_text("email"), d.email)),  # a dict keeps the last
            else_=with_email(d.computation_key, value, _text("email"), d.email),
        )
        columns.append(
            _obj(
                dialect,
                ("type", _text("identify")),
                ("userId", d.user_id),
                ("traits", traits),
                ("context", _obj(dialect, ("personas", personas))),
                ("messageId", d.message_id),
                ("timestamp", stamp),
            )
        )
    if "track" in fmt.send:
        build = func.json_object if dialect == "sqlite" else func.json_build_object
        event = case(
            (~is_audience, _text(opts.trait_event)),
            (d.new_value == "true", _text(opts.entered_event)),
            else_=_text(opts.exited_event),
        )
        properties = case(
            (  # a dict keeps the last of two equal keys
                or_(
                    and_(is_audience, d.computation_key == "audience_key"),
                    and_(~is_audience, d.computation_key == "trait_key"),
                ),
                build(d.computation_key, value),
            ),
            (is_audience, build(_text("audience_key"), d.computation_key, d.computation_key, value)),
            else_=build(_text("trait_key"), d.computation_key, d.computation_key, value),
        )
        context = case(
            (d.email.is_(None), _obj(dialect, ("personas", personas))),
            else_=_obj(dialect, ("personas", personas), ("traits", _obj(dialect, ("email", d.email)))),
        )
        columns.append(
            _obj(
                dialect,
                ("type", _text("track")),
                ("userId", d.user_id),
                ("event", event),
                ("properties", properties),
                ("context", context),
                ("messageId", d.message_id + _text("-t")),
                ("timestamp", stamp),
            )
        )
    return [cast(c, Text) for c in columns]
