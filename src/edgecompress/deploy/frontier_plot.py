"""The build report's frontier as a picture: one self-contained SVG per target, two panels side by side.

(a) validation accuracy against the size the profile budgets (the package when it has a download budget, else
the file; KiB, log axis), (b) validation accuracy against p50 latency (ms, log axis: measured points filled, the
latency model's predictions hollow, candidates with neither left out). Every candidate the build spec allows is
a dot, coloured by its fate (rejected, skipped, feasible, chosen: larger and named); the Pareto-optimal ones are
joined by a line; the size and p50 budgets are dashed verticals, the goal (``GOAL_PT`` below the reference) and
the accuracy floor dashed horizontals. The same rows, Pareto sets and goal as the Frontier table
(``frontier.py``), read from the build record alone. Hand-written SVG: no plotting dependency in the build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

from edgecompress.deploy.frontier import (GOAL_PT, allowed_rows, goal_accuracy, p50_of, pareto, size_axis,
                                          size_of)
from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord, CandidateRow

W, H = 1000, 480
PANEL_W = W // 2
ML, MR, MT, MB = 62, 22, 62, 92  # panel margins: y tick labels, right, title and subtitle, x ticks + label + legend
# Fates as the record words them (build.py), in drawing order: the chosen one last, on top of the rest.
KINDS = ("rejected", "skipped", "feasible", "chosen")
COLOURS = {"rejected": "#9a9a9a", "skipped": "#d0d0d0", "feasible": "#1f77b4", "chosen": "#d62728"}
BUDGET, GOAL, FLOOR = "#9467bd", "#2ca02c", "#ff7f0e"  # the dashed lines' colours
HALO = 'paint-order="stroke" stroke="white" stroke-width="3"'  # labels stay readable over lines and dots


@dataclass(frozen=True)
class Point:
    """One candidate on one panel: x on that panel's axis, and whether x is the latency model's prediction."""

    name: str
    x: float
    accuracy: float
    kind: str  # one of KINDS
    predicted: bool = False


@dataclass(frozen=True)
class Line:
    """A dashed line: where, its label, colour and SVG class (budget-line, goal-line, floor-line)."""

    at: float
    label: str
    colour: str
    cls: str


def kind_of(fate: str) -> str:
    """The marker a fate gets: ``feasible, less accurate`` is feasible; anything unknown is drawn as rejected."""
    return "chosen" if fate == "chosen" else "feasible" if fate.startswith("feasible") else \
        "skipped" if fate == "skipped" else "rejected"


def _drawable(v: float | None) -> bool:
    """A log axis draws positive finite values only: zero, None and NaN are left out (and counted)."""
    return v is not None and math.isfinite(v) and v > 0


def log_range(values: Iterable[float]) -> tuple[float, float]:
    """A log axis around ``values`` with a margin; at least a factor 4 wide, so one point still gets ticks."""
    vs = [v for v in values if _drawable(v)]
    if not vs:
        return 1.0, 10.0
    lo, hi = min(vs) / 1.3, max(vs) * 1.3
    if hi / lo < 4:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 2, mid * 2
    return lo, hi


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades if there are three, else 1-2-5, else every integer mantissa."""
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 3:
            break
    return ticks


def accuracy_range(values: Iterable[float]) -> tuple[float, float, float]:
    """(lo, hi, step) of the accuracy axis: a round step giving at most six intervals, inside [0, 1]."""
    vs = [v for v in values if v is not None and math.isfinite(v)] or [0.0, 1.0]
    lo, hi = min(vs), max(vs)
    step = next((s for s in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2) if (hi - lo) / s <= 5), 0.25)
    lo = max(0.0, math.floor((lo - step / 4) / step) * step)
    hi = min(1.0, math.ceil((hi + step / 4) / step) * step)
    return (lo, lo + step, step) if hi <= lo else (lo, hi, step)


def _panel(x0: int, title: str, xlabel: str, points: Sequence[Point], front: set[str], vlines: Sequence[Line],
           hlines: Sequence[Line], y: tuple[float, float, float]) -> list[str]:
    """One panel: frame, ticks, dashed lines, the Pareto line, one circle per point, the chosen one named."""
    left, right, top, bottom = x0 + ML, x0 + PANEL_W - MR, MT, H - MB
    lo, hi = log_range([p.x for p in points] + [v.at for v in vlines])
    ylo, yhi, ystep = y
    sx = lambda v: left + (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) * (right - left)  # noqa: E731
    sy = lambda a: bottom - (a - ylo) / (yhi - ylo) * (bottom - top)  # noqa: E731
    out = ['<g class="panel">', f'<text x="{left}" y="{top - 12}" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for i in range(round((yhi - ylo) / ystep) + 1):
        a = ylo + i * ystep
        out.append(f'<line x1="{left}" x2="{right}" y1="{sy(a):.1f}" y2="{sy(a):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(a) + 4:.1f}" text-anchor="end">'
                   f'{100 * a:.{1 if ystep < 0.01 else 0}f}%</text>')
    for t in log_ticks(lo, hi):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{bottom}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="{x0 + 14}" y="{(top + bottom) / 2}" transform="rotate(-90 {x0 + 14} {(top + bottom) / 2})" '
               f'text-anchor="middle">validation accuracy</text>')
    for ln in hlines:
        if ylo <= ln.at <= yhi:
            out.append(f'<line class="{ln.cls}" x1="{left}" x2="{right}" y1="{sy(ln.at):.1f}" y2="{sy(ln.at):.1f}" '
                       f'stroke="{ln.colour}" stroke-dasharray="6 4"/><text x="{left + 4}" y="{sy(ln.at) - 4:.1f}" '
                       f'fill="{ln.colour}" {HALO}>{escape(ln.label)}</text>')
    for ln in vlines:
        x = sx(ln.at)
        anchor, dx = ("start", 4) if x < (left + right) / 2 else ("end", -4)
        out.append(f'<line class="{ln.cls}" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="{ln.colour}" '
                   f'stroke-dasharray="6 4"/><text x="{x + dx:.1f}" y="{top + 14}" text-anchor="{anchor}" '
                   f'fill="{ln.colour}" {HALO}>{escape(ln.label)}</text>')
    best = sorted((p for p in points if p.name in front), key=lambda p: (p.x, p.accuracy))
    if len(best) > 1:
        out.append(f'<polyline class="pareto" points="{" ".join(f"{sx(p.x):.1f},{sy(p.accuracy):.1f}" for p in best)}" '
                   f'fill="none" stroke="#444" stroke-width="1.3"/>')
    for p in sorted(points, key=lambda p: KINDS.index(p.kind)):
        col, r = COLOURS[p.kind], 7 if p.kind == "chosen" else 4
        fill, stroke = ("white", col) if p.predicted else (col, "#222" if p.kind == "chosen" else col)
        out.append(f'<circle class="candidate" data-name={quoteattr(p.name)} data-fate="{p.kind}" '
                   f'data-predicted="{str(p.predicted).lower()}" cx="{sx(p.x):.1f}" cy="{sy(p.accuracy):.1f}" r="{r}" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="{2 if p.kind == "chosen" else 1.5}">'
                   f'<title>{escape(p.name)}: {100 * p.accuracy:.2f}%, {p.x:.4g}{" (predicted)" if p.predicted else ""}'
                   f' ({p.kind})</title></circle>')
        if p.kind == "chosen":
            x = sx(p.x)
            anchor, dx = ("start", 10) if x < (left + right) / 2 else ("end", -10)
            # Above the marker, unless a horizontal line's label (drawn 4 px above its line) is there: then below.
            above = sy(p.accuracy) - 9
            clash = any(ylo <= ln.at <= yhi and abs(above - (sy(ln.at) - 4)) < 14 for ln in hlines)
            ty = sy(p.accuracy) + 20 if clash else above
            out.append(f'<text class="chosen-label" x="{x + dx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
                       f'font-weight="bold" fill="{col}" {HALO}>{escape(p.name)} (chosen)</text>')
    return out + ["</g>"]


def _legend() -> list[str]:
    """Marker kinds, hollow = predicted, the Pareto line and the dashed lines, in one row under the panels."""
    y, x, out = H - 16, 20, ['<g class="legend">']
    dot = '<circle cx="{x}" cy="%d" r="%s" fill="%s" stroke="%s" stroke-width="1.5"/>'
    dash = '<line x1="{x0}" x2="{x1}" y1="%d" y2="%d" stroke="%s"%s/>'
    items = [(dot % (y - 4, 7 if k == "chosen" else 4, COLOURS[k], "#222" if k == "chosen" else COLOURS[k]), k)
             for k in reversed(KINDS)]
    items += [(dot % (y - 4, 4, "white", COLOURS["rejected"]), "hollow: predicted p50"),
              (dash % (y - 4, y - 4, "#444", ""), "Pareto"),
              (dash % (y - 4, y - 4, BUDGET, ' stroke-dasharray="6 4"'), "budget"),
              (dash % (y - 4, y - 4, GOAL, ' stroke-dasharray="6 4"'), f"goal: reference - {GOAL_PT:g} pt"),
              (dash % (y - 4, y - 4, FLOOR, ' stroke-dasharray="6 4"'), "accuracy floor")]
    for shape, label in items:
        out.append(shape.format(x=x + 8, x0=x, x1=x + 16) + f'<text x="{x + 22}" y="{y}">{escape(label)}</text>')
        x += 30 + 6.8 * len(label)  # a rough width of 12 px sans-serif text
    return out + ["</g>"]


def _size_points(rows: Sequence[CandidateRow], by_package: bool) -> list[Point]:
    pts = [Point(c.name, size_of(c, by_package) / 1024, c.accuracy, kind_of(c.fate)) for c in rows]
    return [p for p in pts if _drawable(p.x)]


def _latency_points(rows: Sequence[CandidateRow]) -> list[Point]:
    pts = []
    for c in rows:
        lat, predicted = p50_of(c)
        if _drawable(lat):
            pts.append(Point(c.name, lat, c.accuracy, kind_of(c.fate), predicted))
    return pts


def frontier_svg(record: BuildRecord, budgets: Budgets | None) -> str:
    """The whole SVG document (a string ending in a newline); a record with no allowed candidate gets a
    one-line picture saying so."""
    rows = allowed_rows(record)
    by_package, axis, limit = size_axis(budgets)
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="sans-serif" font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>']
    chosen = "nothing shipped" if record.failed else f"chosen {record.chosen.name}"
    head.append(f'<text class="title" x="{ML}" y="24" font-size="15" font-weight="bold">{escape(record.target)}: '
                f'the frontier of the {len(rows)} candidates the build spec allows, '
                f'{escape(chosen)}</text>')
    if not rows:
        return "\n".join(head + [f'<text x="{ML}" y="{MT + 20}">no candidate the build spec allows</text>',
                                 "</svg>"]) + "\n"
    sizes, lats = _size_points(rows, by_package), _latency_points(rows)
    goal = goal_accuracy(record)
    hlines = [Line(goal, f"goal {100 * goal:.2f}%: {record.reference.model} {100 * record.reference.val_accuracy:.2f}% "
                         f"- {GOAL_PT:g} pt", GOAL, "goal-line")]
    if budgets is not None and budgets.min_accuracy is not None:
        hlines.append(Line(budgets.min_accuracy, f"accuracy floor {100 * budgets.min_accuracy:.2f}%", FLOOR,
                           "floor-line"))
    y = accuracy_range([p.accuracy for p in (*sizes, *lats)] + [ln.at for ln in hlines])
    size_lines = [] if limit is None else [Line(limit * 1024, f"{'download' if by_package else 'size'} budget "
                                                              f"{limit * 1024:.1f} KiB", BUDGET, "budget-line")]
    p50 = None if budgets is None else budgets.latency_ms.get("p50")
    lat_lines = [] if p50 is None else [Line(p50, f"p50 budget {p50:g} ms", BUDGET, "budget-line")]
    others = [f"{k} {v:g} ms" for k, v in (budgets.latency_ms.items() if budgets else ()) if k != "p50"]
    missing = len(rows) - len(lats)
    a_title = f"(a) vs {axis} size" + (f" ({len(rows) - len(sizes)} without a size left out)"
                                       if len(sizes) < len(rows) else "")
    b_title = "(b) vs p50 latency" + (f" ({missing} without p50 left out)" if missing else "")
    b_label = "p50 latency, ms (log)" + (f"; not drawn: {', '.join(others)}" if others else "")
    body = _panel(0, a_title, f"{axis} size, KiB (log)", sizes,
                  pareto([(p.name, p.x, p.accuracy) for p in sizes]), size_lines, hlines, y)
    body += _panel(PANEL_W, b_title, b_label, lats, pareto([(p.name, p.x, p.accuracy) for p in lats]),
                   lat_lines, hlines, y)
    return "\n".join(head + body + _legend() + ["</svg>"]) + "\n"
