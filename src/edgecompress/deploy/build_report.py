"""What a build tells people: a markdown report and the points of its latency-vs-accuracy plot."""

from __future__ import annotations

from typing import Any

from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord

_SPEC = ("model ", "precision ", "engine ", "requires ")  # how choose.allowed words a build-spec exclusion
_STATUS = {"built": "BUILT", "proxy-built": "BUILT (proxy)", "infeasible": "NO FEASIBLE CANDIDATE",
           "proxy-infeasible": "NO FEASIBLE CANDIDATE (proxy)"}


def plot_key(budgets: Budgets) -> str:
    """The latency percentile the plot draws: the first one budgeted, else p50."""
    return next(iter(budgets.latency_ms), "p50")


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def plot_rows(record: BuildRecord, budgets: Budgets) -> list[dict[str, Any]]:
    """One point per candidate measured on the device (x: latency, y: accuracy); every row also carries
    the budget lines' values (dvc plots wants every row to have both axes, so lines cannot be rows)."""
    key = plot_key(budgets)
    lines: dict[str, Any] = {}
    if key in budgets.latency_ms:
        lines["latency_budget_ms"] = budgets.latency_ms[key]
    if budgets.min_accuracy is not None:
        lines["accuracy_floor"] = budgets.min_accuracy
    rows: list[dict[str, Any]] = []
    for c in record.candidates:
        lat = (c.latency_ms or {}).get(key)
        if lat is None:
            continue
        fate = "chosen" if c.fate == "chosen" else "fits" if c.fate.startswith("feasible") else "misses"
        rows.append({"candidate": c.name, "latency_ms": lat, "accuracy": c.accuracy, "fate": fate,
                     "size_kib": round(c.size_bytes / 1024, 1), **lines})
    return rows


def render_markdown(record: BuildRecord) -> str:
    """The build for people: the choice, why nothing more accurate shipped, every candidate's fate."""
    ch, s, ref = record.chosen, record.search, record.reference
    lines = [f"# Build `{record.target}`: **{_STATUS.get(record.status, record.status)}**", ""]
    if record.description:
        lines += [record.description, ""]
    lat = ch.latency_ms or {}
    gap = 100 * (ref.val_accuracy - ch.val_accuracy)
    pkg = ch.download_bytes
    shipped = "" if pkg is None else f"; its package, what a device downloads: {pkg / 1024:.1f} KiB"
    # A failed build wrote its record only: its "chosen" is the nearest candidate, and nothing shipped.
    label = "nearest, not shipped (the build failed)" if record.error else "chosen"
    lines += [f"- {label}: `{ch.name}` ({ch.precision} on {ch.engine}, {ch.size_bytes / 1024:.1f} KiB{shipped})",
              f"- validation accuracy {100 * ch.val_accuracy:.2f}% ({abs(gap):.2f} pt {'below' if gap >= 0 else 'above'} "
              f"the {ref.model}'s {100 * ref.val_accuracy:.2f}%), ECE {_f(ch.val_ece)}, "
              f"NLL {_f(ch.val_nll)}",
              f"- on the device: p50 {_ms(lat.get('p50'))} ms, p90 {_ms(lat.get('p90'))} ms",
              f"- search: {s.candidates} candidates; {s.device_runs} measured on the device, "
              f"{s.cache_hits} from the measurement cache, {s.skipped} skipped (a more accurate one fits); "
              f"{s.seconds:.1f} s",
              f"- scored on: {(record.scored_on or {}).get('images')} validation images (never the test set)"]
    if record.infeasible:
        lines += ["", "## No candidate meets every budget", "", "```", record.infeasible, "```"]
    better = [c for c in record.candidates if c.accuracy > ch.val_accuracy and c.fate != "chosen"]
    # The profile's own choices (engines, precisions, models) are not budgets: counted, not listed.
    by_budget = [c for c in better if not any(w.startswith(_SPEC) for w in c.why)]
    if better:
        lines += ["", "## Why nothing more accurate ships", ""]
        if by_budget:
            lines += ["| candidate | val accuracy | the budget it misses, by how much |", "|---|---|---|"]
            lines += [f"| `{c.name}` | {100 * c.accuracy:.2f}% | {'; '.join(c.why) or c.fate} |"
                      for c in sorted(by_budget, key=lambda c: -c.accuracy)]
        if len(better) > len(by_budget):
            lines += ["", f"{len(better) - len(by_budget)} more accurate candidate(s) are outside the profile's "
                          f"build spec (its engines, precisions, models or requirements)."]
    lines += ["", "## Every candidate", "",
              "| candidate | val accuracy | ECE | size KiB | package KiB | p50 ms | p90 ms | peak MiB | measured | fate | why |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(record.candidates, key=lambda c: -c.accuracy):
        lt = c.latency_ms or {}
        mem = c.peak_memory_mb
        lines.append(f"| `{c.name}` | {100 * c.accuracy:.2f}% | {_f(c.ece)} | "
                     f"{c.size_bytes / 1024:.1f} | {_kib(c.download_bytes)} | {_ms(lt.get('p50'))} | "
                     f"{_ms(lt.get('p90'))} | "
                     f"{'n/a' if mem is None else f'{mem:.0f}'} | {c.measured} | {c.fate} | "
                     f"{'; '.join(c.why)} |")
    fp, rt = record.fingerprint or {}, record.runtime or {}
    lines += ["", "## Where it was measured", "", f"- device: {record.device}",
              f"- hardware match: {'yes' if record.hardware_match else 'no (proxy measurement)'}"]
    lines += [f"  - {r}" for r in record.hardware_reasons or []]
    lines += [f"- machine: {fp.get('hostname')}, {fp.get('arch')}, {fp.get('cpu_model')}, {fp.get('cores')} cores",
              f"- runtime of the chosen artifact: {rt.get('name')} {rt.get('version')}, "
              f"threads {rt.get('threads') or 'default'}"]
    return "\n".join(lines) + "\n"


def _kib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f}"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def summary(record: BuildRecord) -> dict[str, Any]:
    """The few numbers ``dvc metrics`` tracks per target."""
    ch, s = record.chosen, record.search
    lat = ch.latency_ms or {}
    return {"target": record.target, "status": record.status, "chosen": ch.name,
            "val_accuracy": ch.val_accuracy, "val_ece": ch.val_ece, "size_bytes": ch.size_bytes,
            "download_bytes": ch.download_bytes,
            "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "candidates": s.candidates,
            "device_runs": s.device_runs, "cache_hits": s.cache_hits, "skipped": s.skipped,
            "seconds": s.seconds}
