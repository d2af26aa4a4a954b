"""Configuration: a TOML file turned into a frozen, validated :class:`Config`.

This is the only module that reads ``os.environ``. Secrets are named in the file by ``*_env`` keys and read
from the environment once, here; they live in the config as :class:`pydantic.SecretStr` and are never printed.
Every problem in a file is reported at once, each with the file and the key path; an unknown key is an error.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    ValidationError,
)

from ..destinations.registry import TYPE_NAMES, AnyDestination, DestinationConfig
from ..errors import ConfigError, KeyCollisionError
from ..keys import trait_key
from ..redact import remember, url_secrets
from .computations import AudienceConfig, Computation, ComputationClass, TraitConfig, _ComputationBase
from .destinations import (
    GistDestination,
    JsonlDestination,
    SegmentDestination,
    WebhookDestination,
)
from .sections import (
    AlertsConfig,
    EventsConfig,
    GuardConfig,
    ProfilesConfig,
    RetentionConfig,
    ScheduleConfig,
    SourceConfig,
    StateConfig,
    _Section,
    parse_duration,
)

if TYPE_CHECKING:
    from ..sources.builder.definitions import Definition


DEFAULT_CONFIG_PATH = "config/audience_sync.toml"


CONFIG_ENV_VAR = "AUDIENCE_SYNC_CONFIG"


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


_DESTINATION_MODELS = (GistDestination, SegmentDestination, WebhookDestination, JsonlDestination)


def _known_keys() -> list[str]:
    """Every key a config file may hold, in any table (for suggesting the nearest to an unknown one)."""
    models: list[type[Any]] = [_RawConfig, AudienceConfig, TraitConfig, *_DESTINATION_MODELS]
    seen: set[type[Any]] = set()
    keys: set[str] = set()
    while models:
        model = models.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            keys.add(name)
            annotation = info.annotation
            for arg in (annotation, *getattr(annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, _Section):
                    models.append(arg)
    return sorted(keys)


def _format_errors(path: str, error: ValidationError, data: Mapping[str, Any]) -> list[str]:
    problems = []
    for err in error.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against the config reference)"
            near = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(), n=1, cutoff=0.7)
            if near:
                msg = f"unknown key (did you mean `{near[0]}`?)"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown destination type {err['ctx']['tag']!r} (expected {err['ctx']['expected_tags']})"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing `type` (expected {TYPE_NAMES})"
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
    from ..sources.builder import definitions

    parse = definitions.parse_condition if entry.builder_field == "condition" else definitions.parse_compute
    definition, found = parse(raw, entry.builder_field)
    problems += [f"{path}: {where} ({entry.name!r}).{field_path}: {message}" for field_path, message in found]
    return definition


def _builder_references(
    path: str, entries: list[tuple[str, ComputationClass, _ComputationBase]], comps: list[Computation]
) -> list[str]:
    """Problems with `in_audience` keys: unknown, not a condition audience, or a cycle."""
    from ..sources.builder import definitions

    audiences = {c.key: c.builder for c in comps if isinstance(c.builder, definitions.AudienceDefinition)}
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


def parse_config(
    text: str,
    *,
    path: str = "<config>",
    environ: Mapping[str, str] | None = None,
    secrets_for: Collection[str] | None = None,
) -> Config:
    """Validate TOML text into a :class:`Config`; ConfigError listing every problem with its key path.

    ``secrets_for``: None reads and checks every secret; otherwise only those of the destinations it names (and
    the ``[alerts]`` webhook's when it holds :data:`audience_sync.config.ALERTS`): a command that uses no
    destination needs no key. The others stay empty.

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
        wanted = None if secrets_for is None else frozenset(secrets_for)
        raw = _RawConfig.model_validate(data, context={"environ": env, "secrets_for": wanted})
    except ValidationError as exc:
        problems = _format_errors(path, exc, data)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), path=path, problems=problems) from None
    config = _resolve(path, raw)
    remember(config.secret_values())
    return config


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    secrets_for: Collection[str] | None = None,
) -> Config:
    """Read and validate the config file at ``path`` (default: :func:`default_config_path`).

    Guarantees: either a fully valid config whose secrets (those ``secrets_for`` names, see
    :func:`parse_config`; all by default) were all found in the environment, or a :class:`ConfigError` (exit
    code 2) listing every problem with the file and key path.
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
    return parse_config(text, path=file, environ=environ, secrets_for=secrets_for)
