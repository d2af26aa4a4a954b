"""A SQLite state file whose text is UTF-16 (one another program created): the destinations get the same UTF-8
JSON as from a UTF-8 state file, in the JSONL file and in the HTTP bodies."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from audience_sync.store.engine import create_state_engine
from tests.fakes.capture import CaptureServer
from tests.fakes.segment import FakeSegment
from tests.harness import Harness, Warehouse, toml_options

#: ids, emails and values in every width UTF-8 and UTF-16 have: ASCII, two and three bytes, and a surrogate pair
MEMBERS = {"u1": "a@x.io", "ü2": "é@x.io", "用户3": "名@x.io", "u4🙂": "🙂@x.io", "u5": None}
SCORES = {"u1": ("a@x.io", "Zoë"), "用户3": ("名@x.io", "東京 🗼"), "u5": (None, 7)}


def utf16_file(path: Path, encoding: str = "UTF-16le") -> str:
    """A new SQLite file whose text encoding is ``encoding`` (set before its first table, as SQLite requires)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA encoding='{encoding}'")
        db.execute("CREATE TABLE made_elsewhere (x TEXT)")
        db.commit()
        assert db.execute("PRAGMA encoding").fetchone()[0] == encoding
    return f"sqlite:///{path}"


def harnesses(tmp_path: Path, encoding: str) -> tuple[Harness, Harness]:
    """Two harnesses on the same warehouse: one on a new UTF-8 state file, one on a UTF-16 state file."""
    warehouse = Warehouse(tmp_path / "warehouse.db")
    warehouse.set_members("VIP", MEMBERS)
    warehouse.set_trait("Score", SCORES)
    (tmp_path / "utf8").mkdir()
    (tmp_path / "utf16").mkdir()
    utf8 = Harness(tmp_path / "utf8", f"sqlite:///{tmp_path / 'utf8' / 'state.db'}", warehouse)
    utf16 = Harness(tmp_path / "utf16", utf16_file(tmp_path / "utf16" / "state.db", encoding), warehouse)
    return utf8, utf16


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs between two state files by design: its timestamp (when the chunk was read)
    and its message id (derived from the state file's install id)."""
    return {k: v for k, v in message.items() if k not in ("timestamp", "messageId")}


def same(line: bytes) -> str:
    """A line's message as it compares between the two files."""
    return json.dumps(comparable(json.loads(line)), sort_keys=True, ensure_ascii=False)


def jsonl_run(harness: Harness) -> list[bytes]:
    config = harness.config(
        harness.jsonl_destination().rstrip("\n")
        + '\nsend = ["identify", "track"]\n'
        + harness.audience("VIP")
        + harness.trait("Score")
    )
    result = harness.run(config)
    assert result.status == "succeeded", result
    return (harness.tmp_path / "file.jsonl").read_bytes().splitlines()


@pytest.mark.parametrize("encoding", ["UTF-16le", "UTF-16be"])
def test_jsonl_lines_from_a_utf16_state_file_are_the_utf8_ones(tmp_path: Path, encoding: str) -> None:
    utf8, utf16 = harnesses(tmp_path, encoding)
    expected = jsonl_run(utf8)
    got = jsonl_run(utf16)
    assert len(got) == len(expected) == 16  # 5 members and 3 scores, an identify and a track each
    for line in got:
        message = json.loads(line.decode("utf-8"))  # UTF-8 JSON, nothing else
        assert line == json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    # the same messages; SQLite orders text by its bytes in the file's encoding, so users may come in another order
    assert sorted(map(same, got)) == sorted(map(same, expected))
    with closing(sqlite3.connect(tmp_path / "utf16" / "state.db")) as db:
        assert db.execute("PRAGMA encoding").fetchone()[0] == encoding  # the file stays as it was made
        assert db.execute("SELECT count(*) FROM diffs WHERE status = 'sent'").fetchone()[0] == 8


def test_segment_bodies_from_a_utf16_state_file_are_utf8_json(tmp_path: Path, segment: FakeSegment) -> None:
    _, utf16 = harnesses(tmp_path, "UTF-16le")
    config = utf16.config(
        f'[[destinations]]\nname = "segment"\ntype = "segment"\nwrite_key_env = "SEGMENT_WRITE_KEY"\n'
        f'endpoint = "{segment.url}"\nsend = ["identify", "track"]\n' + utf16.audience("VIP") + utf16.trait("Score"),
        environ={"SEGMENT_WRITE_KEY": "segment-write-key"},
    )
    assert utf16.run(config).exit_code == 0
    assert segment.requests
    messages = [m for r in segment.requests for m in json.loads(r["body"].decode("utf-8"))["batch"]]
    assert len(messages) == 16
    assert segment.profiles["用户3"] == {"vip": True, "score": "東京 🗼", "email": "名@x.io"}
    assert segment.profiles["u4🙂"] == {"vip": True, "email": "🙂@x.io"}


def test_webhook_bodies_from_a_utf16_state_file_are_utf8_json(tmp_path: Path, receiver: CaptureServer) -> None:
    _, utf16 = harnesses(tmp_path, "UTF-16be")
    config = utf16.config(
        f'[[destinations]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}/hook"\n'
        + toml_options({"batch_size": 3})
        + utf16.audience("VIP"),
    )
    assert utf16.run(config).exit_code == 0
    batches = [json.loads(r["body"].decode("utf-8"))["batch"] for r in receiver.requests]
    assert sorted(len(b) for b in batches) == [2, 3]
    traits = {m["userId"]: m["traits"] for b in batches for m in b}
    assert traits["ü2"] == {"vip": True, "email": "é@x.io"}
    assert traits["u5"] == {"vip": True}


def test_the_encoding_is_read_from_the_file(tmp_path: Path) -> None:
    from audience_sync.store.engine import text_is_utf8

    utf16 = create_state_engine(utf16_file(tmp_path / "utf16.db"))
    utf8 = create_state_engine(f"sqlite:///{tmp_path / 'utf8.db'}")
    try:
        with utf16.connect() as conn:
            assert not text_is_utf8(conn)
            assert not text_is_utf8(conn)  # cached on the connection: the same answer
        with utf8.connect() as conn:
            assert text_is_utf8(conn)
    finally:
        utf16.dispose()
        utf8.dispose()
    plain = create_engine(f"sqlite:///{tmp_path / 'utf16.db'}")
    with plain.connect() as conn:
        assert not text_is_utf8(conn)
    plain.dispose()


def test_a_pushed_down_user_id_is_measured_in_utf8_bytes(tmp_path: Path) -> None:
    """The pushdown in a UTF-16 state file (its own source) takes the ids the streamed path takes: the limit is
    in UTF-8 bytes, which a UTF-16 blob's length undercounts for characters of three UTF-8 bytes."""
    url = utf16_file(tmp_path / "state.db")
    warehouse = Warehouse(tmp_path / "state.db")
    too_long, longest = "用" * 700, "é" * 1000  # 2,100 and 2,000 UTF-8 bytes; 1,400 and 2,000 in UTF-16
    warehouse.set_members("VIP", {too_long: "a@x.io", longest: "b@x.io", "u1": "c@x.io"})
    harness = Harness(tmp_path, url, warehouse)
    result = harness.run(harness.config(harness.jsonl_destination() + harness.audience("VIP")))
    assert result.counts["skipped"] == 1 and result.counts["sent"] == 2, result.counts
    assert {call["userId"] for call in harness.new_calls()} == {longest, "u1"}


def test_the_encoding_of_a_file_another_connection_makes_is_the_one_read(tmp_path: Path) -> None:
    """An engine's connection opened on a new file (switched to WAL, no table yet) and asked before another
    program makes the file's first table in UTF-16 answers for the file as it then is."""
    from audience_sync.store.engine import text_is_utf8

    engine = create_state_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with engine.connect() as conn:
            assert text_is_utf8(conn)  # a new file, which SQLite would make in UTF-8
            with closing(sqlite3.connect(tmp_path / "new.db")) as other:
                other.execute("PRAGMA encoding='UTF-16le'")
                other.execute("CREATE TABLE made_elsewhere (x TEXT)")
                other.commit()
            assert not text_is_utf8(conn)
    finally:
        engine.dispose()
