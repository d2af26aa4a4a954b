"""The builder at the command line: every validation error exits 2 naming the computation and the field, before
anything runs; a table or column missing in the source fails the run (exit 1) before any diff, naming the
computation, the table and the column; ``run``/``resync --as-of``; ``explain`` in text and JSON."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from audience_sync.cli.main import main
from audience_sync.config import parse_config
from audience_sync.sources.builder.definitions import AudienceDefinition
from tests.builder_data import AS_OF, generate, load_sqlite, read_back
from tests.builder_reference import Reference
from tests.cli.test_cli import cli

BUYERS = '[[audiences]]\nname = "Buyers"\ncondition = { performed = "Order", at_least = 2, within = "30d" }\n'
SPEND = '[[computed_traits]]\nname = "Spend"\ncompute = { sum = "Order", property = "amount", within = "30d" }\n'


@pytest.fixture
def warehouse_url(tmp_path: Path) -> str:
    profiles, events = generate()
    load_sqlite(str(tmp_path / "warehouse.db"), "json", profiles, events)
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


def write_config(tmp_path: Path, state_url: str, source_url: str, body: str) -> Path:
    path = tmp_path / "audience_sync.toml"
    path.write_text(
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{source_url}"\n'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp_path / "file.jsonl"}"\n' + body
    )
    return path


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return int(exited.value.code or 0), out, err


BAD_DEFINITIONS = {
    "unknown operator": (
        '[[audiences]]\nname = "Bad"\n'
        'condition = { performed = "Order", where = [{ property = "amount", op = "~=", value = 1 }] }\n',
        "audiences[0] ('Bad').condition.where[0].op: unknown operator '~='",
    ),
    "property missing": (
        '[[computed_traits]]\nname = "Bad"\ncompute = { max = "Order", within = "7d" }\n',
        "computed_traits[0] ('Bad').compute.property: `max` needs the `property`",
    ),
    "bad window": (
        '[[audiences]]\nname = "Bad"\ncondition = { performed = "Order", within = "30 days" }\n',
        "audiences[0] ('Bad').condition.within: bad window: '30 days' is not a duration",
    ),
    "empty between": (
        '[[audiences]]\nname = "Bad"\ncondition = { not = { performed = "Order", between = ["7d", "30d"] } }\n',
        "audiences[0] ('Bad').condition.not.between: bad window: ['7d', '30d'] is an empty window",
    ),
    "unknown in_audience": (
        '[[audiences]]\nname = "Bad"\ncondition = { all = [{ in_audience = "nope" }] }\n',
        "audiences[0] ('Bad').condition.all[0].in_audience: unknown audience key 'nope'",
    ),
    "in_audience of a sql audience": (
        '[[audiences]]\nname = "Plain"\nsql = "SELECT id AS user_id FROM users"\n'
        '[[audiences]]\nname = "Bad"\ncondition = { not_in_audience = "plain" }\n',
        "audiences[1] ('Bad').condition.not_in_audience: 'plain' is a `sql` audience, not a condition audience",
    ),
    "cycle": (
        '[[audiences]]\nname = "A"\ncondition = { any = [{ in_audience = "b" }, { performed = "Order" }] }\n'
        '[[audiences]]\nname = "B"\ncondition = { not = { in_audience = "a" } }\n',
        "audiences[0] ('A').condition.any[0].in_audience: in_audience cycle: a -> b -> a",
    ),
    "sql and condition": (
        '[[audiences]]\nname = "Bad"\nsql = "SELECT 1 AS user_id"\ncondition = { performed = "Order" }\n',
        "audiences[0] ('Bad'): give exactly one of `sql` or `file` or `condition` (found `sql` and `condition`)",
    ),
    "file and compute": (
        '[[computed_traits]]\nname = "Bad"\nfile = "x.csv"\ncompute = { count = "Order" }\n',
        "computed_traits[0] ('Bad'): give exactly one of `sql` or `file` or `compute` (found `file` and `compute`)",
    ),
    "unknown key": (
        '[[audiences]]\nname = "Bad"\ncondition = { performed = "Order", with_in = "30d" }\n',
        "audiences[0] ('Bad').condition.with_in: unknown key for `performed`",
    ),
    "bad bound": (
        '[[audiences]]\nname = "Bad"\ncondition = { performed = "Order", at_most = 0 }\n',
        "audiences[0] ('Bad').condition.at_most: must be a whole number of at least 1",
    ),
    "value of the wrong kind": (
        '[[audiences]]\nname = "Bad"\ncondition = { trait = "age", op = "<", value = true }\n',
        "audiences[0] ('Bad').condition.value: `<` compares numbers or strings",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DEFINITIONS))
def test_validation_errors_exit_2_naming_the_computation_and_field(
    case: str, tmp_path: Path, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body, message = BAD_DEFINITIONS[case]
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse_url, body)
    code, _, err = invoke(capsys, "run", "--config", str(config))
    assert code == 2
    assert message in " ".join(err.split()), err
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "file.jsonl").exists()  # nothing ran


def test_bad_as_of_is_a_usage_error(tmp_path: Path, warehouse_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse_url, BUYERS)
    code, _, err = invoke(capsys, "run", "--as-of", "last tuesday", "--config", str(config))
    assert code == 2 and "'last tuesday' is not an ISO 8601 instant" in err
    assert not (tmp_path / "file.jsonl").exists()


MISSING = {
    "events table": (
        '[events]\ntable = "analytics.events"\n' + BUYERS,
        "audience 'Buyers' (buyers): the source database has no table 'analytics.events' (named by [events] table)",
    ),
    "profile column": (
        '[[audiences]]\nname = "Plans"\ncondition = { all = [{ performed = "Order" }, '
        '{ trait = "plan", op = "=", value = "pro" }] }\n',
        "audience 'Plans' (plans): table 'users' has no column 'plan' (named by the trait condition on 'plan'",
    ),
    "properties column": (
        '[events]\nproperties = "props"\n' + SPEND,
        "trait 'Spend' (spend): table 'tracks' has no column 'props' (named by [events] properties",
    ),
    "property column": (
        '[events]\nproperties = ""\n[[computed_traits]]\nname = "Coupons"\n'
        'compute = { unique_list = "Order", property = "coupon" }\n',
        "trait 'Coupons' (coupons): table 'tracks' has no column 'coupon' (named by property 'coupon'",
    ),
    "profiles table": (
        '[profiles]\ntable = "people"\n' + BUYERS,
        "audience 'Buyers' (buyers): the source database has no table 'people' (named by [profiles] table)",
    ),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_table_or_column_fails_the_run_before_any_diff(
    case: str, tmp_path: Path, state_url: str, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body, message = MISSING[case]
    # a sql audience before it: the run fails before staging anything at all
    plain = '[[audiences]]\nname = "Plain"\nsql = "SELECT id AS user_id, email FROM users"\n'
    config = str(write_config(tmp_path, state_url, warehouse_url, plain + body))
    code, _, err = invoke(capsys, "run", "--config", config)
    assert code == 1
    assert message in " ".join(err.split()), err
    code, out, _ = invoke(capsys, "runs", "--format", "json", "--config", config)
    runs = json.loads(out)
    assert [r["status"] for r in runs] == ["failed"] and message in " ".join(runs[0]["error"].split())
    code, out, _ = invoke(capsys, "diff", "--format", "json", "--config", config)
    assert json.loads(out) == []
    assert not (tmp_path / "file.jsonl").exists()


def _reference_members(config_path: Path, source_url: str, key: str, as_of: dt.datetime) -> set[str]:
    config = parse_config(config_path.read_text(), environ={})
    definition = config.computation(key).builder
    assert isinstance(definition, AudienceDefinition)
    profiles, events = read_back(source_url, "json")
    audiences = {c.key: c.builder for c in config.computations if isinstance(c.builder, AudienceDefinition)}
    return Reference(events, profiles, audiences, as_of, profile_ints_are_booleans=True).members(definition.condition)


def test_explain_shows_sql_parameters_and_size(
    tmp_path: Path, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = (
        '[[audiences]]\nname = "Nested"\ncondition = { all = [{ in_audience = "buyers" }, '
        '{ not = { trait = "country", op = "in", value = ["FR", "US"] } }] }\n'
    )
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse_url, BUYERS + nested + SPEND)
    code, out, _ = invoke(capsys, "explain", "nested", "--as-of", "2024-06-01T00:00:00Z", "--config", str(config))
    expected = _reference_members(config, warehouse_url, "nested", AS_OF)
    assert code == 0 and expected
    assert "SELECT p.id AS user_id, p.email AS email" in out and "HAVING count(*) >= :at_least_1" in out
    assert "--   event_1 = 'Order'" in out and "--   at_least_1 = 2" in out
    assert "--   since_1 = '2024-05-02 00:00:00.000'" in out and "--   values_1_1 = 'FR'" in out
    assert f"-- size: {len(expected)} members" in out
    code, out, _ = invoke(
        capsys, "explain", "spend", "--as-of", "2024-06-01", "--format", "json", "--config", str(config)
    )
    result: dict[str, Any] = json.loads(out)
    assert code == 0 and result["class"] == "trait" and result["as_of"] == "2024-06-01T00:00:00+00:00"
    assert result["parameters"]["property_1"] == '$."amount"' and result["dialect"] == "sqlite"
    assert ":property_1" in result["sql"] and "'amount'" not in result["sql"]  # values are bound, never inlined
    assert result["size"] > 0
    # the size follows the instant: before any event, nobody
    code, out, _ = invoke(
        capsys, "explain", "buyers", "--as-of", "2000-01-01", "--format", "json", "--config", str(config)
    )
    assert json.loads(out)["size"] == 0


def test_explain_refuses_what_it_cannot_show(
    tmp_path: Path, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = '[[audiences]]\nname = "Plain"\nsql = "SELECT id AS user_id FROM users"\n'
    config = str(write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse_url, plain))
    code, _, err = invoke(capsys, "explain", "plain", "--config", config)
    assert code == 2 and "'plain' is a `sql` audience: explain shows builder computations" in err
    code, _, err = invoke(capsys, "explain", "nope", "--config", config)
    assert code == 2 and "no audience or trait with key 'nope'" in err


def test_run_and_resync_as_of(tmp_path: Path, state_url: str, warehouse_url: str) -> None:
    config = write_config(tmp_path, state_url, warehouse_url, BUYERS + SPEND)
    early, late = "2024-05-01T00:00:00Z", "2024-06-01T00:00:00Z"
    proc = cli("run", "--as-of", early, "--json", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["as_of"] == summary["counts"]["as_of"] == "2024-05-01T00:00:00+00:00"
    lines = [json.loads(line) for line in (tmp_path / "file.jsonl").read_text().splitlines()]
    first = {c["userId"] for c in lines if c["traits"].get("buyers") is True}
    assert first == _reference_members(config, warehouse_url, "buyers", dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    proc = cli("resync", "--yes", "--as-of", late, "--json", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    resent = [json.loads(line) for line in (tmp_path / "file.jsonl").read_text().splitlines()[len(lines) :]]
    now = _reference_members(config, warehouse_url, "buyers", AS_OF)
    assert {c["userId"] for c in resent if c["traits"].get("buyers") is True} == now  # every member, again
    assert {c["userId"] for c in resent if c["traits"].get("buyers") is False} == first - now
