"""Configuration: every problem reported at once, with the file and key path; secrets only from env."""

from __future__ import annotations

from pathlib import Path

import pytest

from audience_sync.config import GistDestination, JsonlDestination, load_config, parse_config
from audience_sync.errors import ConfigError, KeyCollisionError

GOOD = """
[state]
url = "sqlite:///s.db"
[[destinations]]
name = "gist"
type = "gist"
api_key_env = "GIST_API_KEY"
[[audiences]]
name = "Order Completed Last 30days"
sql = "SELECT 1 AS user_id"
[[computed_traits]]
name = "Lifetime Value"
file = "ltv.csv"
"""


def test_valid_config_resolves_keys_targets_and_secret() -> None:
    config = parse_config(GOOD, path="c.toml", environ={"GIST_API_KEY": "s3cret"})
    assert [c.key for c in config.computations] == ["order_completed_last_30days", "lifetime_value"]
    assert config.computations[0].destinations == ("gist",)
    assert config.source_url == "sqlite:///s.db"  # defaults to the state database
    gist = config.destination("gist")
    assert isinstance(gist, GistDestination)
    assert gist.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(gist) and "s3cret" not in repr(config)


def test_every_problem_is_reported_at_once_with_its_key_path() -> None:
    text = GOOD.replace('api_key_env = "GIST_API_KEY"', 'api_key_env = "GIST_API_KEY"\nrate_limt = 5').replace(
        'sql = "SELECT 1 AS user_id"', 'sql = "SELECT 1 AS user_id"\nfile = "x.csv"'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, path="c.toml", environ={})
    message = str(err.value)
    assert err.value.exit_code == 2
    assert "c.toml: destinations[0] ('gist').rate_limt: unknown key" in message
    assert (
        "c.toml: destinations[0] ('gist').api_key_env: "
        "environment variable GIST_API_KEY (named by `api_key_env`) is not set" in message
    )
    assert "c.toml: audiences[0] ('Order Completed Last 30days'): give exactly one of `sql` or `file`" in message
    assert len(err.value.problems) == 3


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match=r"c.toml: invalid TOML: .*line 3"):
        parse_config('[state]\nurl = "x"\nname = = 1\n', path="c.toml")


def test_unknown_destination_type_and_reference() -> None:
    text = """
[[destinations]]
name = "d"
type = "mailchimp"
[[audiences]]
name = "A"
sql = "SELECT 1 AS user_id"
destinations = ["nowhere"]
"""
    with pytest.raises(ConfigError, match=r"unknown destination type 'mailchimp'"):
        parse_config(text, path="c.toml", environ={})
    text = text.replace("mailchimp", "jsonl")
    with pytest.raises(ConfigError, match=r"audiences\[0\] \('A'\).destinations: no destination named 'nowhere'"):
        parse_config(text, path="c.toml", environ={})


def test_two_computations_on_one_key_name_both() -> None:
    text = """
[[destinations]]
name = "d"
type = "jsonl"
[[audiences]]
name = "High-Value (LTV > 500)"
sql = "SELECT 1 AS user_id"
[[computed_traits]]
name = "high value ltv 500"
sql = "SELECT 1 AS user_id, 1 AS value"
"""
    with pytest.raises(KeyCollisionError) as err:
        parse_config(text, path="c.toml", environ={})
    assert err.value.key == "high_value_ltv_500"
    assert err.value.names == ("High-Value (LTV > 500)", "high value ltv 500")
    assert "'high_value_ltv_500' is already used by 'High-Value (LTV > 500)'" in str(err.value)


def test_bad_explicit_key_and_unkeyable_name() -> None:
    text = """
[[destinations]]
name = "d"
type = "jsonl"
[[audiences]]
name = "A"
key = "Bad Key"
sql = "SELECT 1 AS user_id"
[[audiences]]
name = "☕☕"
sql = "SELECT 1 AS user_id"
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, path="c.toml", environ={})
    assert "key 'Bad Key' must be snake_case" in str(err.value)
    assert "name '☕☕' has no letter or digit" in str(err.value)


def test_missing_config_file_and_default_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    path = tmp_path / "env.toml"
    path.write_text('[[destinations]]\nname = "d"\ntype = "jsonl"\n')
    config = load_config(environ={"AUDIENCE_SYNC_CONFIG": str(path)})
    assert config.path == str(path)
    sink = config.destination("d")
    assert isinstance(sink, JsonlDestination) and sink.output_path == Path("out/d.jsonl")


def test_schedule_durations_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"schedule.every: .*'3 hours' is not a duration"):
        parse_config('[schedule]\nevery = "3 hours"\n', path="c.toml")
    with pytest.raises(ConfigError, match="either `every` or `cron`"):
        parse_config('[schedule]\nevery = "3h"\ncron = "0 */3 * * *"\n', path="c.toml")


def test_lock_lease_is_validated() -> None:
    assert parse_config('[state]\nlock_lease = "90s"\n', path="c.toml").lock_lease == 90.0
    assert parse_config("", path="c.toml").lock_lease == 300.0
    with pytest.raises(ConfigError, match=r"state.lock_lease: .*'soon' is not a duration"):
        parse_config('[state]\nlock_lease = "soon"\n', path="c.toml")
    with pytest.raises(ConfigError, match=r"state.lock_lease: .*shorter than a second"):
        parse_config('[state]\nlock_lease = "0.5s"\n', path="c.toml")


def test_schedules_alerts_and_retention_are_validated_with_their_key_paths() -> None:
    text = (
        '[schedule]\ncron = "0 25 * * *"\ntimezone = "Mars/Olympus"\n'
        '[alerts]\nwebhook_url_env = "ALERT_HOOK"\nmax_failed_share = 2\n'
        '[retention]\nkeep = "forever"\n'
        '[[destinations]]\nname = "f"\ntype = "jsonl"\nschedule = { timezone = "UTC" }\n'
        '[[audiences]]\nname = "A"\nsql = "SELECT 1"\nschedule = { cron = "* * *" }\n'
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, path="c.toml", environ={})
    message = str(err.value)
    for expected in (
        "c.toml: schedule.cron: '0 25 * * *' is not a valid crontab expression",
        "c.toml: schedule.timezone: unknown time zone 'Mars/Olympus'",
        "c.toml: alerts.max_failed_share:",
        "c.toml: alerts.webhook_url_env: environment variable ALERT_HOOK (named by `webhook_url_env`) is not set",
        "c.toml: retention.keep: ",
        "c.toml: destinations[0] ('f').schedule: a schedule needs `every` or `cron`",
        "c.toml: audiences[0] ('A').schedule.cron: '* * *' is not a crontab expression of five fields",
    ):
        assert expected in message, message
    ok = parse_config(
        '[alerts]\nwebhook_url_env = "ALERT_HOOK"\n[retention]\nkeep = "90d"\n',
        path="c.toml",
        environ={"ALERT_HOOK": "http://127.0.0.1:9/hook"},
    )
    assert ok.alerts.webhook_url is not None and "127.0.0.1" not in repr(ok.alerts)
    assert ok.retention.keep_seconds == 90 * 86400


def test_value_type_is_validated_and_only_for_csv_traits() -> None:
    env = {"GIST_API_KEY": "k"}
    typed = parse_config(GOOD.replace('file = "ltv.csv"', 'file = "ltv.csv"\nvalue_type = "number"'), environ=env)
    assert typed.computations[1].value_type == "number"
    assert parse_config(GOOD, environ=env).computations[1].value_type is None  # text
    cases = {
        'file = "ltv.csv"\nvalue_type = "integer"': "computed_traits[0] ('Lifetime Value').value_type: "
        "Input should be 'text', 'number', 'boolean' or 'json'",
        'file = "ltv.parquet"\nvalue_type = "number"': "computed_traits[0] ('Lifetime Value'): value_type applies "
        "to CSV files only",
        'sql = "SELECT 1 AS user_id, 2 AS value"\nvalue_type = "text"': "computed_traits[0] ('Lifetime Value'): "
        "value_type applies to CSV files only",
    }
    for replacement, message in cases.items():
        with pytest.raises(ConfigError) as err:
            parse_config(GOOD.replace('file = "ltv.csv"', replacement), path="c.toml", environ=env)
        assert f"c.toml: {message}" in str(err.value) and err.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"audiences\[0\] \('Order Completed Last 30days'\)\.value_type: unknown key"):
        parse_config(GOOD.replace('AS user_id"', 'AS user_id"\nvalue_type = "text"', 1), path="c.toml", environ=env)
