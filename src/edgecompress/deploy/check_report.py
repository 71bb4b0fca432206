"""What a target check tells people: its markdown report and, when it fails the run, the error.

Both read a typed ``CheckResult`` (deploy/check.py) and its ``BudgetRow``s (deploy/budgets.py); the
numbers are the judge's, only their wording is here.
"""

from __future__ import annotations

from pathlib import Path

from edgecompress.deploy.budgets import CEILING, FLOOR, BudgetRow, margin_text, shown_apart
from edgecompress.deploy.check import CheckResult
from edgecompress.errors import EdgeCompressError


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


def missed_text(rows: tuple[BudgetRow, ...] | list[BudgetRow]) -> str:
    """Every missed row as the check words it: ``p90 latency 0.800 ms > 0.500 ms (+0.3 ms)``."""
    parts = []
    for r in rows:
        if not r.missed:
            continue
        if r.measured is None:
            parts.append(f"{r.budget.label} was not measured (budget {_fmt(r.limit, r.budget.unit)})")
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


def render_markdown(result: CheckResult) -> str:
    """A readable per-target report: the artifact, each budget vs measurement, where it ran."""
    art, fp, rt = result.artifact, result.fingerprint or {}, result.runtime or {}
    lat = result.latency_ms or {}
    lines = [f"# Target `{result.target}`: **{result.status.upper()}**", ""]
    if result.build_infeasible:
        lines += [f"**Its build found no candidate that meets every budget: this artifact is only the nearest one, "
                  f"shipped by a proxy build** (reports/build/{result.target}.md says what each misses).", ""]
    if result.description:
        lines += [result.description, ""]
    size = art.size_bytes
    built = f"; candidate `{art.candidate}`, chosen by build@{result.target}" if art.candidate else ""
    lines += [f"- artifact: `{art.path}` ({art.precision} {art.format}, "
              f"{'n/a' if size is None else f'{size / 1024:.1f} KiB'}{built})",
              f"- accuracy: {_fmt(result.accuracy, '')} on {result.accuracy_samples} test images",
              f"- latency (batch {(result.bench or {}).get('batch')}, n={lat.get('n')}): "
              + ", ".join(f"{k} {_fmt(lat.get(k), 'ms')}" for k in ("p50", "p90", "p99", "mean", "max")),
              f"- peak memory: {_fmt((result.memory or {}).get('peak_rss_mb'), 'MB')}", "",
              "| budget | limit | measured | margin | result |", "|---|---|---|---|---|"]
    for r in result.budgets:
        shown, limit = _pair(r)
        lines.append(f"| {r.budget.label} | {'≥' if r.budget.kind == FLOOR else '≤'} {limit} | {shown} | "
                     f"{margin_text(r)} | {'**MISSED**' if r.missed else 'ok'} |")
    providers = rt.get("active_providers")
    lines += ["", "## Where it ran", "",
              f"- device: {result.device}",
              f"- hardware match: {'yes' if result.hardware_match else 'no (proxy measurement)'}"]
    lines += [f"  - {reason}" for reason in result.hardware_reasons]
    lines += [f"- machine: {fp.get('hostname')}, {fp.get('arch')}, {fp.get('cpu_model')}"
              + (f" ({fp['board']})" if fp.get("board") else "") + f", {fp.get('cores')} cores",
              f"- os: {fp.get('os')}; python {fp.get('python')}, numpy {fp.get('numpy')}",
              f"- runtime: {rt.get('name')} {rt.get('version')}, threads {rt.get('threads') or 'default'}"
              + (f", providers {', '.join(providers)}" if providers else "")
              + (f", delegate {rt['delegate']}" if rt.get("delegate") else "")]
    if result.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result.warnings]
    return "\n".join(lines) + "\n"
