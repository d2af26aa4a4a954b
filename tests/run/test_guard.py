"""The mass-exit guard: an upstream outage must not tell a destination that everybody left."""

from __future__ import annotations

import pytest

from audience_sync.commands import list_diffs
from tests.harness import Harness

BIG = {f"u{i:03d}": f"{i}@x.io" for i in range(200)}


def test_losing_most_of_an_audience_is_held_and_nothing_of_it_is_sent(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", BIG)
    harness.warehouse.set_members("Other", {"a": "a@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + harness.audience("Other"))
    harness.run(config)
    harness.new_calls()

    harness.warehouse.set_members("VIP", dict(list(BIG.items())[:50]))  # 150 of 200 would exit: 75 %
    harness.warehouse.set_members("Other", {"a": "a@x.io", "b": "b@x.io"})
    result = harness.run(config)
    assert result.exit_code == 1 and result.status == "failed"
    assert "audience 'VIP' (vip) would lose 150 of 200 members (75%) at destination 'file'" in (result.error or "")
    assert "--force" in (result.error or "")
    assert harness.sent(harness.new_calls()) == {("b", "other"): True}  # other audiences still go out
    _, rows = list_diffs(config, run_id=result.run_id, computation="vip")
    assert {r["status"] for r in rows} == {"held"} and len(rows) == 150
    assert result.counts["held"] == 150

    forced = harness.run(config, force=True)
    assert forced.exit_code == 0 and forced.counts["exited"] == 150
    assert len(harness.new_calls()) == 150


def test_an_empty_source_is_held_whatever_the_size(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    harness.run(config)
    harness.new_calls()
    harness.warehouse.set_members("VIP", {})
    result = harness.run(config)
    assert result.exit_code == 1
    assert "the source returned no rows, but destination 'file' holds 2 members" in (result.error or "")
    assert harness.new_calls() == []


def test_small_audiences_and_configured_shares_pass(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(10)})
    harness.warehouse.set_members("Churny", BIG)
    config = harness.config(
        harness.jsonl_destination() + harness.audience("VIP") + harness.audience("Churny") + "max_exit_share = 0.9\n"
    )
    harness.run(config)
    harness.warehouse.set_members("VIP", {"u0": "0@x.io"})  # 90 % of 10: under min_size 100
    harness.warehouse.set_members("Churny", dict(list(BIG.items())[:40]))  # 80 %, allowed up to 90 %
    result = harness.run(config)
    assert result.exit_code == 0 and result.counts["exited"] == 9 + 160


def test_guard_settings_come_from_the_config(harness: Harness) -> None:
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(10)})
    config = harness.config(
        "[guard]\nmax_exit_share = 0.2\nmin_size = 5\n" + harness.jsonl_destination() + harness.audience("VIP")
    )
    harness.run(config)
    harness.warehouse.set_members("VIP", {f"u{i}": f"{i}@x.io" for i in range(7)})  # 30 % > 20 %
    assert harness.run(config).exit_code == 1


def test_flap_damping_sends_false_only_after_exit_after(harness: Harness) -> None:
    import datetime as dt

    from sqlalchemy import create_engine, update

    from audience_sync.store.schema import SnapshotRow, table_of, utcnow

    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": "c@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + 'exit_after = "1h"\n')
    harness.run(config)
    harness.new_calls()

    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})  # u2 and u3 drop out
    assert harness.run(config).counts["exited"] == 0
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u3": "c@x.io"})  # u3 flaps back: nothing to send
    assert harness.run(config).counts["exited"] == 0
    assert harness.new_calls() == []

    # the hour passes: whoever is still missing has been missing since longer ago than exit_after (set directly,
    # not slept for, so that slow runs on a loaded machine cannot make the wait seem to have passed early)
    snapshot = table_of(SnapshotRow)
    engine = create_engine(harness.state_url)
    with engine.begin() as conn:
        missing = conn.execute(
            update(snapshot)
            .where(snapshot.c.missing_since.is_not(None))
            .values(missing_since=utcnow() - dt.timedelta(hours=1, seconds=1))
        ).rowcount
    engine.dispose()
    assert missing == 1  # u2; u3's flap back cleared its mark
    result = harness.run(config)
    assert harness.sent(harness.new_calls()) == {("u2", "vip"): False}  # only the one who stayed out
    assert result.counts["exited"] == 1
    harness.run(config)
    assert harness.new_calls() == []


def test_a_run_with_its_clock_a_year_ahead_delays_no_exit_by_a_year(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing_since written by a clock that ran ahead counts as now for later runs, and is rewritten to now."""
    import datetime as dt

    from sqlalchemy import create_engine, text

    from audience_sync.store import schema

    offset = dt.timedelta()
    monkeypatch.setattr(schema, "clock", lambda: schema.system_clock() + offset)
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP") + 'exit_after = "1h"\n')
    harness.run(config)
    harness.new_calls()

    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})  # u2 drops out ...
    offset = dt.timedelta(days=365)  # ... seen first by a run whose clock is a year ahead
    assert harness.run(config).counts["exited"] == 0
    offset = dt.timedelta()
    assert harness.run(config).counts["exited"] == 0  # the clock is right again: u2 counts as missing since now
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        (since,) = conn.execute(text("SELECT missing_since FROM snapshot WHERE user_id = 'u2'")).one()
    engine.dispose()
    since = since if isinstance(since, dt.datetime) else dt.datetime.fromisoformat(since)  # SQLite: UTC text
    since = since.replace(tzinfo=dt.UTC) if since.tzinfo is None else since
    assert since <= dt.datetime.now(dt.UTC)  # never left in the future

    offset = dt.timedelta(minutes=30)
    assert harness.run(config).counts["exited"] == 0  # damping still holds within exit_after ...
    offset = dt.timedelta(hours=2)
    assert harness.run(config).counts["exited"] == 1  # ... and the exit comes once it has passed, not in a year
    assert harness.sent(harness.new_calls()) == {("u2", "vip"): False}


def test_exit_after_is_an_audience_setting(harness: Harness) -> None:
    import pytest

    from audience_sync.errors import ConfigError

    with pytest.raises(ConfigError, match=r"computed_traits\[0\] \('Score'\)\.exit_after: unknown key"):
        harness.config(harness.jsonl_destination() + harness.trait("Score") + 'exit_after = "1h"\n')
    with pytest.raises(ConfigError, match=r"audiences\[0\] \('VIP'\)\.exit_after: .*not a duration"):
        harness.config(harness.jsonl_destination() + harness.audience("VIP") + 'exit_after = "a day"\n')


@pytest.mark.parametrize(
    ("members", "stay", "share", "min_size", "held"),
    [
        (200, 100, 0.5, 100, False),  # exactly the share leaves: allowed (the share must be exceeded)
        (200, 99, 0.5, 100, True),  # one more: held, with the exact size in the message
        (99, 0 + 1, 0.5, 100, False),  # under min_size
        (100, 1, 0.5, 100, True),  # at min_size
        (200, 190, 0.04, 100, True),  # a small share: 10 of 200 is 5 %
        (200, 193, 0.04, 100, False),  # 7 of 200 is 3.5 %
        (40, 30, 0.3, 10, False),  # 10 / 0.3 = 33.3: counting stopped at 33 would hold 10 of 40 (25 %)
    ],
)
def test_the_guard_decides_at_its_boundaries(
    harness: Harness, members: int, stay: int, share: float, min_size: int, held: bool
) -> None:
    """The guard counts a destination's members only as far as its decision needs; the decisions at the edges
    of ``max_exit_share`` and ``min_size`` must be those of the exact count."""
    everyone = {f"u{i:03d}": f"{i}@x.io" for i in range(members)}
    harness.warehouse.set_members("VIP", everyone)
    config = harness.config(
        f"[guard]\nmax_exit_share = {share}\nmin_size = {min_size}\n"
        + harness.jsonl_destination()
        + harness.audience("VIP")
    )
    harness.run(config)
    harness.warehouse.set_members("VIP", dict(list(everyone.items())[:stay]))
    result = harness.run(config)
    assert (result.status == "failed") is held, result.error
    if held:
        gone = members - stay
        assert f"would lose {gone} of {members} members" in (result.error or "")
    else:
        assert result.counts["exited"] == members - stay
