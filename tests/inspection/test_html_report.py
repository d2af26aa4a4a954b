"""The HTML report, read as a parser reads it: every section, data escaped, nothing fetched, no secrets, readable
with no data and capped at scale; and ``report`` on the command line. (The browser test opens it in Chromium.)"""

from __future__ import annotations

import re
import sqlite3
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import parse_config
from audience_sync.inspection import html, report
from audience_sync.store.migrate import upgrade
from tests.cli.test_cli import cli
from tests.fakes.gist import FakeGist
from tests.harness import Harness, Warehouse
from tests.reporting import HOSTILE_NAME, HOSTILE_REASON, HOSTILE_USER, KEY_ENV, expected_marks, hostile_project


class Page(HTMLParser):
    """What a browser would build from the page: tags, attributes, text, and the tables' cells."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("data-table")
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> list[dict[str, str]]:
        head, *body = self.tables[table]
        return [dict(zip(head, row, strict=True)) for row in body]

    def figures(self) -> dict[str, int]:
        return {a["data-chart-id"] or "": int(a["data-marks"] or 0) for t, a in self.tags if t == "figure"}


def assert_self_contained(page: str, parsed: Page) -> None:
    """No script, no handler, nothing that loads a resource: only in-page anchors and SVG's own references."""
    assert not [t for t, _ in parsed.tags if t in ("script", "link", "iframe", "object", "embed", "img", "base")]
    for tag, attrs in parsed.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)
    assert "@import" not in page and not re.search(r"url\((?!#)", page)
    csp = [a for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


SVG = "{http://www.w3.org/2000/svg}"
BAR_GROUP = re.compile(
    r"(?P<chart>runs|key\d+)-(?:(?:sent|skipped|failed|held|pending)|(?:entered|exited|changed)(?:-held)?-\d+)$"
)
SIZE_GROUP = re.compile(r"(?P<chart>key\d+)-size-\d+$")


def svg_marks(page: str) -> dict[str, int]:
    """Per chart, the data marks its SVG draws: a ``path`` per bar in each bar series' group, a ``use`` (marker)
    per point in each size line's group. The SVG is parsed as the XML it is."""
    marks: dict[str, int] = {}
    for svg in re.findall(r"<svg .*?</svg>", page, re.S):
        for group in ElementTree.fromstring(svg).iter(f"{SVG}g"):
            gid = group.get("id", "")
            if match := BAR_GROUP.match(gid):
                n = len(group.findall(f"{SVG}path"))
            elif match := SIZE_GROUP.match(gid):
                n = len(list(group.iter(f"{SVG}use")))
            else:
                continue
            marks[match["chart"]] = marks.get(match["chart"], 0) + n
    return marks


def test_the_report_shows_everything_escaped_and_self_contained(harness: Harness, gist: FakeGist) -> None:
    config = hostile_project(harness, gist)
    data = report.build_report(config)
    page = html.render(data)
    parsed = Page(page)
    assert_self_contained(page, parsed)
    shown = "".join(parsed.text)
    for hostile in (HOSTILE_USER, HOSTILE_NAME, HOSTILE_REASON):
        assert hostile in shown  # shown as written, and (above) no tag or handler came of it
    assert "gist-test-key" not in page  # the API key is nowhere, not even in a reason

    engine = create_engine(harness.state_url)
    expected = expected_marks(engine)
    assert parsed.figures() == expected  # what the page says each chart carries is what the database holds
    assert svg_marks(page) == expected  # and the SVG draws it
    assert all(expected.values())

    runs = parsed.rows("latest-runs")
    assert [int(r["run"]) for r in runs] == [4, 3, 2, 1] and runs[0]["status"] == "failed"  # the guard held VIP
    failures = parsed.rows("failures")
    assert failures and {f["user"] for f in failures} == {HOSTILE_USER}
    assert all(f["destination"] == "gist" and HOSTILE_REASON in f["reason"] for f in failures)
    assert [(o["destination"], o["key"], o["run"], o["changes"]) for o in parsed.rows("outbox")] == [
        ("gist", "score", "4", "1")  # u05's 503 of the last run (earlier ones were superseded)
    ]
    holds = parsed.rows("holds")
    assert {(h["run"], h["destination"], h["key"]) for h in holds} == {("4", "file", "vip"), ("4", "gist", "vip")}
    assert all("vip" in h["reason"] for h in holds)
    with engine.connect() as conn:
        sizes_now: dict[Any, Any] = dict(
            conn.execute(
                text(
                    "SELECT destination, count(*) FROM snapshot WHERE computation_key = 'vip' AND value = 'true' "
                    "GROUP BY destination"
                )
            ).all()
        )
        errored = conn.execute(text("SELECT count(*) FROM sync_runs WHERE error IS NOT NULL")).scalar_one()
    keys = {k["key"]: k for k in parsed.rows("keys")}
    assert keys["vip"]["name"] == HOSTILE_NAME
    assert keys["vip"]["size now"] == ", ".join(f"{d}: {sizes_now[d]}" for d in ("file", "gist"))
    assert len(parsed.rows("run-errors")) == errored
    engine.dispose()


def test_a_fresh_database_gives_a_readable_empty_report(tmp_path: Path, state_url: str, warehouse: Warehouse) -> None:
    harness = Harness(tmp_path, state_url, warehouse)
    config = harness.config(harness.jsonl_destination() + harness.audience("VIP"))
    page = html.render(report.build_report(config))
    parsed = Page(page)
    assert_self_contained(page, parsed)
    shown = " ".join(parsed.text)
    assert parsed.figures() == {}
    for empty in (
        "No runs to chart yet.",
        "No runs yet",
        "No change failed",
        "Nothing is pending",
        "The guard held nothing back",
    ):
        assert empty in shown
    assert parsed.rows("keys") == [
        {
            "key": "vip",
            "name": "VIP",
            "class": "audience",
            "status": "new",
            "size now": "not synced yet",
            "entered": "",
            "exited": "",
            "charted": "",
        }
    ]


def test_thousands_of_runs_and_hundreds_of_keys_are_capped_and_the_page_says_so(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    """2,000 runs of 150 keys (300,000 size rows, written straight into the tables by two set-based statements):
    the page charts the newest 200 runs and 24 keys, lists every key, says what it left out, and stays small."""
    runs, keys = 2_000, 150
    state = tmp_path / "state.db"
    upgrade(create_engine(f"sqlite:///{state}"))
    # run r starts at 2026-01-01 + 3r hours (the text SQLite's datetime() writes, as str(datetime) would)
    with sqlite3.connect(state) as db:
        db.execute(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < :runs) "
            "INSERT INTO sync_runs (id, mode, trigger, status, started_at, finished_at, destinations, computations, "
            "counts, host, pid) "
            "SELECT n, 'incremental', 'schedule', 'succeeded', datetime('2026-01-01', (3 * n) || ' hours'), "
            "datetime('2026-01-01', (3 * n) || ' hours', '1 minutes'), '[\"file\"]', '[]', "
            "json_object('sent', n % 97, 'failed', n % 3, 'skipped', 1), 'h', 1 FROM r",
            {"runs": runs},
        )
        db.execute(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < :runs), "
            "k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n < :keys - 1) "
            "INSERT INTO size_history (destination, computation_key, run_id, computation_class, size, entered, "
            "exited, changed, sent, failed, skipped, pending, held, recorded_at) "
            "SELECT 'file', printf('k%03d', k.n), r.n, 'audience', 1000 + (r.n * k.n) % 50, (r.n + k.n) % 7, "
            "(r.n * k.n) % 5, 0, 0, 0, 0, 0, 0, datetime('2026-01-01', (3 * r.n) || ' hours') "
            "FROM r CROSS JOIN k ORDER BY r.n, k.n",
            {"runs": runs, "keys": keys},
        )
        assert db.execute("SELECT count(*) FROM size_history").fetchone() == (runs * keys,)
    body = "".join(
        f'[[audiences]]\nname = "K{k:03}"\nkey = "k{k:03}"\nsql = "{Warehouse.audience_sql("x")}"\n'
        for k in range(keys)
    )
    config = parse_config(
        f'[state]\nurl = "sqlite:///{state}"\n[source]\nurl = "{warehouse.url}"\n'
        f'[[destinations]]\nname = "file"\ntype = "jsonl"\npath = "{tmp_path / "f.jsonl"}"\n' + body,
        path=str(tmp_path / "c.toml"),
        environ={},
    )
    started = time.monotonic()
    data = report.build_report(config, audiences=["k149"])
    page = html.render(data)
    elapsed = time.monotonic() - started
    parsed = Page(page)
    assert_self_contained(page, parsed)
    assert len(data.runs) == 200 and data.runs_total == runs and data.charted_keys == 24
    assert [k.key for k in data.keys[:2]] == ["k149", "k000"]  # the key asked for is charted first
    assert len(parsed.figures()) == 25 and len(parsed.rows("keys")) == keys
    notes = " ".join(data.notes)
    assert "Only the newest 200 of 2000 runs" in notes and "24 of 150 synced audiences and traits" in notes
    latest = parsed.rows("latest-runs")
    assert len(latest) == report.MAX_ROWS and latest[0]["run"] == "2000" and latest[0]["sent"] == f"{2000 % 97:,}"
    assert len(page) < 4_000_000, len(page)
    print(f"2,000 runs x 150 keys: report built and rendered in {elapsed:.1f} s, {len(page) / 1e6:.1f} MB")


@pytest.fixture
def hostile(harness: Harness, gist: FakeGist) -> Path:
    hostile_project(harness, gist)
    path = harness.tmp_path / "audience_sync.toml"
    path.write_text(
        f'[state]\nurl = "{harness.state_url}"\n[source]\nurl = "{harness.warehouse.url}"\n'
        + harness.jsonl_destination()
        + f'[[destinations]]\nname = "gist"\ntype = "gist"\napi_key_env = "GIST_API_KEY"\nendpoint = "{gist.url}"\n'
        + '[[audiences]]\nname = "V"\nkey = "vip"\nsql = "SELECT 1"\n'
        + harness.trait("Score")
    )
    return harness.tmp_path


def run_cli(project: Path, *args: str) -> Any:
    return cli(*args, "--config", "audience_sync.toml", cwd=project, env=KEY_ENV)


def test_report_command_writes_the_page_and_refuses_bad_input(hostile: Path) -> None:
    proc = run_cli(hostile, "report", "--out", "r.html", "--since", "7d", "--destination", "gist")
    assert proc.returncode == 0, proc.stderr
    assert "wrote r.html" in proc.stdout and "4 runs" in proc.stdout
    parsed = Page((hostile / "r.html").read_text(encoding="utf-8"))
    assert {r["destination"] for r in parsed.rows("outbox")} == {"gist"}
    assert not list(hostile.glob(".r.html.*"))  # no temporary file left behind

    proc = run_cli(hostile, "report", "--out", "old.html", "--since", "2999-01-01T00:00Z")
    assert proc.returncode == 0 and "0 runs" in proc.stdout
    for args, message in (
        (("--since", "last tuesday"), "'last tuesday' is neither an ISO 8601 instant"),
        (("--destination", "nope"), "no destination named 'nope'"),
        (("--audience", "nope"), "no audience or trait with key 'nope'"),
    ):
        proc = run_cli(hostile, "report", "--out", "x.html", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_cli(hostile, "report", "--out", "missing/dir/x.html")
    assert proc.returncode == 2 and "cannot write missing/dir/x.html" in proc.stderr, proc.stderr
    assert not (hostile / "x.html").exists()
