"""The JSONL sink's database-built messages path keeps the delivery guarantees: a process that dies with a chunk written
but not recorded leaves it in doubt, and the next run re-sends the current truth; nothing is lost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from audience_sync.destinations.jsonl import JsonlSink
from tests.harness import Harness, Warehouse


class Died(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way out records an outcome."""


def test_a_death_after_writing_a_chunk_is_repaired(
    harness: Harness, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = {f"u{i:03}": f"u{i}@x.io" for i in range(50)}
    warehouse.set_members("VIP", members)
    config = harness.config(harness.jsonl_destination().rstrip("\n") + "\nchunk_size = 10\n" + harness.audience("VIP"))
    deliver_messages = JsonlSink.deliver_messages
    calls = 0

    def dies_on_third_chunk(self: JsonlSink, messages: Any) -> Any:
        nonlocal calls
        calls += 1
        unacked = deliver_messages(self, messages)
        if calls == 3:
            raise Died
        return unacked

    monkeypatch.setattr(JsonlSink, "deliver_messages", dies_on_third_chunk)
    with pytest.raises(Died):
        harness.run(config)
    monkeypatch.undo()
    first = harness.sent(harness.new_calls())
    assert len(first) == 30  # three chunks written, the third never recorded
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        statuses: dict[Any, Any] = dict(conn.execute(text("SELECT status, count(*) FROM diffs GROUP BY status")).all())
        in_flight = conn.execute(text("SELECT first_user_id, last_user_id FROM delivery_in_flight")).all()
    assert statuses == {"sent": 20, "pending": 30}
    assert [tuple(r) for r in in_flight] == [("u020", "u029")]  # the third chunk, noted before it was written
    # u020..u029 were in flight; one of them leaves before the next run, which must still send its exit
    warehouse.set_members("VIP", {u: e for u, e in members.items() if u != "u025"})
    result = harness.run(config)
    assert result.status == "succeeded"
    second = harness.sent(harness.new_calls())
    assert second[("u025", "vip")] is False
    assert {u for (u, _), v in second.items() if v is True} == {f"u{i:03}" for i in range(20, 50) if i != 25}
    with engine.connect() as conn:
        snapshot: dict[Any, Any] = dict(
            conn.execute(text("SELECT user_id, value FROM snapshot WHERE NOT in_doubt")).all()
        )
        assert conn.execute(text("SELECT count(*) FROM snapshot WHERE in_doubt")).scalar_one() == 0
    engine.dispose()
    assert snapshot == {u: ("false" if u == "u025" else "true") for u in members}


def test_lines_are_compact_json_on_either_state_database(harness: Harness, warehouse: Warehouse) -> None:
    """Each line is written as ``json.dumps(..., separators=(",", ":"))`` would write it, PostgreSQL state too
    (whose JSON builders put spaces around ``:`` and after ``,``); strings keep their spaces and escapes."""
    warehouse.set_members("VIP", {"u 1": 'a, "b" : c@x.io', "u2": "b@x.io"})
    warehouse.set_trait("Score", {"u2": ("b@x.io", 12.5)})
    config = harness.config(
        harness.jsonl_destination().rstrip("\n")
        + '\nsend = ["identify", "track"]\n'
        + harness.audience("VIP")
        + harness.trait("Score")
    )
    assert harness.run(config).status == "succeeded"
    lines = (harness.tmp_path / "file.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False), line
    assert any('"email":"a, \\"b\\" : c@x.io"' in line for line in lines)
    assert any('"score":12.5' in line for line in lines)


def test_compact_keeps_strings_and_numbers_byte_for_byte() -> None:
    from audience_sync.destinations.jsonl import compact

    assert compact(b'{"a" : "x , y : \\" z", "b" : [1, 2.50], "c" : {"d" : null}}') == (
        b'{"a":"x , y : \\" z","b":[1,2.50],"c":{"d":null}}'
    )
    assert compact(b'{"a":"b"}') == b'{"a":"b"}'
    # without a backslash (split at the quotes): whitespace inside strings, even next to a quote, is kept
    assert compact(b'{"a" : " : x, ", "b" : [1, 2.50, true], "c" : {" d " : null}} ') == (
        b'{"a":" : x, ","b":[1,2.50,true],"c":{" d ":null}}'
    )
    assert compact(b'{"k" : "\\u00e9 , \\\\", "l" : 1}') == b'{"k":"\\u00e9 , \\\\","l":1}'


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON, st.booleans())
def test_compact_is_what_json_dumps_writes_compact(value: object, ascii_only: bool) -> None:
    """Whatever the strings hold (quotes, backslashes, spaces, separators), with or without escapes."""
    from audience_sync.destinations.jsonl import compact

    spaced = json.dumps(value, separators=(", ", " : "), ensure_ascii=ascii_only).encode()
    assert compact(spaced) == json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()


@given(st.lists(_JSON, max_size=5), st.booleans())
def test_a_chunk_of_lines_is_each_message_compacted(values: list[object], spaced: bool) -> None:
    """The chunk-wide shortcut (no separator anywhere: written as joined) gives the bytes of compacting each
    message, for compact messages (SQLite's) and spaced ones (PostgreSQL's) alike."""
    from audience_sync.destinations.jsonl import compact, lines

    separators = (", ", " : ") if spaced else (",", ":")
    messages = [json.dumps(v, separators=separators, ensure_ascii=False).encode() for v in values]
    assert lines(messages) == b"".join(compact(m) + b"\n" for m in messages)
    assert lines(messages) == b"".join(
        json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for v in values
    )
