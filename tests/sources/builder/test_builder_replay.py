"""A year of events replayed every other month through the real run: each ``as_of`` run sends exactly the users
whose membership or value changed since the previous one (per the independent reference), pushed down into the state
database or streamed, on SQLite and PostgreSQL; replaying an instant sends nothing new."""

from __future__ import annotations

import datetime as dt
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from audience_sync.config import Config, parse_config
from audience_sync.run.sync import run_sync
from audience_sync.sources.builder.definitions import AudienceDefinition, TraitDefinition
from audience_sync.values import encode
from tests.builder_data import RawEvent, RawProfile, load_pg, load_sqlite, read_back
from tests.builder_reference import Reference
from tests.harness import Harness

START = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
COMPUTATIONS = """
[[audiences]]
name = "Active Buyers"
condition = { performed = "Order", at_least = 2, within = "30d" }

[[audiences]]
name = "Lapsed"
[audiences.condition]
all = [{ performed = "Order", between = ["90d", "30d"] }, { not = { performed = "Order", within = "30d" } }]

[[audiences]]
name = "Buyers Or French"
condition = { any = [ { in_audience = "active_buyers" }, { trait = "country", op = "=", value = "FR" } ] }

[[computed_traits]]
name = "Orders 30d"
compute = { count = "Order", within = "30d" }

[[computed_traits]]
name = "Last Category"
compute = { last = "Order", property = "category" }

[[computed_traits]]
name = "Spend 90d"
compute = { sum = "Order", property = "amount", within = "90d" }

[[computed_traits]]
name = "Categories 60d"
compute = { unique_list = "View", property = "category", within = "60d" }
"""


def year_of_events(seed: int = 2023) -> tuple[list[RawProfile], list[RawEvent]]:
    rng = random.Random(seed)
    profiles = [
        RawProfile(f"p{i}", None if i % 11 == 0 else f"p{i}@example.com", rng.choice(["FR", "DE"]), None, None, None)
        for i in range(40)
    ]
    events = []
    for _ in range(1500):
        when = START + dt.timedelta(seconds=rng.randrange(365 * 86400))
        user = f"p{int(rng.triangular(0, 40, 5))}"  # a few users are far busier than most
        props: dict[str, Any] = {"category": rng.choice(["tea", "coffee", "mugs", "B", "é"])}
        if rng.random() < 0.9:
            props["amount"] = rng.choice([rng.randint(1, 90), round(rng.uniform(1, 90), 2)])
        events.append(RawEvent(user, rng.choice(["Order", "View"]), when, props))
    # events exactly on the first of each month, the runs' instants after the first: in the run at that instant,
    # not before
    for month in range(2, 13):
        events.append(RawEvent("p3", "Order", dt.datetime(2023, month, 1, tzinfo=dt.UTC), {"category": "mugs"}))
    return profiles, events


def expected_changes(config: Config, ref: Reference, before: dict[str, Any]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """({(user, key): canonical value} the run at ``ref.as_of`` must send, the state after it)."""
    changes: dict[tuple[str, str], str | None] = {}
    now: dict[str, Any] = {}
    for comp in config.computations:
        old = before.get(comp.key, {})
        if isinstance(comp.builder, AudienceDefinition):
            current: dict[str, str | None] = dict.fromkeys(ref.members(comp.builder.condition), "true")
            gone: str | None = "false"
        else:
            assert isinstance(comp.builder, TraitDefinition)
            current = {u: encode(v) for u, v in ref.trait(comp.builder.compute).items()}
            gone = None
        for user, value in current.items():
            if old.get(user) != value:
                changes[(user, comp.key)] = value
        for user in old.keys() - current.keys():
            changes[(user, comp.key)] = gone
        now[comp.key] = current
    return changes, now


def _replay(state_url: str, source_url: str, tmp_path: Path, push: bool, caplog: pytest.LogCaptureFixture) -> set[str]:
    """A year of as-of runs every other month from ``source_url`` (each longer than the 30-day windows, shorter
    than the 90-day ones), each checked against the reference; returns the computations that were streamed
    although ``push`` asked for pushdown."""
    caplog.set_level(logging.INFO, logger="audience_sync.run.stage")
    profiles, events = year_of_events()
    if source_url.startswith("sqlite"):
        load_sqlite(source_url.removeprefix("sqlite:///"), "json", profiles, events)
    else:
        load_pg(source_url, "jsonb", profiles, events)
    out = tmp_path / "file.jsonl"
    config = parse_config(
        f'[state]\nurl = "{state_url}"\n[source]\nurl = "{source_url}"\npushdown = {str(push).lower()}\n'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{out}"\n' + COMPUTATIONS,
        environ={},
    )
    harness = Harness(tmp_path, state_url, None)  # type: ignore[arg-type]
    back_profiles, back_events = read_back(source_url, "json")
    audiences = {c.key: c.builder for c in config.computations if isinstance(c.builder, AudienceDefinition)}
    state: dict[str, Any] = {}
    sent_per_run, exits = [], 0
    for month in range(1, 13, 2):
        as_of = dt.datetime(2023, month, 1, tzinfo=dt.UTC) + dt.timedelta(days=14 * (month == 1))
        result = run_sync(config, as_of=as_of, force=True)
        assert result.status == "succeeded", result.error
        assert result.as_of == as_of.isoformat()
        sent = {k: encode(v) for k, v in harness.sent(harness.new_calls()).items()}
        ref = Reference(back_events, back_profiles, audiences, as_of)
        expected, state = expected_changes(config, ref, state)
        assert sent == expected, f"run as of {as_of}"
        sent_per_run.append(len(sent))
        exits += sum(1 for v in expected.values() if v in ("false", None))
    assert all(n > 0 for n in sent_per_run) and exits > 0
    # the same instant again: the same result, so nothing to send
    run_sync(config, as_of=as_of)
    assert harness.new_calls() == []
    return {r.getMessage().split(":")[0] for r in caplog.records if "streaming" in r.getMessage()}


@pytest.mark.parametrize("push", [True, False], ids=["pushdown", "streamed"])
def test_monthly_as_of_runs_send_exactly_what_changed(
    state_url: str, tmp_path: Path, push: bool, caplog: pytest.LogCaptureFixture
) -> None:
    streamed = _replay(state_url, state_url, tmp_path, push, caplog)
    if push:  # PostgreSQL streams the traits whose values may hold floats (only Python writes them canonically)
        floats = {"last_category", "spend_90d", "categories_60d"}
        assert streamed == (floats if state_url.startswith("postgresql") else set())


def test_an_attached_source_file_is_pushed_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The events and profiles in a SQLite file of their own: attached to the state's connection, every
    computation is pushed down, and the year of runs sends exactly what the reference says."""
    state_url, source_url = f"sqlite:///{tmp_path / 'state.db'}", f"sqlite:///{tmp_path / 'events.db'}"
    assert _replay(state_url, source_url, tmp_path, True, caplog) == set()
