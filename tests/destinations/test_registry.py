"""The destination registry: one entry per type generates the config union, the type names the errors quote and
the adapter built; an unknown type is a config error naming it, never a fall-through to another adapter."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import pytest

from audience_sync.config import AnyDestination, JsonlDestination, parse_config
from audience_sync.config.destinations import _DestinationBase
from audience_sync.config.secrets import EnvSecret, HeaderSecret
from audience_sync.destinations import REGISTRY, build_destination
from audience_sync.destinations.jsonl import JsonlSink
from audience_sync.destinations.registry import TYPE_NAMES
from audience_sync.errors import ConfigError


def test_the_union_and_the_type_names_come_from_the_registry() -> None:
    assert set(typing.get_args(AnyDestination)) == {t.config for t in REGISTRY.values()}
    for name, entry in REGISTRY.items():
        assert typing.get_args(entry.config.model_fields["type"].annotation) == (name,)
        assert entry.factory().__name__  # every adapter imports
    assert TYPE_NAMES == "'gist', 'segment', 'webhook' or 'jsonl'"
    assert REGISTRY["gist"].required_identifiers == ("email",)


def test_required_identifiers_are_the_registry_s() -> None:
    config = parse_config(
        '[[destinations]]\nname = "g"\ntype = "gist"\napi_key_env = "K"\n'
        '[[destinations]]\nname = "j"\ntype = "jsonl"\n',
        path="c.toml",
        environ={"K": "key"},
    )
    assert [d.required_identifiers for d in config.destinations] == [("email",), ()]


class _Pigeon(_DestinationBase):
    type: Literal["pigeon"]


def test_an_unregistered_type_is_a_config_error_not_a_webhook(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown destination type 'pigeon' \(expected 'gist', .* or 'jsonl'\)"):
        build_destination(_Pigeon(name="p", type="pigeon"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        parse_config('[[destinations]]\nname = "d"\n', path="c.toml", environ={})
    assert f"missing `type` (expected {TYPE_NAMES})" in str(caught.value.problems)
    sink = build_destination(JsonlDestination(name="j", type="jsonl", path=str(tmp_path / "j.jsonl")))
    assert isinstance(sink, JsonlSink)


def test_every_env_key_is_one_env_secret_type() -> None:
    config = parse_config(
        '[alerts]\nwebhook_url_env = "A"\n'
        '[[destinations]]\nname = "w"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
        'headers_env = { Authorization = "T" }\nsigning_secret_env = "S"\n',
        path="c.toml",
        environ={"A": "http://127.0.0.1:9/alert", "T": "Bearer t", "S": "s\u00e9cret"},
    )
    hook = config.destinations[0]
    assert isinstance(config.alerts.webhook_url_env, EnvSecret)
    assert isinstance(hook.headers_env["Authorization"], HeaderSecret)  # type: ignore[union-attr]
    assert hook.headers_env == {"Authorization": "T"}  # type: ignore[union-attr]  # the names, as before
    assert hook.model_dump()["signing_secret_env"] == "S"
    assert hook.signing_secret.get_secret_value() == "s\u00e9cret"  # type: ignore[union-attr]  # not a header
    assert "Bearer t" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            '[[destinations]]\nname = "w"\ntype = "webhook"\nurl = "u"\nheaders_env = { X = "T" }\n',
            path="c.toml",
            environ={"T": "line\nbreak"},
        )
    assert "environment variable T (named by `headers_env`) holds a character an HTTP header cannot carry" in str(
        caught.value.problems
    )
