"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) opens it from a file, with no
console error, no request but the file itself, and every chart drawing the data points the database holds; a
screenshot of it is kept in ``test-artifacts/``. Skipped only when Chromium is missing outside CI; under CI
(``.ci/run`` installs Chromium and sets ``CI``) a missing Chromium fails the test."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from audience_sync.config import load_config
from audience_sync.inspection import html, report
from tests.browser import Chromium, find_chromium
from tests.cli.test_cli import cli
from tests.fakes.gist import FakeGist
from tests.harness import Harness, Warehouse
from tests.reporting import HOSTILE_NAME, HOSTILE_REASON, HOSTILE_USER, expected_marks, hostile_project

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

#: per chart: the marks it says it carries, and those drawn with a size on the page (bars: SVG geometry;
#: size points: rendered boxes of their markers)
CHART_MARKS = r"""(() => {
  const out = {};
  for (const fig of document.querySelectorAll('figure.chart')) {
    const id = fig.dataset.chartId;
    let drawn = 0;
    for (const g of fig.querySelectorAll('svg g[id]')) {
      if (!g.id.startsWith(id + '-')) continue;
      const series = g.id.slice(id.length + 1);
      if (/^(sent|skipped|failed|held|pending)$|^(entered|exited|changed)(-held)?-\d+$/.test(series)) {
        for (const p of g.querySelectorAll(':scope > path')) {
          const box = p.getBBox();
          if (box.width > 0 && box.height > 0) drawn++;
        }
      } else if (/^size-\d+$/.test(series)) {
        for (const u of g.querySelectorAll('use')) {
          const box = u.getBoundingClientRect();
          if (box.width > 0 && box.height > 0) drawn++;
        }
      }
    }
    out[id] = {declared: Number(fig.dataset.marks), drawn: drawn, width: fig.getBoundingClientRect().width};
  }
  return out;
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, but CI must run the browser test (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); .ci/run installs it and runs this")
    return binary


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Chromium]:
    with Chromium(chromium, tmp_path / "chromium-profile") as opened:
        yield opened


def keep(screenshot: Path, name: str) -> Path:
    """Copy a screenshot into ``test-artifacts/`` (ignored by git), where CI and people find it."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(screenshot, target)
    return target


def assert_charts_drawn(browser: Chromium, expected: dict[str, int]) -> None:
    charts = browser.evaluate(CHART_MARKS)
    assert {c: m["declared"] for c, m in charts.items()} == expected
    assert {c: m["drawn"] for c, m in charts.items()} == expected
    assert all(m["width"] > 600 for m in charts.values())  # laid out at the page's width


def test_the_report_opens_in_chromium_with_every_chart_drawn(
    browser: Chromium, tmp_path: Path, warehouse: Warehouse, gist: FakeGist
) -> None:
    harness = Harness(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", warehouse)
    config = hostile_project(harness, gist)
    page = tmp_path / "report.html"
    html.write(page, html.render(report.build_report(config)))

    browser.load(page)
    assert browser.console_errors() == []
    assert browser.requests() == [page.resolve().as_uri()]  # nothing but the file itself
    assert browser.evaluate("document.scripts.length") == 0
    shown = browser.evaluate("document.body.innerText")
    for hostile in (HOSTILE_USER, HOSTILE_NAME, HOSTILE_REASON):
        assert hostile in shown
    engine = create_engine(harness.state_url)
    expected = expected_marks(engine)
    engine.dispose()
    assert all(expected.values())
    assert_charts_drawn(browser, expected)
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep(shot, "report.png")


def test_the_browser_check_sees_console_errors_refused_scripts_and_requests(browser: Chromium, tmp_path: Path) -> None:
    """The checks above could fail: a console error, a script the page's policy refuses, and a request for
    anything but the file are all seen."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="script-src \'self\'">'
        '</head><body><script>console.error("inline ran")</script>'
        '<img src="http://127.0.0.1:9/pixel.png"></body></html>'
    )
    browser.load(bad)
    errors = " | ".join(browser.console_errors())
    assert "inline script violates the following Content Security Policy" in errors, errors
    assert "http://127.0.0.1:9/pixel.png" in browser.requests()
    noisy = tmp_path / "noisy.html"
    noisy.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>')
    browser.load(noisy)
    assert browser.console_errors() == ["boom"]


def test_the_demo_after_three_days_of_churn(browser: Chromium, tmp_path: Path) -> None:
    """``audience-sync demo`` three times (the initial sync and three simulated days), then ``report``: the page
    a new user sees. Its screenshot is ``test-artifacts/demo-report.png``."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    for _ in range(3):
        proc = cli("demo", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = cli("report", "--out", "report.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = load_config(str(tmp_path / "config" / "audience_sync.toml"))
    engine = create_engine(f"sqlite:///{tmp_path / 'audience_sync.db'}")
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT count(*) FROM sync_runs")).scalar_one()
    expected = expected_marks(engine, [c.key for c in config.computations])
    engine.dispose()
    assert runs == 4  # the first sync and one per simulated day

    browser.load(tmp_path / "report.html")
    assert browser.console_errors() == []
    assert browser.requests() == [(tmp_path / "report.html").resolve().as_uri()]
    assert_charts_drawn(browser, expected)
    shot = tmp_path / "demo-report.png"
    browser.screenshot(shot)
    print(f"demo report screenshot: {keep(shot, 'demo-report.png')}", file=sys.stderr)
