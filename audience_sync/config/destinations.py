"""The ``[[destinations]]`` tables, one validated model per destination type; secrets read from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .sections import ScheduleConfig, _schedule_with_trigger, _secret_from_env, _Section

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


class GistDestination(_DestinationBase):
    type: Literal["gist"]
    api_key_env: str = Field(min_length=1)
    endpoint: str = "https://api.getgist.com"
    #: how a list value is sent as a custom property (Gist's take text, numbers, booleans and dates, not lists):
    #: ``join`` its items as text joined with ", " (segments can filter with "contains"), ``json`` its JSON text
    list_values: Literal["join", "json"] = "join"
    _api_key: SecretStr = PrivateAttr(default=SecretStr(""))

    @field_validator("api_key_env")
    @classmethod
    def _env_var_is_set(cls, var: str, info: ValidationInfo) -> str:
        _secret_from_env(var, "api_key_env", info, header=True, owner=info.data.get("name"))
        return var

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> GistDestination:
        self._api_key = _secret_from_env(self.api_key_env, "api_key_env", info, header=True, owner=self.name)
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
        _secret_from_env(var, "write_key_env", info, header=True, owner=info.data.get("name"))
        return var

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> SegmentDestination:
        self._write_key = _secret_from_env(self.write_key_env, "write_key_env", info, header=True, owner=self.name)
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
            _secret_from_env(var, "headers_env", info, header=True, owner=info.data.get("name"))
        return value

    @field_validator("signing_secret_env")
    @classmethod
    def _signing_var_is_set(cls, var: str | None, info: ValidationInfo) -> str | None:
        if var is not None:
            _secret_from_env(var, "signing_secret_env", info, owner=info.data.get("name"))
        return var

    @model_validator(mode="after")
    def _resolve_secrets(self, info: ValidationInfo) -> WebhookDestination:
        self._secrets = {
            h: _secret_from_env(v, "headers_env", info, header=True, owner=self.name)
            for h, v in self.headers_env.items()
        }
        if self.signing_secret_env:
            self._secrets[""] = _secret_from_env(self.signing_secret_env, "signing_secret_env", info, owner=self.name)
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
