"""Crontab expressions with cron's meaning, as APScheduler 3 triggers.

APScheduler 3 numbers weekdays from Monday (0) while cron numbers them from Sunday (0 and 7), and it ANDs a
restricted day of month with a restricted day of week where cron ORs them. Expressions are translated here so
that ``0 9 * * 1`` fires on Mondays, as in a crontab, and the one form that cannot be translated is refused.

Daylight saving time follows Vixie cron (the cron of Debian, Ubuntu and RHEL), not APScheduler, whose cron
trigger fires ``30 2 * * *`` twice on the autumn day in Europe/Berlin:

- a wall-clock time that happens twice (autumn, clocks go back): a job with a fixed minute and hour fires at
  the first occurrence only; a job whose minute or hour field starts with ``*`` (``*/30 * * * *``,
  ``0 * * * *``) fires at both, as it fires at every such time by the clock;
- a wall-clock time that does not happen (spring, clocks go forward): a fixed-time job fires once, right after
  the jump (``30 2 * * *`` in Europe/Berlin at 03:00 CEST on 2026-03-29); a ``*`` job skips it.

This module imports APScheduler: only the scheduler and the validation of a ``cron`` key load it.
"""

from __future__ import annotations

import datetime as dt
import re

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

#: walls up to this far before a start can still fire after it (the second pass of a repeated hour); cron
#: also treats clock changes of up to three hours as daylight saving time
_MAX_SHIFT = dt.timedelta(hours=3)
_TICK = dt.timedelta(microseconds=1)

_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_TOKEN = re.compile(r"^(\*|[0-7a-z]{1,3}(?:-[0-7a-z]{1,3})?)(?:/(\d+))?$")


def _day(text: str, expr: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7
    if text in _CRON_DAYS:
        return _CRON_DAYS.index(text)
    raise ValueError(f"{expr!r}: {text!r} is not a day of the week (0-7 or sun-sat)")


def _day_of_week(field: str, expr: str) -> str:
    """Cron's day-of-week field as APScheduler 3 names (``mon,wed``), or ``*``."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for token in field.lower().split(","):
        match = _TOKEN.match(token)
        if not match:
            raise ValueError(f"{expr!r}: {token!r} is not a day-of-week item")
        base, step = match.group(1), int(match.group(2) or 1)
        if step < 1:
            raise ValueError(f"{expr!r}: the step in {token!r} must be at least 1")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, b = base.split("-")
            first, last = _day(a, expr), (7 if b == "7" else _day(b, expr))
            if first > last:
                raise ValueError(f"{expr!r}: the range {base!r} runs backwards")
        else:
            first = last = _day(base, expr)
        days.update(d % 7 for d in range(first, last + 1, step))
    aps_order = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    return ",".join(name for name in aps_order if _CRON_DAYS.index(name) in days)


def _fields(expr: str) -> dict[str, str]:
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} is not a crontab expression of five fields, like '0 */3 * * *'")
    minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        raise ValueError(
            f"{expr!r} restricts both the day of month and the day of week (cron runs when either matches); "
            f"use two schedules or restrict only one"
        )
    return {
        "minute": minute,
        "hour": hour,
        "day": day,
        "month": month,
        "day_of_week": _day_of_week(day_of_week, expr),
    }


class CrontabTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler ships no type hints
    """Fires when a crontab line would in ``timezone``, with Vixie cron's rule on daylight saving days.

    The matching times are found on the wall clock (a :class:`CronTrigger` in UTC, where no day is longer
    than another, does the calendar arithmetic); each wall time then becomes zero, one or two instants in
    ``timezone`` as the module docstring says.
    """

    def __init__(self, expr: str, timezone: dt.tzinfo, jitter: int | None = None) -> None:
        fields = _fields(expr)
        self.expr = expr
        self.timezone = timezone
        self.jitter = jitter
        self._wall = CronTrigger(**fields, timezone=dt.UTC)
        #: cron's "wildcard" job: its minute or hour field starts with ``*``
        self.wildcard = expr.split()[0].startswith("*") or expr.split()[1].startswith("*")

    def __str__(self) -> str:
        return f"cron[{self.expr!r}, {self.timezone}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger ({self.expr!r}, timezone={str(self.timezone)!r}, jitter={self.jitter})>"

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
        """The first fire time after ``previous_fire_time`` (or at or after ``now`` when there is none), in
        ``timezone``, jitter applied; None when the expression never fires again."""
        # arithmetic in UTC: adding to a local time is wall-clock arithmetic, wrong across a clock change
        start = now.astimezone(dt.UTC)
        if previous_fire_time is not None:  # as CronTrigger does: never the previous fire time again
            previous = previous_fire_time.astimezone(dt.UTC)
            start = min(start, previous + _TICK)
            if start == previous:
                start += _TICK
        fire = self._first_at_or_after(start)
        if fire is None:
            return None
        result: dt.datetime | None = self._apply_jitter(fire.astimezone(self.timezone), self.jitter, now)
        return result

    def _first_at_or_after(self, start: dt.datetime) -> dt.datetime | None:
        wall = start.astimezone(self.timezone).replace(tzinfo=None)
        offsets = {(start + d).astimezone(self.timezone).utcoffset() for d in (-_MAX_SHIFT, _MAX_SHIFT)}
        if len(offsets) > 1:  # a clock change near ``start``: an earlier wall time may fire after it
            wall -= _MAX_SHIFT
        candidate = self._wall.get_next_fire_time(None, wall.replace(tzinfo=dt.UTC))
        best: dt.datetime | None = None
        while candidate is not None:
            bound, instants = self._instants(candidate.replace(tzinfo=None))
            if best is not None and bound >= best:
                break  # every later wall time fires at or after ``bound``
            for instant in instants:
                if instant >= start and (best is None or instant < best):
                    best = instant
            candidate = self._wall.get_next_fire_time(None, candidate + _TICK)
        return best

    def _instants(self, wall: dt.datetime) -> tuple[dt.datetime, list[dt.datetime]]:
        """When the wall time ``wall`` fires (UTC), and a lower bound for every later wall time's instants."""
        first = wall.replace(tzinfo=self.timezone, fold=0).astimezone(dt.UTC)
        second = wall.replace(tzinfo=self.timezone, fold=1).astimezone(dt.UTC)
        if first == second:
            return first, [first]
        if first < second:  # the wall time happens twice: the clocks went back
            return first, [first, second] if self.wildcard else [first]
        # the wall time does not happen: the clocks jumped over it, at an instant between ``second`` and ``first``
        jump = self._jump(second, first)
        return jump, [] if self.wildcard else [jump]

    def _jump(self, before: dt.datetime, after: dt.datetime) -> dt.datetime:
        """The instant in ``(before, after]`` at which ``timezone`` changes its UTC offset (to the second)."""
        new_offset = after.astimezone(self.timezone).utcoffset()
        lo, hi = int(before.timestamp()), int(after.timestamp())
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if dt.datetime.fromtimestamp(mid, self.timezone).utcoffset() == new_offset:
                hi = mid
            else:
                lo = mid
        return dt.datetime.fromtimestamp(hi, dt.UTC)


def cron_trigger(expr: str, timezone: dt.tzinfo, jitter: int | None = None) -> CrontabTrigger:
    """The APScheduler trigger that fires when the five-field crontab ``expr`` would; ValueError when invalid.

    Day-of-week numbers and names follow cron (0 and 7 are Sunday). An expression restricting both the day of
    month and the day of week is refused: cron fires when either matches, which APScheduler cannot express.
    Daylight saving days follow Vixie cron (see the module docstring).
    """
    return CrontabTrigger(expr, timezone, jitter)
