"""The ``[[destinations]]`` tables, one validated model per destination type; secrets read from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from .secrets import EnvSecret, HeaderSecret
from .sections import ScheduleConfig, _schedule_with_trigger, _Section

#: the longest destination name: it is part of the state's keys (indexed on PostgreSQL together with a key and a
#: user id, ``store/normalize.MAX_USER_ID_BYTES``), of lock names and of the JSONL sink's default file name
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
        """Identifiers a change needs before this destination can take it (``user_id`` always exists), as the
        destination registry records them for this type."""
        from ..destinations.registry import destination_type  # the registry imports this module

        return destination_type(getattr(self, "type", "")).required_identifiers


class GistDestination(_DestinationBase):
    type: Literal["gist"]
    api_key_env: HeaderSecret
    endpoint: str = "https://api.getgist.com"
    #: how a list value is sent as a custom property (Gist's take text, numbers, booleans and dates, not lists):
    #: ``join`` its items as text joined with ", " (segments can filter with "contains"), ``json`` its JSON text
    list_values: Literal["join", "json"] = "join"

    @property
    def api_key(self) -> SecretStr:
        """The API key read from the environment; print it only through ``get_secret_value``."""
        return self.api_key_env.secret


class JsonlDestination(_DestinationBase):
    type: Literal["jsonl"]
    path: str | None = None

    @property
    def output_path(self) -> Path:
        """Where the sink appends its lines: ``path``, or ``out/<name>.jsonl`` in the working directory."""
        return Path(self.path) if self.path else Path("out") / f"{self.name}.jsonl"


class SegmentDestination(_DestinationBase):
    type: Literal["segment"]
    write_key_env: HeaderSecret
    endpoint: str = "https://api.segment.io"
    integrations: dict[str, bool] | None = None
    max_batch_messages: int = Field(default=2_500, ge=1, le=2_500)
    max_batch_bytes: int = Field(default=475_000, ge=1_000, le=500_000)
    chunk_size: int = Field(default=10_000, ge=1, le=100_000)

    @property
    def write_key(self) -> SecretStr:
        """The write key read from the environment."""
        return self.write_key_env.secret


class WebhookDestination(_DestinationBase):
    type: Literal["webhook"]
    url: str = Field(min_length=1)
    #: header name -> environment variable holding its value (for tokens)
    headers_env: dict[str, HeaderSecret] = Field(default_factory=dict)
    #: environment variable holding the HMAC-SHA256 key; the signature goes in ``signature_header``
    signing_secret_env: EnvSecret | None = None
    signature_header: str = "X-Signature-256"
    #: 0 posts one message per request; N posts ``{"batch": [...]}`` with up to N messages
    batch_size: int = Field(default=0, ge=0, le=10_000)
    integrations: dict[str, bool] | None = None

    @property
    def secret_headers(self) -> dict[str, SecretStr]:
        """Header name -> value, read from the environment."""
        return {h: v.secret for h, v in self.headers_env.items()}

    @property
    def signing_secret(self) -> SecretStr | None:
        """The HMAC key, when signing is configured."""
        return self.signing_secret_env.secret if self.signing_secret_env is not None else None
