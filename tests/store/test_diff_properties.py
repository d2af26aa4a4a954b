"""Properties of the diff, checked through whole runs on a real SQLite state database:

- applying a run's sent changes to what the destination held before gives the source's new truth;
- a user whose membership or value did not change is never sent.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_sync.config import parse_config
from audience_sync.run.sync import run_sync

users = st.sampled_from([f"u{i}" for i in range(12)])
values = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0]), st.sampled_from(["", "a", "b"]))
audience_truth = st.sets(users, max_size=12)
trait_truth = st.dictionaries(users, values, max_size=12)


def _write_truth(db: Path, members: set[str], traits: dict[str, Any]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS members (user_id TEXT, email TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS trait_values (user_id TEXT, email TEXT, value)")
        conn.execute("DELETE FROM members")
        conn.execute("DELETE FROM trait_values")
        conn.executemany("INSERT INTO members VALUES (?, ?)", [(u, f"{u}@x.io") for u in members])
        conn.executemany("INSERT INTO trait_values VALUES (?, ?, ?)", [(u, f"{u}@x.io", v) for u, v in traits.items()])


def _apply(held: dict[tuple[str, str], Any], calls: list[dict[str, Any]]) -> None:
    for call in calls:
        for key, value in call["traits"].items():
            if key != "email":
                held[(call["userId"], key)] = value


def _truth(members: set[str], traits: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {**{(u, "vip"): True for u in members}, **{(u, "score"): v for u, v in traits.items()}}


def _normalise(held: dict[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
    """What a profile shows: an audience at false and a trait at null are both 'not there'."""
    return {k: v for k, v in held.items() if v is not None and not (k[1] == "vip" and v is False)}


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(audience_truth, trait_truth, audience_truth, trait_truth)
def test_sent_changes_turn_the_old_truth_into_the_new(
    old_members: set[str], old_traits: dict[str, Any], new_members: set[str], new_traits: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "out.jsonl"
        config = parse_config(
            f'''
[state]
url = "sqlite:///{root / "state.db"}"
[source]
url = "sqlite:///{root / "wh.db"}"
[[destinations]]
name = "file"
type = "jsonl"
path = "{out}"
[[audiences]]
name = "VIP"
sql = "SELECT user_id, email FROM members"
[[computed_traits]]
name = "Score"
sql = "SELECT user_id, email, value FROM trait_values"
''',
            environ={},
        )
        _write_truth(root / "wh.db", old_members, old_traits)
        run_sync(config, force=True)
        held: dict[tuple[str, str], Any] = {}
        first = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        _apply(held, first)
        assert _normalise(held) == _truth(old_members, old_traits)

        _write_truth(root / "wh.db", new_members, new_traits)
        run_sync(config, force=True)
        lines = out.read_text().splitlines() if out.exists() else []
        second = [json.loads(line) for line in lines[len(first) :]]
        _apply(held, second)
        assert _normalise(held) == _truth(new_members, new_traits)

        old, new = _truth(old_members, old_traits), _truth(new_members, new_traits)
        for call in second:
            for key in call["traits"]:
                if key != "email":
                    item = (call["userId"], key)
                    assert old.get(item) != new.get(item) or type(old.get(item)) is not type(new.get(item)), item
        assert len(second) == len({(c["userId"], k) for c in second for k in c["traits"] if k != "email"})
