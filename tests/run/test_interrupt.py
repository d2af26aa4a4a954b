"""Ctrl-C against the real CLI and a slow Gist, driven by the fake's request count, never by sleeps: the first
SIGINT lets the requests in flight finish and starts no other, the second stops at once and still records the
run; the progress counts what was acknowledged."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from sqlalchemy import create_engine, text

from audience_sync.config import parse_config
from audience_sync.run.sync import RunResult, run_sync
from tests.fakes.gist import FakeGist
from tests.harness import Harness
from tests.processes import Cli

USERS = {f"u{i:03d}": f"{i}@x.io" for i in range(200)}  # one chunk of 1,000 changes holds them all
ENV = {"GIST_API_KEY": "gist-test-key"}


def write_config(harness: Harness, gist: FakeGist) -> Path:
    path = harness.tmp_path / "interrupt.toml"
    # one request at a time, and a held request never times out while the test drives the run
    path.write_text(
        f'[state]\nurl = "{harness.state_url}"\n[source]\nurl = "{harness.warehouse.url}"\n'
        f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        "concurrency = 1\ntimeout = 600\n" + Harness.audience("VIP")
    )
    return path


def start(config: Path) -> Cli:
    return Cli(["run", "--json", "--config", str(config)], cwd=config.parent, env=ENV)


def run_row(harness: Harness) -> tuple[str, str | None, int]:
    engine = create_engine(harness.state_url)
    with engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM sync_runs ORDER BY id DESC")).first() or ("", "")
        sent = conn.execute(text("SELECT count(*) FROM diffs WHERE status = 'sent'")).scalar_one()
    engine.dispose()
    return status, error, sent


def test_first_sigint_stops_after_the_request_in_flight(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", USERS)
    config = write_config(harness, gist)
    trap = gist.trap(lambda path, body: path == "/contacts", hold=True)  # every request waits for the test
    try:
        with start(config) as cli:
            trap.wait()  # the run's first request has arrived
            cli.signal(signal.SIGINT)
            cli.wait_for_line(r"SIGINT: finishing")
            trap.release()
            assert cli.wait() == 3, cli.stderr
    finally:
        gist.release_all()
    summary = json.loads(cli.stdout)
    assert trap.count == 1  # no request started after the signal
    assert (summary["status"], summary["counts"]["sent"], summary["counts"]["pending"]) == ("partial", 1, 199)
    assert len(gist.contacts) == 1 and "Traceback" not in cli.stderr
    assert run_row(harness)[::2] == ("partial", 1)

    cli = start(config)
    assert cli.wait() == 0, cli.stderr
    assert len(gist.contacts) == 200


def test_second_sigint_stops_at_once_and_records_the_run(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", USERS)
    config = write_config(harness, gist)
    trap = gist.trap(lambda path, body: path == "/contacts", hold=True)
    try:
        with start(config) as cli:
            trap.wait()
            cli.signal(signal.SIGINT)
            cli.wait_for_line(r"SIGINT: finishing")
            cli.signal(signal.SIGINT)
            # the request is still held by the fake: the process did not wait for it
            assert cli.wait() == 130, cli.stderr
            assert not trap.released.is_set()
    finally:
        gist.release_all()
    status, error, sent = run_row(harness)
    assert (status, sent) == ("failed", 0)
    assert error is not None and "interrupted" in error


class Recording:
    """A progress that keeps what it was told."""

    def __init__(self) -> None:
        self.advanced: dict[str, int] = {}

    def begin(self, task: str, total: int | None = None) -> None:
        self.advanced.setdefault(task, 0)

    def advance(self, task: str, amount: int) -> None:
        self.advanced[task] = self.advanced.get(task, 0) + amount

    def end(self, task: str) -> None:
        pass


def test_the_progress_counts_what_was_acknowledged(harness: Harness, gist: FakeGist) -> None:
    harness.warehouse.set_members("VIP", USERS)
    config = parse_config(write_config(harness, gist).read_text(), environ=ENV)
    trap = gist.trap(lambda path, body: path == "/contacts", hold=True, times=1)
    stop = threading.Event()
    progress = Recording()
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(run_sync(config, progress=progress, stop=stop)))
    runner.start()
    try:
        trap.wait()
        stop.set()
    finally:
        gist.release_all()
    runner.join(120)
    assert results and results[0].counts["sent"] == 1
    assert progress.advanced["sending to gist"] == 1
