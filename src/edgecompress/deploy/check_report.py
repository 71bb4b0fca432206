"""What a target check tells people: its markdown report and, when it fails the run, the error.

Both read a typed ``CheckResult`` (deploy/check.py) and its ``BudgetRow``s (deploy/budgets.py); the
numbers are the judge's, only their wording is here. Every latency and accuracy is shown with its 95%
interval and its count (runs, images) where the result has them; the wording helpers below are shared
with the build report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from edgecompress.deploy.budgets import CEILING, FLOOR, BudgetRow, margin_text, shown_apart
from edgecompress.deploy.check import CheckResult
from edgecompress.deploy.stats import MISSED, UNDECIDED, Interval, wilson
from edgecompress.errors import EdgeCompressError

LATENCY_SHOWN = ("p50", "p90", "p99", "mean", "max")  # the check's latency line, in this order
BAR_WIDTH = 40  # characters of the longest bar in the sustained section
VERDICT_CELL = {MISSED: "**MISSED**", UNDECIDED: "**UNDECIDED (counted as missed)**"}


# --- wording shared with the build report ----------------------------------------------------------------

def threads_text(rt: Mapping[str, Any]) -> str:
    """The runtime's threads as measured, with the profile's when the runner capped them at the machine's cores."""
    used, asked = rt.get("threads"), rt.get("threads_requested")
    text = str(used or "default")
    return text + (f" (runtime.threads {asked}, capped at this machine's cores)" if asked and asked != used else "")


def interval_of(d: Mapping[str, Any] | None, what: str) -> Interval | None:
    """An interval as records keep it ({point, lo, hi, n}); None when the record has none (an older one)."""
    return None if not d else Interval.from_json(d, what)


def latency_decimals(hi: float) -> int:
    """Decimals of a latency interval reaching up to ``hi`` ms: three, four below 0.1 ms (a TFLite student
    runs in 0.014 ms: three would hide its interval)."""
    return 3 if hi >= 0.1 else 4


def latency_text(ci: Interval, count: bool = True) -> str:
    """``0.412 [0.398, 0.431] ms (95%, 500 runs)``; ``count`` False leaves the parenthesis out."""
    return ci.text(latency_decimals(ci.hi), unit="ms") + (f" (95%, {ci.n} runs)" if count else "")


def accuracy_text(ci: Interval) -> str:
    """``94.47% [93.89, 95.01]``: the accuracy in percent and its 95% interval in percent."""
    return f"{100 * ci.point:.2f}% [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}]"


def accuracy_ci(ci: Mapping[str, Any] | None, accuracy: float | None, n: int | None,
                what: str) -> Interval | None:
    """The record's accuracy interval; an older record without one gets the Wilson interval of its
    accuracy and image count (the same formula), and None without a count."""
    if ci:
        return Interval.from_json(ci, what)
    return None if accuracy is None or not n else wilson(accuracy, n)


def _side(c: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(c) if isinstance(c, Mapping) else {}


def _arrow(a: str | None, b: str | None) -> str:
    """``a -> b``, just ``a`` when both ends agree, ``n/a`` for an end the OS did not expose."""
    a, b = a or "n/a", b or "n/a"
    return a if a == b else f"{a} -> {b}"


def _load(c: dict[str, Any]) -> str | None:
    la = c.get("loadavg")
    return f"{la[0]:.2f}" if la else None


def _mhz(c: dict[str, Any]) -> str | None:
    f = c.get("cpu_mhz") or {}
    if f.get("mean") is None:
        return None
    lo, hi = f.get("min"), f.get("max")
    spread = "" if lo is None or hi is None or lo == hi else f" ({lo:.0f}-{hi:.0f})"
    return f"{f['mean']:.0f} MHz{spread}"


def _hottest(start: dict[str, Any], end: dict[str, Any]) -> str | None:
    """The zone hottest at the end (else at the start), with its temperature at both ends."""
    zones = {z: t for z, t in (end.get("thermal_c") or start.get("thermal_c") or {}).items() if t is not None}
    if not zones:
        return None
    zone = max(zones, key=lambda z: zones[z])
    t0, t1 = ((s.get("thermal_c") or {}).get(zone) for s in (start, end))
    return f"{zone} " + _arrow(None if t0 is None else f"{t0:.1f}", None if t1 is None else f"{t1:.1f}") + " °C"


def conditions_text(conditions: Mapping[str, Any] | None) -> str | None:
    """The runner's conditions as one line: load average (1 min), CPU MHz, governor and the hottest thermal
    zone, each start -> end; None when the record has none (an older record, or a runner that sent none)."""
    if not conditions:
        return None
    start, end = _side(conditions.get("start")), _side(conditions.get("end"))
    parts = [f"load average (1 min) {_arrow(_load(start), _load(end))}",
             f"CPU {_arrow(_mhz(start), _mhz(end))}",
             f"governor {_arrow(start.get('governor'), end.get('governor'))}",
             f"hottest thermal zone {_hottest(start, end) or 'n/a'}"]
    if all(p.endswith("n/a") for p in parts):
        return "not exposed by this OS (no /proc loadavg, cpufreq or thermal zones)"
    return ", ".join(parts)


def rounds_text(rounds: str | None) -> str | None:
    """The rounds note: None without rounds, "rounds agree" or, bold, that the load changed."""
    if rounds is None:
        return None
    return "the interleaved rounds agree (no load change seen)" if rounds == "" else f"**{rounds}**"


# --- the check's own report --------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "":
        return f"{value:.4f}"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:.3f} {unit}"


def _pair(r: BudgetRow) -> tuple[str, str]:
    """(measured, limit) of a budget row as text, with enough digits that a miss never reads as equal."""
    unit = r.budget.unit
    if r.measured is None:
        return "n/a", _fmt(r.limit, unit)
    shown, limit = shown_apart(r.measured, r.limit, 4 if unit == "" else 3)
    return (f"{shown} {unit}".rstrip(), f"{limit} {unit}".rstrip())


def _row_interval(r: BudgetRow) -> str:
    """A row's 95% interval in the row's own unit (as its limit and measured value), with its count."""
    ci = r.interval
    if ci is None:
        return "n/a"
    unit = r.budget.unit
    d = latency_decimals(ci.hi) if unit == "ms" else 4
    count = f"{ci.n} {'runs' if r.budget.device else 'images'}"
    return f"[{ci.lo:.{d}f}, {ci.hi:.{d}f}]{f' {unit}' if unit else ''} (95%, {count})"


def missed_text(rows: tuple[BudgetRow, ...] | list[BudgetRow]) -> str:
    """Every missed row as the check words it: ``p90 latency 0.800 ms > 0.500 ms (+0.3 ms)``; an undecided
    one gives both ends: ``p90 latency undecided: [0.480, 0.530] ms straddles 0.500 ms (95%, 500 runs;
    counted as missed)``."""
    parts = []
    for r in rows:
        if not r.missed:
            continue
        if r.measured is None:
            parts.append(f"{r.budget.label} was not measured (budget {_fmt(r.limit, r.budget.unit)})")
        elif r.verdict == UNDECIDED and r.interval is not None:
            ci, unit = r.interval, r.budget.unit
            d = latency_decimals(ci.hi) if unit == "ms" else 4
            _, limit = _pair(r)
            parts.append(f"{r.budget.label} undecided: [{ci.lo:.{d}f}, {ci.hi:.{d}f}]{f' {unit}' if unit else ''} "
                         f"straddles {limit} (95%, {ci.n} {'runs' if r.budget.device else 'images'}; "
                         f"counted as missed)")
        else:
            shown, limit = _pair(r)
            parts.append(f"{r.budget.label} {shown} {'>' if r.budget.kind == CEILING else '<'} {limit} "
                         f"({margin_text(r)})")
    return ", ".join(parts)


def failure(result: CheckResult, report_path: str | Path) -> EdgeCompressError | None:
    """The error a failed check raises, naming each missed budget and ``report_path`` (None: it passed)."""
    if not result.failed:
        return None
    where = " on proxy hardware (check.strict is true)" if result.status == "proxy-fail" else ""
    missed = missed_text(result.budgets)
    if result.build_infeasible:
        missed = "its build found no candidate that meets every budget (this is only the nearest)" + \
            (f"; {missed}" if missed else "")
    return EdgeCompressError(f"target {result.target} missed budget(s){where}: {missed}; see {report_path}")


def _latency_lines(result: CheckResult) -> list[str]:
    """The latency line (each statistic with its interval where the samples gave one), then the conditions
    and the rounds note beside it."""
    lat, cis = result.latency_ms or {}, result.latency_ci or {}
    shown = [*LATENCY_SHOWN, *(k for k in cis if k not in LATENCY_SHOWN)]
    cells = []
    for k in shown:
        ci = interval_of(cis.get(k), f"latency_ci.{k}")
        if ci is not None:
            cells.append(f"{k} {latency_text(ci, count=False)}")
        elif k in lat:
            cells.append(f"{k} {_fmt(lat.get(k), 'ms')}")
    what = "95% intervals" if cis else "no intervals: the runner sent no samples"
    lines = [f"- latency (batch {(result.bench or {}).get('batch')}, n={lat.get('n')}, {what}): " + ", ".join(cells)]
    cond, rounds = conditions_text(result.conditions), rounds_text(result.rounds)
    if cond:
        lines.append(f"  - conditions (start -> end): {cond}")
    if rounds:
        lines.append(f"  - rounds: {rounds}")
    return lines


def _bar(value: float | None, top: float) -> str:
    """A text bar, ``BAR_WIDTH`` long at ``top``, scaled from zero so lengths compare honestly."""
    if value is None or top <= 0:
        return ""
    return "█" * max(1, round(BAR_WIDTH * value / top))


def _num(v: float | None, decimals: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{decimals}f}"


def sustained_lines(sustained: Mapping[str, Any], latency_ci: Mapping[str, Any] | None) -> list[str]:
    """The ``## Sustained`` section: every interval's p50/p90 with a text bar (the trend in plain markdown),
    the drift (last interval / first), and the sustained p90 judged on the last intervals."""
    intervals = list(sustained.get("intervals") or [])
    tail = sustained.get("tail_intervals")
    drift = [f"{k} x{sustained[f'drift_{k}']:.3f}" for k in ("p50", "p90") if sustained.get(f"drift_{k}") is not None]
    lines = ["", "## Sustained", "",
             f"{_num(sustained.get('seconds'), 0)} s of continuous runs in {len(intervals)} intervals; drift (last "
             f"interval / first): {', '.join(drift) or 'n/a'}."]
    ci = interval_of((latency_ci or {}).get("sustained_p90"), "latency_ci.sustained_p90")
    if tail:
        judged = f": {latency_text(ci)}" if ci is not None else ""
        lines.append(f"The sustained p90 is judged on the last {tail} interval(s) (marked *){judged}.")
    if not intervals:
        return lines
    top = max((iv.get("p90") or 0.0) for iv in intervals)
    first_tail = len(intervals) - (tail or 0)
    lines += ["", "| interval | t0-t1 s | n | p50 ms | p90 ms | p90, bar from 0 |", "|---|---|---|---|---|---|"]
    for i, iv in enumerate(intervals):
        mark = " *" if tail and i >= first_tail else ""
        lines.append(f"| {i + 1}{mark} | {_num(iv.get('t0'), 1)}-{_num(iv.get('t1'), 1)} | {iv.get('n')} | "
                     f"{_num(iv.get('p50'))} | {_num(iv.get('p90'))} | {_bar(iv.get('p90'), top)} |")
    return lines


def _where_outputs(result: CheckResult) -> str:
    a = result.agreement
    return f" (the outputs of {a['device']}: its own kernels)" if a else ""


def _agreement_lines(result: CheckResult) -> list[str]:
    """The agreement device's outputs against this host's on the same test images."""
    a = result.agreement
    if not a:
        return []
    same = round(a["top1"] * a["images"])
    host = "n/a" if a.get("host_accuracy") is None else f"{100 * a['host_accuracy']:.2f}%"
    return [f"- outputs on {a['device']} vs this host: top-1 agreement {100 * a['top1']:.2f}% ({same}/{a['images']} "
            f"images), largest probability difference {a['max_prob_diff']:.4f}; accuracy on this host {host}"]


def _timings_line(result: CheckResult) -> list[str]:
    """Whether the latency and peak memory shown were judged, and as what."""
    if not result.timings_judged:
        if result.status.startswith("emulated"):
            return ["- latency and peak memory: **proxy** (emulated): recorded, not judged against any budget"]
        return ["- latency and peak memory: **proxy** (the profile's GPU was not active: CPU kernels): recorded, "
                "not judged against any budget"]
    if result.agreement and not result.hardware_match:
        return ["- latency and peak memory: this host's, a **proxy** for the device's (judged as one: a miss fails "
                "the run only with check.strict)"]
    return []


def render_markdown(result: CheckResult) -> str:
    """A readable per-target report: the artifact, each budget vs measurement with its interval and verdict,
    the conditions it ran under, the sustained run, and where it ran."""
    art, fp, rt = result.artifact, result.fingerprint or {}, result.runtime or {}
    lines = [f"# Target `{result.target}`: **{result.status.upper()}**", ""]
    if result.build_infeasible:
        lines += [f"**Its build found no candidate that meets every budget: this artifact is only the nearest one, "
                  f"shipped by a proxy build** (reports/build/{result.target}.md says what each misses).", ""]
    if result.description:
        lines += [result.description, ""]
    size = art.size_bytes
    built = f"; candidate `{art.candidate}`, chosen by build@{result.target}" if art.candidate else ""
    acc = accuracy_ci(result.accuracy_ci, result.accuracy, result.accuracy_samples, "accuracy_ci")
    acc_text = (accuracy_text(acc) + " (95% Wilson)") if acc is not None else _fmt(result.accuracy, "")
    lines += [f"- artifact: `{art.path}` ({art.precision} {art.format}, "
              f"{'n/a' if size is None else f'{size / 1024:.1f} KiB'}{built})",
              f"- accuracy: {acc_text} on {result.accuracy_samples} test images" + _where_outputs(result),
              *_agreement_lines(result),
              *_latency_lines(result),
              f"- peak memory: {_fmt((result.memory or {}).get('peak_rss_mb'), 'MB')}",
              *_timings_line(result), "",
              "| budget | limit | measured | 95% interval | margin | result |", "|---|---|---|---|---|---|"]
    for r in result.budgets:
        shown, limit = _pair(r)
        lines.append(f"| {r.budget.label} | {'≥' if r.budget.kind == FLOOR else '≤'} {limit} | {shown} | "
                     f"{_row_interval(r)} | {margin_text(r)} | {VERDICT_CELL.get(r.verdict, r.verdict)} |")
    if any(r.verdict == UNDECIDED for r in result.budgets):
        lines += ["", "Undecided: the 95% interval straddles the budget even after the extra rounds "
                      "`bench.max_seconds` allows; the check counts it as missed (the conservative rule)."]
    if result.sustained:
        lines += sustained_lines(result.sustained, result.latency_ci)
    providers = rt.get("active_providers")
    lines += ["", "## Where it ran", "",
              f"- device: {result.device}",
              f"- hardware match: {'yes' if result.hardware_match else 'no (proxy measurement)'}"]
    lines += [f"  - {reason}" for reason in result.hardware_reasons]
    lines += [f"- machine: {fp.get('hostname')}, {fp.get('arch')}, {fp.get('cpu_model')}"
              + (f" ({fp['board']})" if fp.get("board") else "") + f", {fp.get('cores')} cores"
              + (f"; emulated by {fp.get('emulator')} -cpu {fp.get('qemu_cpu')}" if fp.get("emulated") else ""),
              f"- os: {fp.get('os')}; python {fp.get('python')}, numpy {fp.get('numpy')}",
              f"- runtime: {rt.get('name')} {rt.get('version')}, threads {threads_text(rt)}"
              + (f", providers {', '.join(providers)}" if providers else "")
              + (f", delegate {rt['delegate']}" if rt.get("delegate") else "")]
    if result.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result.warnings]
    return "\n".join(lines) + "\n"
