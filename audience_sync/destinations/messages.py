"""Engage-shaped messages (Segment spec) for a change: the identify call and the track events."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..changes import Change

ENTERED_EVENT = "Audience Entered"
EXITED_EVENT = "Audience Exited"
TRAIT_EVENT = "Trait Computed"


def personas_context(change: Change, *, space_id: str = "audience-sync") -> dict[str, str]:
    """``context.personas`` as Engage sets it, with ids derived from the key so they are stable."""
    prefix = "aud" if change.computation_class == "audience" else "tra"
    return {
        "computation_class": change.computation_class,
        "computation_id": f"{prefix}_{change.computation_key}",
        "computation_key": change.computation_key,
        "namespace": f"spa_{space_id}",
        "space_id": space_id,
    }


def _timestamp(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def identify(change: Change, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The identify call Engage sends for a change: one computation key, plus ``email`` when known."""
    traits: dict[str, Any] = {change.computation_key: change.new_value}
    if change.email is not None:
        traits["email"] = change.email
    return {
        "type": "identify",
        "userId": change.user_id,
        "traits": traits,
        "context": {"personas": personas_context(change)},
        "messageId": change.message_id,
        "timestamp": _timestamp(now),
    }


def event_name(
    change: Change, *, entered: str = ENTERED_EVENT, exited: str = EXITED_EVENT, trait: str = TRAIT_EVENT
) -> str:
    """The track event for a change: entered/exited for audiences, computed for traits."""
    if change.computation_class == "trait":
        return trait
    return entered if change.new_value is True else exited


def track(change: Change, *, now: dt.datetime | None = None, event: str | None = None) -> dict[str, Any]:
    """The track event Engage sends for a change, with the email in ``context.traits``."""
    key_name = "audience_key" if change.computation_class == "audience" else "trait_key"
    context: dict[str, Any] = {"personas": personas_context(change)}
    if change.email is not None:
        context["traits"] = {"email": change.email}
    return {
        "type": "track",
        "userId": change.user_id,
        "event": event or event_name(change),
        "properties": {key_name: change.computation_key, change.computation_key: change.new_value},
        "context": context,
        "messageId": change.message_id + "-t",
        "timestamp": _timestamp(now),
    }
