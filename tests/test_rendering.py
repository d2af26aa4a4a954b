"""Messages rendered by the state database (JSONL fast path) equal the ones built in Python."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from audience_sync.destinations.messages import MessageOptions, messages_for
from audience_sync.destinations.rendering import LineFormat
from audience_sync.store import outbox
from audience_sync.store.engine import create_state_engine
from tests.conftest import Harness, Warehouse

VALUES: dict[str, tuple[str | None, Any]] = {
    "u1": ("a@x.io", 1),
    "u2": (None, 2.5),
    "u3": ("c@x.io", 'text "quoted"\n é 😀'),
    "u4": (None, '{"b": [1, 2.0, "x"], "a": null}'),
    "u5": ("e@x.io", 0),
}


def _without_timestamp(message: dict[str, Any]) -> dict[str, Any]:
    assert message["timestamp"].endswith("Z")
    return {k: v for k, v in message.items() if k != "timestamp"}


def test_rendered_lines_equal_python_messages(harness: Harness, warehouse: Warehouse) -> None:
    body = (
        harness.jsonl_destination().rstrip("\n")
        + '\nsend = ["identify", "track"]\nspace_id = "sp1"\nentered_event = "In"\n'
        + harness.audience("VIP")
        + harness.audience("Audience Key")
        + harness.trait("Score")
        + harness.trait("Email")
        + harness.trait("Trait Key")
    )
    config = harness.config(body)
    members = {u: e for u, (e, _) in VALUES.items()}
    warehouse.set_members("VIP", members)
    warehouse.set_members("Audience Key", members)
    for trait in ("Score", "Email", "Trait Key"):
        warehouse.set_trait(trait, VALUES)
    assert harness.run(config).status == "succeeded"
    # a second, dry run leaves every kind of change pending: entries, exits (false / null), changes
    warehouse.set_members("VIP", {"u1": "a@x.io", "u9": None})
    warehouse.set_trait("Score", {"u1": ("a@x.io", 7), "u6": (None, False)})
    result = harness.run(config, dry_run=True)
    engine = create_state_engine(harness.state_url)
    try:
        with engine.begin() as conn:  # containers come from Parquet or JSON columns; SQLite sources have none
            conn.execute(
                text(
                    "UPDATE diffs SET new_value = :v WHERE run_id = :r AND computation_key = 'score' AND user_id = 'u1'"
                ),
                {"v": '[3,{"a":true,"z":1.5}]', "r": result.run_id},
            )
        fmt = LineFormat(("identify", "track"), MessageOptions(space_id="sp1", entered_event="In"))
        for run_id in (result.run_id,):
            rendered = [
                _without_timestamp(json.loads(line))
                for chunk in outbox.pending_line_chunks(engine, run_id, "file", 3, fmt)
                for line in chunk.lines
            ]
            built = [
                _without_timestamp(json.loads(json.dumps(m)))
                for chunk in outbox.pending_chunks(engine, run_id, "file", 3)
                for change in chunk
                for m in messages_for(change, fmt.send, fmt.options)
            ]
            assert [json.dumps(m) for m in rendered] == [json.dumps(m) for m in built]  # key order too
            assert {m["type"] for m in rendered} == {"identify", "track"}
            assert len(rendered) > 20
    finally:
        engine.dispose()
