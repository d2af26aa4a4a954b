"""The messages the state database builds (store/messages.py) are the messages the Python builders make
(destinations/messages.py): same fields, same values, for any key, identifier, value and option, on SQLite
(where the bytes are identical too) and on PostgreSQL."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert

from audience_sync.destinations.batching import encode
from audience_sync.destinations.messages import MessageOptions, messages_for
from audience_sync.store import outbox
from audience_sync.store.engine import create_state_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import DiffRow, SyncRun, table_of, utcnow
from audience_sync.values import encode as encode_value

# PostgreSQL text cannot hold NUL, and no identifier or value a source yields carries one
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(["vip", "email", "audience_key", "trait_key", "order_completed_last_30days", "x1"])


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    computation_class = draw(st.sampled_from(["audience", "trait"]))
    if computation_class == "audience":
        new_value = draw(st.sampled_from(["true", "false"]))
    else:
        new_value = encode_value(draw(json_values))  # type: ignore[assignment]  # a value encodes to text
    return {
        "computation_key": draw(keys),
        "computation_class": computation_class,
        "user_id": draw(text.filter(bool)),
        "email": draw(st.none() | text),
        "new_value": new_value,
        "message_id": "as-" + draw(st.text("0123456789abcdef", min_size=40, max_size=40)),
    }


options_strategy = st.builds(
    MessageOptions,
    space_id=text,
    entered_event=text,
    exited_event=text,
    trait_event=text,
    integrations=st.none() | st.dictionaries(text, st.booleans(), max_size=3),
)
sends = st.sampled_from([("identify",), ("track",), ("identify", "track")])


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = create_state_engine(state_url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _new_run(engine: Engine, batch: list[dict[str, Any]]) -> int:
    now = utcnow()
    fixed = {"destination": "d", "change": "changed", "status": "pending", "created_at": now}
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(table_of(SyncRun)).returning(table_of(SyncRun).c.id),
            {"mode": "incremental", "trigger": "test", "status": "running", "started_at": now, "host": "h", "pid": 1},
        ).scalar_one()
        conn.execute(
            insert(table_of(DiffRow)),
            [{**row, **fixed, "run_id": run_id} for row in batch],
        )
    return int(run_id)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(rows(), min_size=1, max_size=4), options=options_strategy, send=sends)
def test_database_messages_equal_the_python_messages(
    engine: Engine, batch: list[dict[str, Any]], options: MessageOptions, send: tuple[str, ...]
) -> None:
    run_id = _new_run(engine, batch)
    [built] = list(outbox.pending_messages(engine, run_id, "d", 100, send, options))
    [changes] = list(outbox.pending_chunks(engine, run_id, "d", 100))
    assert built.size == changes.size == len(batch) and (built.first, built.last) == (changes.first, changes.last)
    ts = json.loads(built.items[0][1])["timestamp"]
    expected = [(c.diff_id, m) for c in changes.items for m in messages_for(c, send, options, ts=ts)]
    assert [i for i, _ in built.items] == [i for i, _ in expected]
    for (_, ours), (_, python) in zip(built.items, expected, strict=True):
        assert isinstance(ours, bytes)
        assert json.loads(ours) == python
        if engine.dialect.name == "sqlite":
            assert ours == encode(python)


def test_chunks_keep_a_users_changes_together_and_cover_every_change(engine: Engine) -> None:
    batch = [
        {
            "computation_key": key,
            "computation_class": "audience",
            "user_id": f"u{u}",
            "email": None,
            "new_value": "true",
            "message_id": f"as-{u}-{key}",
        }
        for u, key in itertools.product(range(7), ["a", "b", "c"])
    ]
    run_id = _new_run(engine, batch)
    chunks = list(outbox.pending_messages(engine, run_id, "d", 4, ("identify", "track"), MessageOptions()))
    users = [{json.loads(m)["userId"] for _, m in c.items} for c in chunks]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(users, 2))
    assert sum(c.size for c in chunks) == 21 and sum(len(c.items) for c in chunks) == 42
