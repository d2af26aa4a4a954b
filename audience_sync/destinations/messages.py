"""Engage-shaped messages (Segment spec) for a change: the identify call and the track events."""

from __future__ import annotations

from typing import Any

from ..model import Change, MessageOptions, timestamp

__all__ = ["MessageOptions", "timestamp"]  # their home is model.py; destinations import them from here too


DEFAULT = MessageOptions()


def personas_context(change: Change, options: MessageOptions = DEFAULT) -> dict[str, str]:
    """``context.personas`` as Engage sets it, with ids derived from the key so they are stable."""
    prefix = "aud" if change.computation_class == "audience" else "tra"
    return {
        "computation_class": change.computation_class,
        "computation_id": f"{prefix}_{change.computation_key}",
        "computation_key": change.computation_key,
        "namespace": options.space,
        "space_id": options.space,
    }


def _finish(
    message: dict[str, Any], change: Change, options: MessageOptions, ts: str | None, suffix: str = ""
) -> dict[str, Any]:
    message["messageId"] = change.message_id + suffix
    message["timestamp"] = ts or timestamp()
    if options.integrations is not None:
        message["integrations"] = options.integrations
    return message


def identify(change: Change, options: MessageOptions = DEFAULT, *, ts: str | None = None) -> dict[str, Any]:
    """The identify call Engage sends for a change: one computation key, plus ``email`` when known."""
    traits: dict[str, Any] = {change.computation_key: change.new_value}
    if change.email is not None:
        traits["email"] = change.email
    message = {
        "type": "identify",
        "userId": change.user_id,
        "traits": traits,
        "context": {"personas": personas_context(change, options)},
    }
    return _finish(message, change, options, ts)


def event_name(change: Change, options: MessageOptions = DEFAULT) -> str:
    """The track event for a change: entered/exited for audiences, computed for traits."""
    if change.computation_class == "trait":
        return options.trait_event
    return options.entered_event if change.new_value is True else options.exited_event


def track_properties(change: Change) -> dict[str, Any]:
    """``audience_key``/``trait_key`` and ``<key>: value``, as Engage's track events carry them."""
    key_name = "audience_key" if change.computation_class == "audience" else "trait_key"
    return {key_name: change.computation_key, change.computation_key: change.new_value}


def track(change: Change, options: MessageOptions = DEFAULT, *, ts: str | None = None) -> dict[str, Any]:
    """The track event Engage sends for a change, with the email in ``context.traits``."""
    context: dict[str, Any] = {"personas": personas_context(change, options)}
    if change.email is not None:
        context["traits"] = {"email": change.email}
    message = {
        "type": "track",
        "userId": change.user_id,
        "event": event_name(change, options),
        "properties": track_properties(change),
        "context": context,
    }
    return _finish(message, change, options, ts, suffix="-t")


def messages_for(
    change: Change, send: tuple[str, ...], options: MessageOptions = DEFAULT, *, ts: str | None = None
) -> list[dict[str, Any]]:
    """The messages a destination configured with ``send`` emits for a change, identify first."""
    out = []
    if "identify" in send:
        out.append(identify(change, options, ts=ts))
    if "track" in send:
        out.append(track(change, options, ts=ts))
    return out
