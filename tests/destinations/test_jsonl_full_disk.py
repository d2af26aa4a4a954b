"""The JSONL sink on a full disk: a partial last line is cut off before the next append, a failed write leaves its
whole chunk pending (nothing of it in the file) with a clear error and exit 3, and the next run delivers it. Every
change recorded sent is carried by a line that parses."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import JsonlDestination
from audience_sync.destinations import build_destination
from audience_sync.destinations.jsonl import JsonlSink, cut_partial_line
from tests.harness import Harness
from tests.processes import run_cli


def lines(path: Path) -> list[dict[str, object]]:
    """Every line of ``path``, parsed (fails on a line that does not parse, or a last line without newline)."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.splitlines()]


def sent_users(state_url: str) -> list[str]:
    engine = create_engine(state_url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(text("SELECT user_id FROM diffs WHERE status = 'sent'")).scalars())
    finally:
        engine.dispose()


def test_a_partial_last_line_is_cut_before_the_next_append(harness: Harness) -> None:
    out = harness.tmp_path / "file.jsonl"
    harness.warehouse.set_members("VIP", {"u1": "a@x.io"})
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    assert harness.run(config).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"type":"identify","userId":"u9","tra')  # a write cut short by a full disk
    harness.warehouse.set_members("VIP", {"u1": "a@x.io", "u2": "b@x.io", "u3": "c@x.io"})
    assert harness.run(config).exit_code == 0
    parsed = lines(out)  # the partial line is gone and nothing was glued to it
    assert out.read_bytes().startswith(whole)
    assert [m["userId"] for m in parsed] == ["u1", "u2", "u3"]
    assert sent_users(harness.state_url) == ["u1", "u2", "u3"]  # every change recorded sent has its line


def test_cutting_a_partial_line_keeps_every_whole_line(tmp_path: Path) -> None:
    cases = {
        b"": b"",
        b'{"a":1}\n': b'{"a":1}\n',
        b'{"a":1}\n{"b":': b'{"a":1}\n',
        b"no newline at all": b"",
        b'{"a":1}\n' + b"x" * 200_000: b'{"a":1}\n',  # a tail longer than one block read
    }
    for before, after in cases.items():
        path = tmp_path / "f.jsonl"
        path.write_bytes(before)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            assert cut_partial_line(fd) == (len(after), len(before) - len(after))
        finally:
            os.close(fd)
        assert path.read_bytes() == after


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--config", "c.toml", cwd=project, timeout=300)


def test_a_full_disk_leaves_the_chunk_pending_and_the_next_run_delivers_it(harness: Harness, tiny_disk: Path) -> None:
    members = {f"u{i:03}": f"user{i}@example.com" for i in range(60)}
    harness.warehouse.set_members("VIP", members)
    out = tiny_disk / "vip.jsonl"
    harness.config_file(
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{out}"\nchunk_size = 10\n' + harness.audience("VIP"),
        name="c.toml",
    )
    stats = os.statvfs(tiny_disk)
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 8 * 1024))  # room for two or so chunks

    proc = cli(harness.tmp_path, "run")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "No space left on device" in proc.stderr, proc.stderr
    run = json.loads(cli(harness.tmp_path, "runs", "--format", "json").stdout)[0]
    assert run["status"] == "partial" and "No space left on device" in run["error"]
    sent = sent_users(harness.state_url)
    assert 0 < len(sent) < 60 and run["counts"]["pending"] == 60 - len(sent)
    assert sorted(str(m["userId"]) for m in lines(out)) == sent  # nothing of the failed chunk is in the file

    filler.unlink()  # room again
    proc = cli(harness.tmp_path, "run")
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(m["userId"]) for m in lines(out)) == sorted(members)  # each user once, every line whole
    assert sent_users(harness.state_url) == sorted(members)


def test_before_attempt_is_called_before_each_chunk_and_may_stop_it(harness: Harness) -> None:
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    dest = config.destination("file")
    assert isinstance(dest, JsonlDestination)
    calls: list[int] = []
    with JsonlSink(dest, before_attempt=lambda: calls.append(1)) as sink:
        assert isinstance(sink, JsonlSink)
        sink.deliver_messages([(1, b'{"n":1}')])
        sink.deliver_messages([(2, b'{"n":2}')])
    assert len(calls) == 2 and lines(dest.output_path) == [{"n": 1}, {"n": 2}]

    class Fenced(Exception):
        pass

    def refuse() -> None:
        raise Fenced

    with JsonlSink(dest, before_attempt=refuse) as sink, pytest.raises(Fenced):
        assert isinstance(sink, JsonlSink)
        sink.deliver_messages([(3, b'{"n":3}')])
    assert lines(dest.output_path) == [{"n": 1}, {"n": 2}]  # nothing written once it refused
    with build_destination(dest, before_attempt=refuse) as built:
        assert isinstance(built, JsonlSink) and built.before_attempt is refuse
