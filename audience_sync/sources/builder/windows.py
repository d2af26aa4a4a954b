"""Time in the builder: the as-of instant, and the windows (``within``, ``between``) relative to it.

Every builder computation is evaluated as of one instant. An event counts when its timestamp is at or before
that instant and, with a window, inside it: ``within = "30d"`` keeps ``as_of - 30d < timestamp <= as_of``,
``between = ["90d", "30d"]`` keeps ``as_of - 90d < timestamp <= as_of - 30d``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+)\s*(m|h|d|w)\s*$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_HINT = "a whole number of minutes, hours, days or weeks, like '30m', '12h', '30d' or '2w'"


def parse_window_duration(text: object) -> int:
    """Seconds in a window duration such as ``"30d"`` (units ``m``, ``h``, ``d``, ``w``); ValueError otherwise.

    Zero (``"0d"``) is accepted here; :func:`parse_window` decides where it makes sense.
    """
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration: use {DURATION_HINT}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Window:
    """Events with ``as_of - older < timestamp <= as_of - newer`` (seconds)."""

    older: int
    newer: int = 0

    def bounds(self, as_of: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """The exclusive lower and inclusive upper instants of the window at ``as_of``."""
        return as_of - dt.timedelta(seconds=self.older), as_of - dt.timedelta(seconds=self.newer)


def parse_window(within: object, between: object) -> Window | None:
    """The window given by ``within`` or ``between`` (at most one of them), None for none; ValueError naming
    what is wrong (a bad duration, an empty window, both given)."""
    if within is not None and between is not None:
        raise ValueError("give `within` or `between`, not both")
    if within is not None:
        seconds = parse_window_duration(within)
        if seconds == 0:
            raise ValueError(f"{within!r} is an empty window: it must be longer than zero")
        return Window(seconds)
    if between is not None:
        if not isinstance(between, list) or len(between) != 2:
            raise ValueError(f"{between!r} must be a list of two durations, the older first, like ['90d', '30d']")
        older, newer = (parse_window_duration(b) for b in between)
        if older <= newer:
            raise ValueError(
                f"{between!r} is an empty window: the first duration (how far back it starts) must be longer "
                f"than the second (how far back it ends)"
            )
        return Window(older, newer)
    return None


def as_utc(instant: dt.datetime) -> dt.datetime:
    """``instant`` in UTC; a naive datetime is taken to be UTC already."""
    return instant.replace(tzinfo=dt.UTC) if instant.tzinfo is None else instant.astimezone(dt.UTC)


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 instant (``2017-04-01T00:00:00Z``, ``2017-04-01 12:00:00+02:00``, ``2017-04-01``) in UTC.

    A time without an offset is UTC. ValueError when the text is not such an instant.
    """
    raw = text.strip()
    try:
        parsed = dt.datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 instant like '2017-04-01T00:00:00Z'") from None
    return as_utc(parsed)


def sqlite_instant(instant: dt.datetime) -> str:
    """``instant`` as SQLite's ``strftime('%Y-%m-%d %H:%M:%f', ...)`` renders timestamps, floored to the
    millisecond (SQLite keeps no finer time): text comparison is then time comparison."""
    utc = as_utc(instant)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"
