"""Engage-shaped messages built by the state database from ``diffs`` rows, as UTF-8 JSON bytes.

The batched destinations spend well under a microsecond of HTTP per message, so building each message as
Python dicts and encoding it would cost far more than sending it. Here the database renders the very messages
that :mod:`audience_sync.destinations.messages` builds (``json_object`` on SQLite, ``json_build_object`` on
PostgreSQL) and hands back bytes that Python only joins into a batch body.

Equivalence with the Python builders (checked by tests/test_messages_sql.py on both backends): the same fields
with the same values, including the cases where Python's dicts collapse a key (a computation keyed ``email``,
``audience_key`` or ``trait_key``). On SQLite the bytes are identical to ``json.dumps(..., separators=(",",
":"), ensure_ascii=False)`` of the Python message; PostgreSQL writes ``" : "`` and ``", "`` between items.
Values are the stored canonical JSON text, embedded as JSON, so numbers keep their exact spelling.

A SQLite file another program made may keep its text as UTF-16 (``PRAGMA encoding``), where ``CAST(text AS
BLOB)`` gives UTF-16 bytes: the builders are then told ``utf8=False`` and their messages are encoded to UTF-8 by
``as_utf8`` (``store/sqlfuncs.py``), the same bytes at a Python call per message.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, LargeBinary, String, Text, bindparam, case, cast, func, literal_column, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from ..model import MessageOptions
from .dialect import backend
from .schema import diffs

#: the bind parameter carrying the messages' ``timestamp`` (one per chunk, as the Python builders use)
TIMESTAMP = "message_timestamp"


class _Sql:
    """The JSON vocabulary of one dialect."""

    def __init__(self, dialect: str, utf8: bool = True) -> None:
        self.pg = backend(dialect).typed_json
        self.utf8 = utf8

    def obj(self, *pairs: Any) -> ColumnElement[Any]:
        """A JSON object with the keys and values in this order."""
        return func.json_build_object(*pairs) if self.pg else func.json_object(*pairs)

    def json(self, text: Any) -> ColumnElement[Any]:
        """Stored canonical JSON text embedded as JSON (SQL NULL stays NULL, rendered as ``null``)."""
        return cast(text, JSON) if self.pg else func.json(text)

    @staticmethod
    def key(name: str) -> ColumnElement[str]:
        """A constant object key (a fixed identifier of the message format, rendered inline)."""
        assert name.replace("_", "").replace("-", "").isalnum(), name
        return literal_column(f"'{name}'", Text)

    def param(self, name: str, value: str | None = None) -> ColumnElement[str]:
        """A text bind parameter (typed on PostgreSQL, whose JSON builders take arguments of any type)."""
        p = bindparam(name, value, type_=String) if value is not None else bindparam(name, type_=String)
        return cast(p, Text) if self.pg else p

    def bytes(self, message: ColumnElement[Any]) -> ColumnElement[bytes]:
        """The message as UTF-8 bytes."""
        if self.pg:
            return type_coerce(func.convert_to(cast(message, Text), literal_column("'UTF8'")), LargeBinary)
        if not self.utf8:  # the cast would give the database's UTF-16
            return func.as_utf8(message, type_=LargeBinary)
        return cast(message, LargeBinary)


def _personas(sql: _Sql, options: MessageOptions) -> ColumnElement[Any]:
    prefix = case((diffs.c.computation_class == "audience", sql.key("aud_")), else_=sql.key("tra_"))
    return sql.obj(
        sql.key("computation_class"),
        diffs.c.computation_class,
        sql.key("computation_id"),
        prefix + diffs.c.computation_key,
        sql.key("computation_key"),
        diffs.c.computation_key,
        sql.key("namespace"),
        sql.param("personas_namespace", options.space),
        sql.key("space_id"),
        sql.param("personas_space_id", options.space),
    )


def _finish(sql: _Sql, pairs: list[Any], options: MessageOptions, suffix: str = "") -> ColumnElement[bytes]:
    message_id: ColumnElement[Any] = diffs.c.message_id
    if suffix:
        message_id = message_id + sql.key(suffix)
    pairs += [sql.key("messageId"), message_id, sql.key("timestamp"), sql.param(TIMESTAMP)]
    if options.integrations is not None:
        integrations = json.dumps(options.integrations, separators=(",", ":"), ensure_ascii=False)
        pairs += [sql.key("integrations"), sql.json(sql.param("message_integrations", integrations))]
    return sql.bytes(sql.obj(*pairs))


def identify_sql(dialect: str, options: MessageOptions, utf8: bool = True) -> ColumnElement[bytes]:
    """The identify call of :func:`~audience_sync.destinations.messages.identify` for each ``diffs`` row, as UTF-8
    bytes; ``utf8``: whether the database keeps its text as UTF-8 (:func:`.engine.text_is_utf8`)."""
    sql = _Sql(dialect, utf8)
    key, value, email = diffs.c.computation_key, sql.json(diffs.c.new_value), diffs.c.email
    traits = case(
        (email.is_(None), sql.obj(key, value)),
        (key == "email", sql.obj(sql.key("email"), email)),  # Python's dict: the email overwrites the value
        else_=sql.obj(key, value, sql.key("email"), email),
    )
    pairs: list[Any] = [
        sql.key("type"),
        sql.key("identify"),
        sql.key("userId"),
        diffs.c.user_id,
        sql.key("traits"),
        traits,
        sql.key("context"),
        sql.obj(sql.key("personas"), _personas(sql, options)),
    ]
    return _finish(sql, pairs, options)


def track_sql(dialect: str, options: MessageOptions, utf8: bool = True) -> ColumnElement[bytes]:
    """The track event of :func:`~audience_sync.destinations.messages.track` for each ``diffs`` row, as UTF-8
    bytes; ``utf8`` as :func:`identify_sql` takes it."""
    sql = _Sql(dialect, utf8)
    key, value, email = diffs.c.computation_key, sql.json(diffs.c.new_value), diffs.c.email
    is_audience = diffs.c.computation_class == "audience"
    event = case(
        (diffs.c.computation_class == "trait", sql.param("trait_event", options.trait_event)),
        (diffs.c.new_value == "true", sql.param("entered_event", options.entered_event)),
        else_=sql.param("exited_event", options.exited_event),
    )
    key_name = case((is_audience, sql.key("audience_key")), else_=sql.key("trait_key"))
    properties = case(
        (key == key_name, sql.obj(key, value)),  # a key named like its label: Python's dict keeps one entry
        else_=sql.obj(key_name, key, key, value),
    )
    personas = _personas(sql, options)
    context = case(
        (email.is_(None), sql.obj(sql.key("personas"), personas)),
        else_=sql.obj(sql.key("personas"), personas, sql.key("traits"), sql.obj(sql.key("email"), email)),
    )
    pairs: list[Any] = [
        sql.key("type"),
        sql.key("track"),
        sql.key("userId"),
        diffs.c.user_id,
        sql.key("event"),
        event,
        sql.key("properties"),
        properties,
        sql.key("context"),
        context,
    ]
    return _finish(sql, pairs, options, suffix="-t")


def message_columns(
    dialect: str, send: tuple[str, ...], options: MessageOptions, utf8: bool = True
) -> list[ColumnElement[bytes]]:
    """One column per message a change yields for a destination configured with ``send``, identify first, each
    message as UTF-8 bytes; ``utf8``: whether the database keeps its text as UTF-8 (:func:`.engine.text_is_utf8`),
    as every PostgreSQL database does for this purpose."""
    columns: list[ColumnElement[bytes]] = []
    if "identify" in send:
        columns.append(identify_sql(dialect, options, utf8).label("identify"))
    if "track" in send:
        columns.append(track_sql(dialect, options, utf8).label("track"))
    return columns
