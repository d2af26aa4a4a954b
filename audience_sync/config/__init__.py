"""Configuration: a TOML file turned into a frozen, validated :class:`Config`.

The package is the only place that reads ``os.environ``; every problem in a file is reported at once, each with
the file and its key path. Its modules: ``sections`` (plain sections), ``destinations`` (one model per
destination type; their union comes from ``destinations/registry.py``), ``secrets`` (:class:`EnvSecret`, the
one type of a ``*_env`` key), ``computations`` (audiences, traits and :class:`Computation`), ``load`` (the file
as a whole, cross-checks, :func:`load_config`).
"""

from ..destinations.registry import AnyDestination, DestinationConfig
from .computations import AudienceConfig, Computation, ComputationClass, TraitConfig, ValueType
from .destinations import (
    MAX_DESTINATION_NAME,
    GistDestination,
    JsonlDestination,
    SegmentDestination,
    WebhookDestination,
)
from .load import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH, Config, default_config_path, load_config, parse_config
from .secrets import ALERTS
from .sections import (
    DEFAULT_STATE_URL,
    AlertsConfig,
    EventsConfig,
    GuardConfig,
    ProfilesConfig,
    RetentionConfig,
    ScheduleConfig,
    SourceConfig,
    StateConfig,
    parse_duration,
)

__all__ = [
    "ALERTS",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_URL",
    "MAX_DESTINATION_NAME",
    "AlertsConfig",
    "AnyDestination",
    "AudienceConfig",
    "Computation",
    "ComputationClass",
    "Config",
    "DestinationConfig",
    "EventsConfig",
    "GistDestination",
    "GuardConfig",
    "JsonlDestination",
    "ProfilesConfig",
    "RetentionConfig",
    "ScheduleConfig",
    "SegmentDestination",
    "SourceConfig",
    "StateConfig",
    "TraitConfig",
    "ValueType",
    "WebhookDestination",
    "default_config_path",
    "load_config",
    "parse_config",
    "parse_duration",
]
