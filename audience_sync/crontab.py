"""Crontab expressions with cron's meaning, turned into APScheduler 3 triggers.

APScheduler 3 numbers weekdays from Monday (0) while cron numbers them from Sunday (0 and 7), and it ANDs a
restricted day of month with a restricted day of week where cron ORs them. Expressions are translated here so
that ``0 9 * * 1`` fires on Mondays, as in a crontab, and the one form that cannot be translated is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # APScheduler is imported when a trigger is built: a plain run does not need it
    from apscheduler.triggers.cron import CronTrigger

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


def cron_trigger(expr: str, timezone: dt.tzinfo, jitter: int | None = None) -> CronTrigger:
    """The APScheduler trigger that fires when the five-field crontab ``expr`` would; ValueError when invalid.

    Day-of-week numbers and names follow cron (0 and 7 are Sunday). An expression restricting both the day of
    month and the day of week is refused: cron fires when either matches, which APScheduler cannot express.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"{expr!r} is not a crontab expression of five fields, like '0 */3 * * *'")
    minute, hour, day, month, day_of_week = fields
    if day != "*" and day_of_week != "*":
        raise ValueError(
            f"{expr!r} restricts both the day of month and the day of week (cron runs when either matches); "
            f"use two schedules or restrict only one"
        )
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_day_of_week(day_of_week, expr),
        timezone=timezone,
        jitter=jitter,
    )
