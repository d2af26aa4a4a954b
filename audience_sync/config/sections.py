"""The config file's plain sections: state, source, schedule, alerts, retention, guard, events, profiles."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .secrets import EnvSecret

DEFAULT_STATE_URL = "sqlite:///audience_sync.db"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"90s"``, ``"15m"``, ``"3h"`` or ``"1d"``; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like '30s', '15m', '3h' or '1d'")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


class _Section(BaseModel):
    #: ``defer_build``: a section's validator is compiled when the section is first validated on its own, not
    #: when its class is defined; loading a config validates the whole file with one validator, so the sections'
    #: own are never needed by a run (compiling them took about a tenth of importing the config)
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class StateConfig(_Section):
    url: str = DEFAULT_STATE_URL
    #: the run lock's lease (SQLite: how long a paused or vanished holder keeps the lock; renewed every third)
    lock_lease: str = "5m"

    @field_validator("lock_lease")
    @classmethod
    def _lease(cls, value: str) -> str:
        if parse_duration(value) < 1:
            raise ValueError(f"{value!r} is shorter than a second (a check of the lock stands for 0.1 s)")
        return value


class SourceConfig(_Section):
    url: str | None = None
    chunk_size: int = Field(default=10_000, ge=1, le=1_000_000)
    #: run each query inside the state database when it is also the source (None: whenever it is)
    pushdown: bool | None = None


class ScheduleConfig(_Section):
    every: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: str | None = None

    @field_validator("every", "jitter")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Europe/Berlin')") from None
        return value

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a crontab expression of five fields, like '0 */3 * * *'")
        from .crontab import cron_trigger  # loads APScheduler: only a config with a cron needs it

        try:
            cron_trigger(value, dt.UTC)
        except ValueError as exc:
            text = str(exc)
            raise ValueError(
                text if value in text else f"{value!r} is not a valid crontab expression: {text}"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give either `every` or `cron`, not both")
        return self

    @property
    def is_set(self) -> bool:
        """True when this schedule names a trigger (``every`` or ``cron``)."""
        return self.every is not None or self.cron is not None


def _schedule_with_trigger(value: ScheduleConfig | None) -> ScheduleConfig | None:
    if value is not None and not value.is_set:
        raise ValueError("a schedule needs `every` or `cron`")
    return value


class AlertsConfig(_Section):
    """Where and when to post incident alerts (Slack-compatible incoming webhook)."""

    webhook_url_env: EnvSecret | None = None
    #: alert when more than this share of a destination's changes in a run failed or stayed pending
    max_failed_share: float = Field(default=0.1, ge=0, le=1)

    @property
    def webhook_url(self) -> SecretStr | None:
        """The alert webhook's URL (a secret: it authorises posting), or None when alerts are off."""
        return self.webhook_url_env.secret if self.webhook_url_env is not None else None


class RetentionConfig(_Section):
    """Automatic pruning of old diff rows and runs after each run (off unless ``keep`` is set)."""

    keep: str | None = None

    @field_validator("keep")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def keep_seconds(self) -> float | None:
        """How long diff rows and runs are kept, in seconds; None keeps them forever."""
        return parse_duration(self.keep) if self.keep else None


class GuardConfig(_Section):
    """The mass-exit guard: hold a computation that would lose too many members in one run."""

    max_exit_share: float = Field(default=0.5, gt=0, le=1)
    min_size: int = Field(default=100, ge=0)


_TABLE_NAME = r"^[^.\s]+(\.[^.\s]+)?$"  # a table, or schema.table


class EventsConfig(_Section):
    """``[events]``: where the builder finds behaviour (one row per event); Segment's warehouse layout."""

    table: str = Field(default="tracks", pattern=_TABLE_NAME)
    user_id: str = Field(default="user_id", min_length=1)
    event: str = Field(default="event", min_length=1)
    timestamp: str = Field(default="timestamp", min_length=1)
    #: a JSON column holding the properties; "" reads each property from a column of the same name
    properties: str = "properties"


class ProfilesConfig(_Section):
    """``[profiles]``: one row per user, the universe of builder members, their email and traits."""

    table: str = Field(default="users", pattern=_TABLE_NAME)
    user_id: str = Field(default="id", min_length=1)
    #: "" when the table has no email column
    email: str = "email"
