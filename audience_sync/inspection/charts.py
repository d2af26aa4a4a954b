"""The report's charts: matplotlib figures rendered to inline SVG (no display, no files, nothing fetched).

Each chart's SVG ids are scoped under the chart's own id, so that many charts can live in one HTML document
(matplotlib names clip paths and markers by hashes, and its groups ``axes_1``, ``patch_2``… in every figure).
Each series is one group with an id: ``<chart>-<series>`` (the runs chart), ``<chart>-<count>-<d>`` and
``<chart>-<count>-held-<d>`` (a key's bars per destination ``d``, apart when the guard held them), and
``<chart>-size-<d>`` (a size line). A group holds one ``path`` per bar with a value, or one ``use`` per size
point, so that a test (or a person with the browser's inspector) can tell that a chart carries its data. Bars
are one collection per series, not an artist per bar: 24 charts of 200 runs render in seconds, not minutes.
Text goes into the SVG as text (not glyph paths), escaped by matplotlib's SVG writer; math text is off, so a
``$`` in a name is just a dollar sign.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .history import SizePoint
from .report import KeySeries, RunBar

HELD = "#ef6c00"
#: series of the runs chart, bottom to top, with their colours
RUN_SERIES = (
    ("sent", "#2e7d32"),
    ("skipped", "#9e9e9e"),
    ("failed", "#c62828"),
    ("held", HELD),
    ("pending", "#1565c0"),
)
ENTERED = "#2e7d32"
EXITED = "#c62828"
CHANGED = "#1565c0"
LINE_COLOURS = ("#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#5d4037", "#ad1457")

_RC: Any = {  # Any: matplotlib types rc keys as a Literal of every known name
    "svg.fonttype": "none",  # text as <text>, not glyph outlines: smaller, selectable
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


@dataclass(frozen=True)
class Chart:
    """One chart as inline SVG, and how many data marks (bars with a value, size points) it drew."""

    chart_id: str
    svg: str
    marks: int


def _figure(height: float, rows: int = 1, ratios: Sequence[float] | None = None) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(10, height))
    FigureCanvasAgg(fig)  # the Agg canvas: no display is ever touched; savefig renders SVG
    # fixed margins (in inches, so every chart lines up): a third of the time of constrained layout
    fig.subplots_adjust(left=0.8 / 10, right=1 - 1.3 / 10, top=1 - 0.35 / height, bottom=0.75 / height, hspace=0.12)
    if rows == 1:
        return fig, [fig.add_subplot()]
    axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": list(ratios or [1] * rows)})
    return fig, list(axes)


def _svg(fig: Figure, chart_id: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # inline: no XML declaration or doctype
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{chart_id}-{m.group(1)}"', text)
    text = text.replace("url(#", f"url(#{chart_id}-").replace('xlink:href="#', f'xlink:href="#{chart_id}-')
    return text.replace("<svg ", f'<svg role="img" aria-labelledby="{chart_id}-title" ', 1)


def _run_axis(ax: Axes, labels: Sequence[tuple[int, Any]]) -> None:
    """Ticks at runs: the run id and when it started, at most about ten of them."""

    def label(x: float, _pos: int) -> str:
        i = round(x)
        if i != x or not 0 <= i < len(labels):
            return ""
        run_id, started = labels[i]
        return f"{run_id}\n{started:%m-%d %H:%M}" if started is not None else str(run_id)

    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(label))
    ax.set_xlim(-0.75, max(len(labels) - 0.25, 0.75))
    ax.set_xlabel("run (id, start in UTC)")


def _bars(
    ax: Axes,
    xs: Sequence[float],
    heights: Sequence[float],
    bottoms: Sequence[float],
    *,
    width: float,
    colour: str,
    gid: str,
    label: str,
    alpha: float = 1.0,
) -> int:
    """Bars as one collection (one SVG group ``gid``, a path per bar with a value); how many were drawn."""
    half = width / 2
    boxes = [
        [(x - half, b), (x - half, b + h), (x + half, b + h), (x + half, b)]
        for x, h, b in zip(xs, heights, bottoms, strict=True)
        if h
    ]
    bars = PolyCollection(boxes, facecolors=colour, linewidths=0, alpha=alpha, label=label)
    bars.set_gid(gid)
    ax.add_collection(bars, autolim=True)
    ax.autoscale_view()
    return len(boxes)


def _cut_tall_bars(ax: Axes, heights: Sequence[tuple[float, float]], *, sign: int = 1) -> int:
    """When a few bars dwarf the rest (an initial sync next to days of churn), cut the axis just above the others
    so that the churn stays readable, and write each cut bar's value at the cut. ``heights``: (x, height) with
    height of the sign ``sign``. Returns how many bars were cut."""
    tall = sorted(abs(h) for _, h in heights if h * sign > 0)
    if len(tall) < 4:
        return 0
    others = tall[: len(tall) - max(1, len(tall) // 20)]  # all but the tallest 5 %, at least one
    limit = others[-1] * 1.25
    if tall[-1] <= 4 * others[-1]:
        return 0
    if sign > 0:
        ax.set_ylim(top=limit)
    else:
        ax.set_ylim(bottom=-limit)
    cut = 0
    for x, h in heights:
        if abs(h) > limit and h * sign > 0:
            ax.annotate(
                f"{abs(h):,.0f}",
                (x, sign * limit),
                ha="center",
                va="top" if sign > 0 else "bottom",
                fontsize=7,
                color="#ffffff",
                fontweight="bold",
            )
            cut += 1
    return cut


def _integer_span(ax: Axes, values: Sequence[float]) -> None:
    """A y axis of whole numbers, at least a few units tall, so a flat size reads as flat, not as noise."""
    if values:
        lo, hi = min(values), max(values)
        if hi - lo < 4:
            pad = (4 - (hi - lo)) / 2
            ax.set_ylim(max(lo - pad, 0) if lo >= 0 else lo - pad, hi + pad)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def runs_chart(runs: Sequence[RunBar], *, chart_id: str) -> Chart:
    """Stacked bars per run, oldest left: its changes that were sent, skipped, failed, held, left pending."""
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig, (ax,) = _figure(3.2)
        xs = list(range(len(runs)))
        bottom = [0] * len(runs)
        marks = 0
        for series, colour in RUN_SERIES:
            values = [getattr(r, series) for r in runs]
            marks += _bars(ax, xs, values, bottom, width=0.8, colour=colour, gid=series, label=series)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylim(0, max(max(bottom, default=0) * 1.05, 1))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _cut_tall_bars(ax, list(zip(xs, bottom, strict=True)))
        ax.set_ylabel("changes")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(RUN_SERIES))
        _run_axis(ax, [(r.run_id, r.started_at) for r in runs])
        return Chart(chart_id, _svg(fig, chart_id), marks)


def _churn_series(computation_class: str) -> tuple[tuple[str, int, str], ...]:
    """The bars of a key's lower panel: (count, direction, colour)."""
    if computation_class == "audience":
        return (("entered", 1, ENTERED), ("exited", -1, EXITED))
    return (("entered", 1, ENTERED), ("changed", 1, CHANGED), ("exited", -1, EXITED))


def key_chart(series: KeySeries, *, chart_id: str) -> Chart:
    """Two panels sharing the runs: the size per destination after each run (a line), and per run the users who
    entered (up) and exited (down), per destination; for a trait also the users whose value changed (up, on
    top of those who entered)."""
    run_ids = sorted({p.run_id for p in series.points})
    position = {rid: i for i, rid in enumerate(run_ids)}
    started = {p.run_id: p.started_at or p.recorded_at for p in series.points}
    dests = sorted({p.destination for p in series.points})
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig, (top, bottom) = _figure(3.6, rows=2, ratios=(3, 2))
        marks = 0
        width = 0.8 / max(len(dests), 1)
        sizes: list[float] = []
        churn: list[tuple[float, float]] = []
        held_shown = False
        for d, dest in enumerate(dests):
            points: list[SizePoint] = sorted(
                (p for p in series.points if p.destination == dest), key=lambda p: p.run_id
            )
            xs = [position[p.run_id] for p in points]
            colour = LINE_COLOURS[d % len(LINE_COLOURS)]
            (line,) = top.plot(xs, [p.size for p in points], marker="o", markersize=3, color=colour, label=dest)
            line.set_gid(f"size-{d}")
            marks += len(points)
            sizes += [p.size for p in points]
            offset = (d - (len(dests) - 1) / 2) * width
            shade = 1.0 - 0.5 * d / max(len(dests), 1)
            at = [x + offset for x in xs]
            stacked = [0] * len(points)  # a trait's changed values go on top of its entered ones
            for name, sign, colour_ in _churn_series(series.computation_class):
                values = [sign * getattr(p, name) for p in points]
                base = stacked if sign > 0 else [0] * len(points)
                label = name if len(dests) == 1 else f"{name} ({dest})"
                # a run whose changes of the key the guard held sent none of them: drawn apart, in the held colour
                sent = [0 if p.held else v for p, v in zip(points, values, strict=True)]
                held = [v if p.held else 0 for p, v in zip(points, values, strict=True)]
                marks += _bars(
                    bottom, at, sent, base, width=width, colour=colour_, gid=f"{name}-{d}", label=label, alpha=shade
                )
                if any(held):
                    held_label = "_held" if held_shown else "held by the guard (not sent)"
                    held_shown = True
                    marks += _bars(
                        bottom, at, held, base, width=width, colour=HELD, gid=f"{name}-held-{d}", label=held_label
                    )
                if sign > 0:
                    stacked = [b + v for b, v in zip(stacked, values, strict=True)]
                else:
                    churn += list(zip(at, values, strict=True))
            churn += list(zip(at, stacked, strict=True))
        top.set_ylabel("size")
        _integer_span(top, sizes)
        top.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=min(len(dests), 6))
        bottom.axhline(0, color="#616161", linewidth=0.6)
        bottom.set_ylabel("entered / exited" if series.computation_class == "audience" else "changes")
        # each side scaled to its own bars (autoscaling would pad the exits by a share of the entries' height)
        up = max((h for _, h in churn), default=0)
        down = min((h for _, h in churn), default=0)
        bottom.set_ylim(down * 1.1 if down else -1, up * 1.1 if up else 1)
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
        _cut_tall_bars(bottom, churn, sign=1)
        _cut_tall_bars(bottom, churn, sign=-1)
        low, high = bottom.get_ylim()
        if not down:  # nothing below the line: a sliver, in proportion to the (perhaps cut) bars above it
            bottom.set_ylim(-0.05 * high, high)
        elif not up:
            bottom.set_ylim(low, -0.05 * low)
        bottom.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{abs(int(y))}"))
        bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _run_axis(bottom, [(rid, started[rid]) for rid in run_ids])
        return Chart(chart_id, _svg(fig, chart_id), marks)
