"""The build report's frontier: accuracy against size and against latency for every candidate the profile's
build spec allows, the Pareto-optimal ones, the budget lines, the choice, and what a missed goal would need.

Read from the build record alone (its rows carry sizes, measured latencies, the latency model's predictions
and each candidate's fate), so an old record renders too: without predictions its unmeasured candidates show
"n/a". The size axis is what the profile budgets: the package a device downloads when it has a download
budget, else the model file. ``frontier_plot.py`` draws the same rows, Pareto sets, budgets and goal as an SVG,
which the section embeds when the build wrote one.
"""

from __future__ import annotations

from typing import Sequence

from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord, CandidateRow

SPEC_WORDS = ("model ", "precision ", "engine ", "requires ")  # how choose.allowed words a build-spec exclusion
GOAL_PT = 0.5  # "near the reference": within this many points of its validation accuracy
MIB = 2 ** 20


def size_axis(budgets: Budgets | None) -> tuple[bool, str, float | None]:
    """The size the profile budgets: (by package, "package" or "file", its budget in MiB or None)."""
    by_package = budgets is not None and budgets.download_mb is not None
    limit = None if budgets is None else (budgets.download_mb if by_package else budgets.size_mb)
    return by_package, "package" if by_package else "file", limit


def goal_accuracy(record: BuildRecord) -> float:
    """The goal line: ``GOAL_PT`` below the reference model's validation accuracy (a fraction)."""
    return record.reference.val_accuracy - GOAL_PT / 100


def size_of(c: CandidateRow, by_package: bool) -> int:
    """Bytes on the size axis: the package when the profile budgets downloads (and the record has it)."""
    return c.download_bytes if by_package and c.download_bytes is not None else c.size_bytes


def p50_of(c: CandidateRow) -> tuple[float | None, bool]:
    """p50 ms and whether it is predicted (measured first)."""
    measured = (c.latency_ms or {}).get("p50")
    if measured is not None:
        return measured, False
    return ((c.predicted_ms or {}).get("p50"), c.predicted_ms is not None)


def pareto(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Names of the (name, cost, accuracy) points no other point beats: at most the cost, at least the
    accuracy, and strictly better in one."""
    return {n for n, x, a in points
            if not any(x2 <= x and a2 >= a and (x2 < x or a2 > a) for _, x2, a2 in points)}


def allowed_rows(record: BuildRecord) -> list[CandidateRow]:
    """The candidates the profile's build spec lets compete (its engines, precisions, models, requirements)."""
    return [c for c in record.candidates if not any(w.startswith(SPEC_WORDS) for w in c.why)]


def frontier_lines(record: BuildRecord, budgets: Budgets | None, plot: str | None = None) -> list[str]:
    """``## Frontier``: one row per allowed candidate, smallest first, with the budget lines drawn in; ``plot``:
    the frontier SVG's path relative to the report, embedded under the heading (None: no plot written)."""
    rows = allowed_rows(record)
    if not rows:
        return []
    by_package, axis, limit = size_axis(budgets)
    rows.sort(key=lambda c: (size_of(c, by_package), -c.accuracy, c.name))
    on_size = pareto([(c.name, size_of(c, by_package), c.accuracy) for c in rows])
    timed = [(c.name, lat, c.accuracy) for c in rows if (lat := p50_of(c)[0]) is not None]
    on_latency = pareto(timed)
    lines_named = [] if limit is None else [f"{'download' if by_package else 'size'} {limit * 1024:.1f} KiB "
                                             f"({axis})"]
    lines_named += [f"latency {k} {v:g} ms" for k, v in (budgets.latency_ms.items() if budgets else ())]
    out = ["", "## Frontier", "", *([f"![frontier]({plot})", ""] if plot else []),
           f"Every candidate the build spec allows, smallest {axis} first: validation accuracy against size and "
           f"against p50 latency (measured on the device; `~` marks the latency model's prediction where it was "
           f"not measured). Pareto-optimal (★): no other candidate is at least as accurate and smaller (size) or "
           f"faster (latency). Budget lines: {', '.join(lines_named) or 'none on size or latency'}.", "",
           "| candidate, smallest first | val accuracy | size KiB | package KiB | p50 ms | Pareto: size "
           "| Pareto: latency | fate |",
           "|---|---|---|---|---|---|---|---|"]
    drawn = limit is None
    for c in rows:
        if not drawn and size_of(c, by_package) > limit * MIB:
            out.append(f"| **— {lines_named[0]} budget line —** | | | | | | | |")
            drawn = True
        lat, predicted = p50_of(c)
        cell = "n/a" if lat is None else f"{'~' if predicted else ''}{lat:.4f}"
        name = f"**`{c.name}` (chosen)**" if c.fate == "chosen" else f"`{c.name}`"
        pkg = "n/a" if c.download_bytes is None else f"{c.download_bytes / 1024:.1f}"
        out.append(f"| {name} | {100 * c.accuracy:.2f}% | {c.size_bytes / 1024:.1f} | {pkg} | {cell} | "
                   f"{'★' if c.name in on_size else ''} | {'★' if c.name in on_latency else ''} | {c.fate} |")
    return out + _needed(record, rows, by_package, axis)


def _needed(record: BuildRecord, rows: list[CandidateRow], by_package: bool, axis: str) -> list[str]:
    """One line when what shipped is more than ``GOAL_PT`` below the reference: what getting there would take."""
    ref, ch = record.reference, record.chosen
    goal = goal_accuracy(record)
    if ch.val_accuracy >= goal and not record.failed:
        return []
    near = [c for c in rows if c.accuracy >= goal]
    head = (f"- **Goal missed**: nothing within {GOAL_PT} pt of the {ref.model}'s {100 * ref.val_accuracy:.2f}% "
            f"fits every budget; ")
    shipped = "nothing ships" if record.failed else (f"the most accurate that does is `{ch.name}` at "
                                                     f"{100 * ch.val_accuracy:.2f}%")
    if not near:
        return ["", head + shipped + f"; no candidate the build spec allows reaches {100 * goal:.2f}%: the pool "
                                     f"needs a more accurate model in that size"]
    best = min(near, key=lambda c: (size_of(c, by_package), -c.accuracy))
    lat, predicted = p50_of(best)
    speed = "" if lat is None else f" and p50 {'~' if predicted else ''}{lat:.4f} ms"
    misses = "; ".join(best.why) or best.fate
    return ["", head + shipped + f"; {100 * best.accuracy:.2f}% (`{best.name}`, the smallest within {GOAL_PT} pt) "
                                 f"needs {size_of(best, by_package) / 1024:.1f} KiB ({axis}){speed}: {misses}"]
