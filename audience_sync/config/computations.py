"""The ``[[audiences]]`` and ``[[traits]]`` tables, and :class:`Computation`, what a run computes for one of them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from ..keys import is_valid_key, trait_key
from .sections import ScheduleConfig, _schedule_with_trigger, _Section, parse_duration

if TYPE_CHECKING:
    from ..sources.builder.definitions import Definition


#: how a trait's value is read from a CSV field, which has no type of its own (see ``sources/files.py``)
ValueType = Literal["text", "number", "boolean", "json"]


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
    def label(self) -> str:
        """How errors and messages name it: ``audience 'VIP' (vip)``."""
        return f"{self.computation_class} {self.name!r} ({self.key})"

    @property
    def definition_hash(self) -> str:
        """A short fingerprint of the definition, recorded so that a changed query can be noticed."""
        text = f"{self.computation_class}\0{self.sql or ''}\0{self.file or ''}"
        if self.value_type is not None:  # absent: the fingerprint of a definition written before it existed
            text += f"\0{self.value_type}"
        if self.builder is not None:
            text += f"\0{self.builder.text}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]
