"""Configuration: a TOML file turned into a frozen, validated :class:`Config`.

This is the only module that reads ``os.environ``. Secrets are named in the file by ``*_env`` keys and read
from the environment once, here; they live in the config as :class:`pydantic.SecretStr` and are never printed.
Every problem in a file is reported at once, each with the file and the key path; an unknown key is an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError, KeyCollisionError
from .keys import is_valid_key, trait_key
from .redact import remember, url_secrets

#: how a trait's value is read from a CSV field, which has no type of its own (see ``sources/files.py``)
ValueType = Literal["text", "number", "boolean", "json"]

if TYPE_CHECKING:
    from .sources.builder.definitions import Definition

DEFAULT_CONFIG_PATH = "config/audience_sync.toml"
CONFIG_ENV_VAR = "AUDIENCE_SYNC_CONFIG"
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
    model_config = ConfigDict(frozen=True, extra="forbid")


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

    webhook_url_env: str | None = None
    #: alert when more than this share of a destination's changes in a run failed or stayed pending
    max_failed_share: float = Field(default=0.1, ge=0, le=1)
    _webhook_url: SecretStr | None = PrivateAttr(default=None)

    @field_validator("webhook_url_env")
    @classmethod
    def _env_var_is_set(cls, var: str | None, info: ValidationInfo) -> str | None:
        if var is not None:
            _secret_from_env(var, "webhook_url_env", info)
        return var

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> AlertsConfig:
        if self.webhook_url_env is not None:
            self._webhook_url = _secret_from_env(self.webhook_url_env, "webhook_url_env", info)
        return self

    @property
    def webhook_url(self) -> SecretStr | None:
        """The alert webhook's URL (a secret: it authorises posting), or None when alerts are off."""
        return self._webhook_url


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


#: the longest destination name: it is part of the state's keys (indexed on PostgreSQL together with a key and a
#: user id, ``sources/rows.MAX_USER_ID_BYTES``), of lock names and of the JSONL sink's default file name
#: (``<name>.jsonl`` must fit the 255 bytes most file systems allow)
MAX_DESTINATION_NAME = 200


class _DestinationBase(_Section):
    #: letters, digits, ``_ . -``: safe in file names, lock names and metric labels as it is
    name: str = Field(min_length=1, max_length=MAX_DESTINATION_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    send: tuple[Literal["identify", "track"], ...] = ("identify",)
    max_retries: int = Field(default=5, ge=0, le=100)
    rate_limit: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout: float = Field(default=10.0, gt=0)
    chunk_size: int = Field(default=1_000, ge=1, le=100_000)
    # Engage-shaped messages: context.personas ids and track event names
    space_id: str = Field(default="audience-sync", min_length=1)
    entered_event: str = "Audience Entered"
    exited_event: str = "Audience Exited"
    trait_event: str = "Trait Computed"
    #: this destination's own schedule for `audience-sync schedule` (default: the [schedule] table)
    schedule: ScheduleConfig | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule_has_trigger(cls, value: ScheduleConfig | None) -> ScheduleConfig | None:
        return _schedule_with_trigger(value)

    @field_validator("send")
    @classmethod
    def _send_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one of 'identify', 'track'")
        return value

    @property
    def required_identifiers(self) -> tuple[str, ...]:
        """Identifiers a change needs before this destination can take it (``user_id`` always exists)."""
        return ()


def _secret_from_env(var: str, field: str, info: ValidationInfo, *, header: bool = False) -> SecretStr:
    """The secret in environment variable ``var``; ValueError naming it (never its value) when it is unset or
    empty, or, for a secret sent in an HTTP header (``header``), holds a character a header cannot carry."""
    environ: Mapping[str, str] = (info.context or {}).get("environ", {})
    value = environ.get(var)
    if not value:
        raise ValueError(f"environment variable {var} (named by `{field}`) is not set")
    if header and not (value.isascii() and value.isprintable()):
        raise ValueError(
            f"environment variable {var} (named by `{field}`) holds a character an HTTP header cannot carry "
            f"(only printable ASCII can: check it for accents, a line break or a stray control character)"
        )
    return SecretStr(value)


class GistDestination(_DestinationBase):
    type: Literal["gist"]
    api_key_env: str = Field(min_length=1)
    endpoint: str = "https://api.getgist.com"
    _api_key: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("api_key_env")
    @classmethod
    def _env_var_is_set(cls, var: str, info: ValidationInfo) -> str:
        _secret_from_env(var, "api_key_env", info, header=True)
        return var

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> GistDestination:
        self._api_key = _secret_from_env(self.api_key_env, "api_key_env", info, header=True)
        return self

    @property
    def api_key(self) -> SecretStr:
        """The API key read from the environment; print it only through ``get_secret_value``."""
        return self._api_key

    @property
    def required_identifiers(self) -> tuple[str, ...]:
        return ("email",)


class JsonlDestination(_DestinationBase):
    type: Literal["jsonl"]
    path: str | None = None

    @property
    def output_path(self) -> Path:
        """Where the sink appends its lines: ``path``, or ``out/<name>.jsonl`` in the working directory."""
        return Path(self.path) if self.path else Path("out") / f"{self.name}.jsonl"


class SegmentDestination(_DestinationBase):
    type: Literal["segment"]
    write_key_env: str = Field(min_length=1)
    endpoint: str = "https://api.segment.io"
    integrations: dict[str, bool] | None = None
    max_batch_messages: int = Field(default=2_500, ge=1, le=2_500)
    max_batch_bytes: int = Field(default=475_000, ge=1_000, le=500_000)
    chunk_size: int = Field(default=10_000, ge=1, le=100_000)
    _write_key: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("write_key_env")
    @classmethod
    def _env_var_is_set(cls, var: str, info: ValidationInfo) -> str:
        _secret_from_env(var, "write_key_env", info, header=True)
        return var

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> SegmentDestination:
        self._write_key = _secret_from_env(self.write_key_env, "write_key_env", info, header=True)
        return self

    @property
    def write_key(self) -> SecretStr:
        """The write key read from the environment."""
        return self._write_key


class WebhookDestination(_DestinationBase):
    type: Literal["webhook"]
    url: str = Field(min_length=1)
    #: header name -> environment variable holding its value (for tokens)
    headers_env: dict[str, str] = Field(default_factory=dict)
    #: environment variable holding the HMAC-SHA256 key; the signature goes in ``signature_header``
    signing_secret_env: str | None = None
    signature_header: str = "X-Signature-256"
    #: 0 posts one message per request; N posts ``{"batch": [...]}`` with up to N messages
    batch_size: int = Field(default=0, ge=0, le=10_000)
    integrations: dict[str, bool] | None = None
    _secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("headers_env")
    @classmethod
    def _header_vars_are_set(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for var in value.values():
            _secret_from_env(var, "headers_env", info, header=True)
        return value

    @field_validator("signing_secret_env")
    @classmethod
    def _signing_var_is_set(cls, var: str | None, info: ValidationInfo) -> str | None:
        if var is not None:
            _secret_from_env(var, "signing_secret_env", info)
        return var

    @model_validator(mode="after")
    def _resolve_secrets(self, info: ValidationInfo) -> WebhookDestination:
        self._secrets = {h: _secret_from_env(v, "headers_env", info, header=True) for h, v in self.headers_env.items()}
        if self.signing_secret_env:
            self._secrets[""] = _secret_from_env(self.signing_secret_env, "signing_secret_env", info)
        return self

    @property
    def secret_headers(self) -> dict[str, SecretStr]:
        """Header name -> value, read from the environment."""
        return {h: v for h, v in self._secrets.items() if h}

    @property
    def signing_secret(self) -> SecretStr | None:
        """The HMAC key, when signing is configured."""
        return self._secrets.get("")


AnyDestination = GistDestination | SegmentDestination | WebhookDestination | JsonlDestination
_DESTINATION_TYPES = "'gist', 'segment', 'webhook' or 'jsonl'"
DestinationConfig = Annotated[AnyDestination, Field(discriminator="type")]


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


class _ComputationBase(_Section):
    #: the key of the builder's definition table: `condition` (audiences) or `compute` (traits)
    builder_field: ClassVar[str] = ""
    name: str = Field(min_length=1)
    key: str | None = None
    sql: str | None = None
    file: str | None = None
    destinations: tuple[str, ...] | None = None
    #: overrides [guard] max_exit_share for this computation (1 turns the share check off)
    max_exit_share: float | None = Field(default=None, gt=0, le=1)
    #: this computation's own schedule for `audience-sync schedule` (default: its destinations' or [schedule])
    schedule: ScheduleConfig | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule_has_trigger(cls, value: ScheduleConfig | None) -> ScheduleConfig | None:
        return _schedule_with_trigger(value)

    @model_validator(mode="after")
    def _check(self) -> _ComputationBase:
        given = [f for f in ("sql", "file", self.builder_field) if getattr(self, f, None) is not None]
        if len(given) != 1:
            found = f" (found {' and '.join(f'`{f}`' for f in given)})" if given else ""
            raise ValueError(f"give exactly one of `sql` or `file` or `{self.builder_field}`{found}")
        if self.key is not None and not is_valid_key(self.key):
            raise ValueError(f"key {self.key!r} must be snake_case: lowercase letters, digits and underscores")
        if self.key is None and not trait_key(self.name):
            raise ValueError(f"name {self.name!r} has no letter or digit to make a key from; set `key`")
        if self.file is not None and Path(self.file).suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise ValueError(f"file {self.file!r} must end in .csv or .parquet")
        return self


class AudienceConfig(_ComputationBase):
    builder_field: ClassVar[str] = "condition"
    #: the builder's condition (see sources/builder/definitions.py), validated in _resolve
    condition: dict[str, Any] | None = None
    #: flap damping: send ``false`` only once a member has been out this long (e.g. "24h")
    exit_after: str | None = None

    @field_validator("exit_after")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class TraitConfig(_ComputationBase):
    builder_field: ClassVar[str] = "compute"
    #: the builder's computed-trait form (see sources/builder/definitions.py), validated in _resolve
    compute: dict[str, Any] | None = None
    #: how a CSV file's value field becomes the value (CSV has no types): "text" (default), "number",
    #: "boolean" or "json"; a query's or a Parquet file's column types decide for themselves
    value_type: ValueType | None = None

    @model_validator(mode="after")
    def _value_type_is_for_csv(self) -> TraitConfig:
        if self.value_type is not None and (self.file is None or Path(self.file).suffix.lower() != ".csv"):
            raise ValueError(
                f"value_type applies to CSV files only (a query's or a Parquet file's column types decide); "
                f"remove it or read the values from a .csv file (value_type = {self.value_type!r})"
            )
        return self


class _RawConfig(_Section):
    state: StateConfig = StateConfig()
    source: SourceConfig = SourceConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    guard: GuardConfig = GuardConfig()
    alerts: AlertsConfig = AlertsConfig()
    retention: RetentionConfig = RetentionConfig()
    events: EventsConfig = EventsConfig()
    profiles: ProfilesConfig = ProfilesConfig()
    destinations: tuple[DestinationConfig, ...] = ()
    audiences: tuple[AudienceConfig, ...] = ()
    computed_traits: tuple[TraitConfig, ...] = ()


ComputationClass = Literal["audience", "trait"]


@dataclass(frozen=True)
class Computation:
    """One audience or computed trait, resolved: its key, where its rows come from, where it goes."""

    key: str
    name: str
    computation_class: ComputationClass
    sql: str | None
    file: str | None
    destinations: tuple[str, ...]
    max_exit_share: float = 0.5
    #: seconds a member must stay out before ``false`` is sent (flap damping); None sends at once
    exit_after: float | None = None
    #: its own schedule for `audience-sync schedule`, if the config gives one
    schedule: ScheduleConfig | None = None
    #: a CSV trait's ``value_type`` (None: text)
    value_type: ValueType | None = None
    #: a builder definition (audience `condition` or trait `compute`) instead of `sql` or `file`
    builder: Definition | None = None

    @property
    def definition_hash(self) -> str:
        """A short fingerprint of the definition, recorded so that a changed query can be noticed."""
        text = f"{self.computation_class}\0{self.sql or ''}\0{self.file or ''}"
        if self.value_type is not None:  # absent: the fingerprint of a definition written before it existed
            text += f"\0{self.value_type}"
        if self.builder is not None:
            text += f"\0{self.builder.text}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``path`` is the file it came from (for messages)."""

    path: str
    state_url: str
    source_url: str
    source_chunk_size: int
    schedule: ScheduleConfig
    guard: GuardConfig
    destinations: tuple[AnyDestination, ...]
    computations: tuple[Computation, ...]
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: ``[source] pushdown``: None runs queries inside the state database whenever it is the source
    source_pushdown: bool | None = None
    #: ``[events]`` and ``[profiles]``: the tables builder computations read on the source
    events: EventsConfig = field(default_factory=EventsConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    #: ``[state] lock_lease`` in seconds
    lock_lease: float = 300.0

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, as read (the forms they take on the wire are
        :func:`audience_sync.redact.forms`'s business): API keys, write keys, webhook header values (and the
        credential after a scheme such as ``Bearer``), signing secrets, the alert webhook's URL, and the
        passwords in the state and source URLs, query-string ones (``?password=``) included."""
        found: list[str] = [*url_secrets(self.state_url), *url_secrets(self.source_url)]
        if self.alerts.webhook_url is not None:
            found += url_secrets(self.alerts.webhook_url.get_secret_value(), whole=True)
        for dest in self.destinations:
            if isinstance(dest, GistDestination):
                found.append(dest.api_key.get_secret_value())
            elif isinstance(dest, SegmentDestination):
                found.append(dest.write_key.get_secret_value())
            elif isinstance(dest, WebhookDestination):
                for value in (v.get_secret_value() for v in dest.secret_headers.values()):
                    found += [value, value.partition(" ")[2]]
                if dest.signing_secret is not None:
                    found.append(dest.signing_secret.get_secret_value())
        return [s for s in found if s]

    def destination(self, name: str) -> AnyDestination:
        """The destination called ``name``; ConfigError naming the known ones otherwise."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none"
        raise ConfigError(f"{self.path}: no destination named {name!r} (configured: {known})", path=self.path)

    def find_computation(self, key: str) -> Computation | None:
        """The computation with trait key (or name) ``key``, or None."""
        return next((c for c in self.computations if key in (c.key, c.name)), None)

    def computation(self, key: str) -> Computation:
        """The computation with trait key (or name) ``key``; ConfigError naming the known keys otherwise."""
        comp = self.find_computation(key)
        if comp is not None:
            return comp
        known = ", ".join(c.key for c in self.computations) or "none"
        raise ConfigError(f"{self.path}: no audience or trait with key {key!r} (configured: {known})", path=self.path)


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    """``$AUDIENCE_SYNC_CONFIG`` if set, else ``config/audience_sync.toml``."""
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH


def _location(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> str:
    """Render a pydantic error location as a TOML key path, naming array items by their `name`."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" ({node['name']!r})"
            parts.append(label)
        elif isinstance(node, dict) and item not in node and item == node.get("type"):
            continue  # the discriminator tag of a destination: already clear from the item's name
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _format_errors(path: str, error: ValidationError, data: Mapping[str, Any]) -> list[str]:
    problems = []
    for err in error.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the config reference)"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown destination type {err['ctx']['tag']!r} (expected {err['ctx']['expected_tags']})"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing `type` (expected {_DESTINATION_TYPES})"
        problems.append(f"{path}: {_location(err['loc'], data)}: {msg}")
    return problems


def _resolve(path: str, raw: _RawConfig) -> Config:
    problems: list[str] = []
    collisions: list[tuple[str, tuple[str, str]]] = []
    dest_names = [d.name for d in raw.destinations]
    for name in sorted({n for n in dest_names if dest_names.count(n) > 1}):
        problems.append(f"{path}: destinations: two destinations are named {name!r}")

    computations: list[Computation] = []
    seen: dict[str, str] = {}
    entries: list[tuple[str, ComputationClass, _ComputationBase]] = [
        *((f"audiences[{i}]", "audience", a) for i, a in enumerate(raw.audiences)),
        *((f"computed_traits[{i}]", "trait", t) for i, t in enumerate(raw.computed_traits)),
    ]
    for where, cls, entry in entries:
        key = entry.key or trait_key(entry.name)
        if key in seen:
            collisions.append((key, (seen[key], entry.name)))
            problems.append(
                f"{path}: {where} ({entry.name!r}): trait key {key!r} is already used by {seen[key]!r}; "
                f"give one of them an explicit `key`"
            )
        seen[key] = entry.name
        targets = entry.destinations if entry.destinations is not None else tuple(dest_names)
        for target in targets:
            if target not in dest_names:
                problems.append(
                    f"{path}: {where} ({entry.name!r}).destinations: no destination named {target!r} "
                    f"(configured: {', '.join(dest_names) or 'none'})"
                )
        share = entry.max_exit_share if entry.max_exit_share is not None else raw.guard.max_exit_share
        damping = getattr(entry, "exit_after", None)
        builder = _builder_definition(path, where, entry, problems)
        computations.append(
            Computation(
                key,
                entry.name,
                cls,
                entry.sql,
                entry.file,
                tuple(targets),
                share,
                parse_duration(damping) if damping else None,
                entry.schedule,
                getattr(entry, "value_type", None),
                builder,
            )
        )
    problems += _builder_references(path, entries, computations)
    if collisions:
        key, names = collisions[0]
        raise KeyCollisionError("invalid configuration:\n  " + "\n  ".join(problems), key=key, names=names)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), path=path, problems=problems)
    return Config(
        path=path,
        state_url=raw.state.url,
        source_url=raw.source.url or raw.state.url,
        source_chunk_size=raw.source.chunk_size,
        schedule=raw.schedule,
        guard=raw.guard,
        destinations=raw.destinations,
        computations=tuple(computations),
        alerts=raw.alerts,
        retention=raw.retention,
        source_pushdown=raw.source.pushdown,
        lock_lease=parse_duration(raw.state.lock_lease),
        events=raw.events,
        profiles=raw.profiles,
    )


def _nul_strings(node: Any, where: str) -> Iterator[str]:
    """The key paths of strings holding a NUL byte (TOML can spell one ``\\u0000``)."""
    if isinstance(node, str) and "\x00" in node:
        yield where
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _nul_strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nul_strings(value, f"{where}[{i}]")


def _builder_definition(path: str, where: str, entry: _ComputationBase, problems: list[str]) -> Definition | None:
    """The entry's builder definition (`condition` / `compute`), parsed; its problems appended, named by field."""
    raw = getattr(entry, entry.builder_field, None)
    if raw is None:
        return None
    # imported here: sources/ imports this module, which must be complete first
    from .sources.builder import definitions

    parse = definitions.parse_condition if entry.builder_field == "condition" else definitions.parse_compute
    definition, found = parse(raw, entry.builder_field)
    problems += [f"{path}: {where} ({entry.name!r}).{field_path}: {message}" for field_path, message in found]
    return definition


def _builder_references(
    path: str, entries: list[tuple[str, ComputationClass, _ComputationBase]], comps: list[Computation]
) -> list[str]:
    """Problems with `in_audience` keys: unknown, not a condition audience, or a cycle."""
    from .sources.builder import definitions

    audiences = {
        c.key: c.builder for c in comps if isinstance(c.builder, definitions.AudienceDefinition)
    }
    if not any(definitions.references(d.condition) for d in audiences.values()):
        return []
    others = {
        c.key: ("a computed trait" if c.computation_class == "trait" else f"a `{'sql' if c.sql else 'file'}` audience")
        for c in comps
        if c.key not in audiences
    }
    places = {c.key: f"{where} ({entry.name!r})" for (where, _, entry), c in zip(entries, comps, strict=True)}
    return [
        f"{path}: {places[key]}.{field_path}: {message}"
        for key, field_path, message in definitions.check_references(audiences, others)
    ]


def parse_config(text: str, *, path: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate TOML text into a :class:`Config`; ConfigError listing every problem with its key path.

    The config's secrets are remembered (:func:`audience_sync.redact.remember`), so that no text from outside
    shows them from then on."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path=path) from None
    # names, keys and message fields end up in the state database, whose PostgreSQL text holds no NUL byte
    problems = [f"{path}: {where}: contains a NUL byte (\\u0000)" for where in _nul_strings(data, "")]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), path=path, problems=problems)
    env = os.environ if environ is None else environ
    try:
        raw = _RawConfig.model_validate(data, context={"environ": env})
    except ValidationError as exc:
        problems = _format_errors(path, exc, data)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), path=path, problems=problems) from None
    config = _resolve(path, raw)
    remember(config.secret_values())
    return config


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path`` (default: :func:`default_config_path`).

    Guarantees: either a fully valid config whose secrets were all found in the environment, or a
    :class:`ConfigError` (exit code 2) listing every problem with the file and key path.
    """
    file = str(path) if path is not None else default_config_path(environ)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: config file not found (pass --config or set ${CONFIG_ENV_VAR})", path=file
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc}", path=file) from None
    return parse_config(text, path=file, environ=environ)
