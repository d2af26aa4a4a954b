"""The report as one self-contained HTML page: inline CSS and inline SVG charts, no script, nothing fetched.

Every piece of data (names, keys, user ids, reasons, destination names) goes through :func:`escape`, in text
and in attributes alike, so an id like ``<script>`` or a reason with quotes is shown, never run. A
Content-Security-Policy forbids every fetch and every script on top of that: if anything ever slipped through,
the browser would refuse it (and say so in its console, which the browser test watches).
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Iterable
from pathlib import Path

from .charts import RUN_SERIES, key_chart, runs_chart
from .report import Cell, KeySeries, ReportData, Table

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
:root { color-scheme: light; --muted: #5f6368; --line: #dadce0; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #202124;
       margin: 0 auto; max-width: 1100px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 4px; } code { font-size: 13px; }
.meta, .intro, .empty, figcaption { color: var(--muted); }
.notes { background: #fff8e1; border: 1px solid #ffe082; padding: 8px 12px; border-radius: 4px; }
nav a { margin-right: 12px; }
figure { margin: 8px 0 16px; } figure svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 4px 0 8px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f1f3f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
.status-failed { color: #c62828; } .status-partial { color: #ef6c00; } .status-succeeded { color: #2e7d32; }
"""


def escape(value: object) -> str:
    """``value`` as text that HTML shows as written, in element text and in quoted attributes alike."""
    return html.escape(str(value), quote=True)


#: columns of identifiers, shown without thousands separators
ID_COLUMNS = frozenset({"run"})


def _cell(value: Cell, column: str = "") -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        return f'<td class="n">{value if column in ID_COLUMNS else f"{value:,}"}</td>'
    if isinstance(value, dt.datetime):
        return f"<td>{value:%Y-%m-%d %H:%M:%S}</td>"
    return f"<td>{escape(value)}</td>"


def _table(table: Table) -> str:
    parts = [f'<h2 id="{escape(table.anchor)}">{escape(table.title)}</h2>']
    if table.intro:
        parts.append(f'<p class="intro">{escape(table.intro)}</p>')
    if not table.rows:
        parts.append(f'<p class="empty">{escape(table.empty)}</p>')
        return "\n".join(parts)
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = "\n".join(
        "<tr>" + "".join(_cell(v, c) for v, c in zip(row, table.columns, strict=True)) + "</tr>" for row in table.rows
    )
    parts.append(
        f'<table data-table="{escape(table.anchor)}"><thead><tr>{head}</tr></thead><tbody>\n{rows}\n</tbody></table>'
    )
    if table.total > len(table.rows):
        parts.append(f'<p class="intro">{len(table.rows):,} of {table.total:,} rows shown.</p>')
    return "\n".join(parts)


def _figure(chart_id: str, kind: str, svg: str, marks: int, caption: str) -> str:
    return (
        f'<figure class="chart" data-chart="{escape(kind)}" data-chart-id="{escape(chart_id)}" data-marks="{marks}">'
        f'<figcaption id="{escape(chart_id)}-title">{escape(caption)}</figcaption>{svg}</figure>'
    )


def _runs_section(data: ReportData) -> str:
    parts = ['<h2 id="runs">Runs over time</h2>']
    if not data.runs:
        parts.append('<p class="empty">No runs to chart yet.</p>')
        return "\n".join(parts)
    chart = runs_chart(data.runs, chart_id="runs")
    series = ", ".join(name for name, _ in RUN_SERIES)
    caption = f"Changes per run ({series}), oldest left; {len(data.runs):,} runs."
    parts.append(_figure(chart.chart_id, "runs", chart.svg, chart.marks, caption))
    return "\n".join(parts)


def _key_article(index: int, key: KeySeries) -> str:
    chart = key_chart(key, chart_id=f"key{index}")
    churn = "entered and exited" if key.computation_class == "audience" else "gained, changed and lost a value"
    caption = (
        f"{key.computation_class} {key.key}: size after each run (top) and users who {churn} (bottom), "
        f"{len({p.run_id for p in key.points}):,} runs."
    )
    return (
        f'<article data-key="{escape(key.key)}"><h3>{escape(key.name)} <code>{escape(key.key)}</code></h3>'
        + _figure(chart.chart_id, "key", chart.svg, chart.marks, caption)
        + "</article>"
    )


def _nav(tables: Iterable[Table]) -> str:
    links = [("runs", "Runs over time"), *((t.anchor, t.title) for t in tables)]
    return "<nav>" + "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in links) + "</nav>"


def render(data: ReportData) -> str:
    """The whole page for ``data``: valid with no runs and no keys at all, and with the caps of ``data`` said."""
    tables = {t.anchor: t for t in data.tables}
    runs_table, keys_table = tables.pop("latest-runs", None), tables.pop("keys", None)
    window = f" since {data.since:%Y-%m-%d %H:%M} UTC" if data.since else ""
    scope = f"destination {data.destination}" if data.destination else "destinations " + ", ".join(data.destinations)
    body = [
        "<header><h1>audience-sync report</h1>",
        f'<p class="meta">Generated {data.generated_at:%Y-%m-%d %H:%M:%S} UTC by audience-sync {escape(data.version)} '
        f"from {escape(data.config_path)}; {escape(scope or 'no destinations')}; "
        f"{data.runs_total:,} runs{escape(window)}.</p></header>",
        _nav(data.tables),
    ]
    if data.notes:
        body.append('<div class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in data.notes) + "</div>")
    body.append(_runs_section(data))
    if runs_table is not None:
        body.append(_table(runs_table))
    if keys_table is not None:
        body.append(_table(keys_table))
    charted = [k for k in data.keys if k.points]
    if charted:
        body.append(f'<p class="intro">{len(charted):,} audiences and traits charted.</p>')
        body += [_key_article(i, k) for i, k in enumerate(charted)]
    body += [_table(t) for t in tables.values()]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>audience-sync report</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write(path: Path, page: str) -> None:
    """Write ``page`` to ``path`` whole or not at all: a reader never sees half a report. OSError (a missing
    directory, no permission) leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(page)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
