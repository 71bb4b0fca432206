"""What a build tells people: a markdown report and the points of its latency-vs-accuracy plot.

Every latency and accuracy carries its 95% interval and count where the record has them (a record written
before intervals still renders: "n/a", or the line is left out). The wording of intervals and conditions
is shared with the check report (``check_report``).
"""

from __future__ import annotations

from typing import Any

from edgecompress.deploy.check_report import (accuracy_ci, accuracy_text, conditions_text, interval_of,
                                              latency_decimals, latency_text, rounds_text, threads_text)
from edgecompress.deploy.frontier import SPEC_WORDS as _SPEC
from edgecompress.deploy.frontier import frontier_lines
from edgecompress.deploy.stats import Interval
from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord, CandidateRow, SearchRecord

_STATUS = {"built": "BUILT", "proxy-built": "BUILT (proxy)", "infeasible": "NO FEASIBLE CANDIDATE",
           "proxy-infeasible": "NO FEASIBLE CANDIDATE (proxy)"}
UNDECIDED_WORD = " undecided: "  # how BudgetRow.reason words an interval that straddles its budget


def plot_key(budgets: Budgets) -> str:
    """The latency percentile the plot draws: the first one budgeted, else p50."""
    return next(iter(budgets.latency_ms), "p50")


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _images(record: BuildRecord) -> int | None:
    """The validation images every candidate's accuracy rests on (an older record: from scored_on)."""
    n = (record.scored_on or {}).get("images")
    return n if isinstance(n, int) and n > 0 else None


def _scored_line(scored_on: dict[str, Any]) -> str:
    """Which validation images the pool's figures rest on (never the test set)."""
    n, every = scored_on.get("images"), scored_on.get("accuracy_images")
    if not every or every == n:
        return f"- scored on: {n} validation images (never the test set)"
    return (f"- scored on: validation images only (never the test set): accuracy on every one of the {every} a file's "
            f"own export decided nothing on ({every} for most, {n} for the int8 ONNX and cascades, whose "
            f"decisions took the first {every - n}); NLL and ECE on those {n}")


def _cand_acc(record: BuildRecord, c: CandidateRow) -> Interval | None:
    return accuracy_ci(c.accuracy_ci, c.accuracy, _images(record), f"candidates[{c.name}].accuracy_ci")


def _cand_lat(c: CandidateRow, key: str) -> Interval | None:
    return interval_of((c.latency_ci or {}).get(key), f"candidates[{c.name}].latency_ci.{key}")


def plot_rows(record: BuildRecord, budgets: Budgets) -> list[dict[str, Any]]:
    """One point per candidate measured on the device (x: latency, y: accuracy); every row also carries
    the budget lines' values (dvc plots wants every row to have both axes, so lines cannot be rows), and,
    where the record has them, the 95% intervals of both axes (latency_lo/hi, accuracy_lo/hi)."""
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
        row = {"candidate": c.name, "latency_ms": lat, "accuracy": c.accuracy, "fate": fate,
               "size_kib": round(c.size_bytes / 1024, 1), **lines}
        lci, aci = _cand_lat(c, key), _cand_acc(record, c)
        if lci is not None:
            row.update(latency_lo=lci.lo, latency_hi=lci.hi, runs=lci.n)
        if aci is not None:
            row.update(accuracy_lo=aci.lo, accuracy_hi=aci.hi, images=aci.n)
        rows.append(row)
    return rows


def _shown_keys(record: BuildRecord, budgets: Budgets | None) -> list[str]:
    """p50 and p90, then every budgeted statistic (without the budgets: every one the record has an interval of)."""
    extra = budgets.latency_ms if budgets is not None else (record.chosen.latency_ci or {})
    return ["p50", "p90", *(k for k in extra if k not in ("p50", "p90"))]


def _latency_line(record: BuildRecord, budgets: Budgets | None) -> str:
    ch = record.chosen
    lat, cis = ch.latency_ms or {}, ch.latency_ci or {}
    cells = []
    for k in _shown_keys(record, budgets):
        ci = interval_of(cis.get(k), f"chosen.latency_ci.{k}")
        cells.append(f"{k} {latency_text(ci)}" if ci is not None else f"{k} {_ms(lat.get(k))} ms")
    return "- on the device: " + ", ".join(cells)


def _decision_lines(record: BuildRecord) -> list[str]:
    """``## How it was decided``: the tie and how it was broken, the reference's validation-to-test gap,
    and the warning when a floor was met inside that gap. Absent from records written before decisions."""
    d = record.decision
    if d is None:
        return []
    ch = record.chosen
    tied = [f"`{n}`" for n in d.get("tied") or []]
    lines = ["", "## How it was decided", ""]
    if tied:
        lines.append(f"- tied with `{ch.name}` (validation accuracies within noise): {', '.join(tied)}")
        lines.append(f"- how the tie was broken: {d.get('why') or 'n/a'}")
    else:
        lines.append(f"- no other feasible candidate is within validation noise of `{ch.name}`: "
                     f"the most accurate that fits")
    gap = d.get("val_test_gap_pt")
    if gap is None:
        lines.append(f"- validation-to-test gap of the reference ({record.reference.model}): n/a (the pool "
                     f"has no test accuracy of it)")
    else:
        lines.append(f"- validation-to-test gap of the reference ({record.reference.model}): {gap:+.2f} pt "
                     f"(validation minus test, on images no decision used); an accuracy floor met on validation "
                     f"by less than this is met by chance")
    if d.get("warning"):
        lines.append(f"- **WARNING: {d['warning']}**")
    return lines


def _why(c: CandidateRow, record: BuildRecord) -> str:
    """The candidate's reasons, an undecided verdict in bold (it counts as a miss), and its tie with the chosen."""
    parts = [w.replace(UNDECIDED_WORD, " **undecided**: ", 1) for w in c.why]
    if c.fate != "chosen" and c.name in ((record.decision or {}).get("tied") or []):
        parts.insert(0, f"tied with `{record.chosen.name}` within validation noise; not chosen by the tie rule")
    return "; ".join(parts)


def _ci_cell(ci: Interval | None) -> str:
    if ci is None:
        return "n/a"
    d = latency_decimals(ci.hi)
    return f"[{ci.lo:.{d}f}, {ci.hi:.{d}f}]"


def agreement_cell(a: dict[str, Any] | None) -> str:
    """``100.00% (4000), max Δp 0.0021``: top-1 agreement with this host, its images, the largest probability gap."""
    if not a:
        return "n/a"
    return f"{100 * a['top1']:.2f}% ({a['images']}), max Δp {a['max_prob_diff']:.4f}"


def _candidate_table(record: BuildRecord, key: str) -> list[str]:
    """Every candidate, most accurate first: accuracy and p50/``key`` latency each with its 95% interval (and,
    when the profile compares outputs with a second device, each one's agreement with this host)."""
    agree = any(c.agreement for c in record.candidates)
    pred = any(c.predicted_ms for c in record.candidates)  # a record written with the latency model
    head = "| agreement (images), max Δp " if agree else ""
    lines = [f"| candidate | val accuracy [95%] | ECE | size KiB | package KiB | p50 ms | "
             f"{'predicted p50 ms [band] | ' if pred else ''}p50 95% | {key} ms | "
             f"{key} 95% | peak MiB {head}| measured | fate | why |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (agree + pred)]
    for c in sorted(record.candidates, key=lambda c: -c.accuracy):
        lt, mem, aci = c.latency_ms or {}, c.peak_memory_mb, _cand_acc(record, c)
        acc = accuracy_text(aci) if aci is not None else f"{100 * c.accuracy:.2f}%"
        cell = f" | {agreement_cell(c.agreement)}" if agree else ""
        p = c.predicted_ms
        guess = ("n/a | " if not p else f"{p['p50']:.4f} [{p['lo']:.4f}, {p['hi']:.4f}] | ") if pred else ""
        lines.append(f"| `{c.name}` | {acc} | {_f(c.ece)} | {c.size_bytes / 1024:.1f} | {_kib(c.download_bytes)} | "
                     f"{_ms(lt.get('p50'))} | {guess}{_ci_cell(_cand_lat(c, 'p50'))} | {_ms(lt.get(key))} | "
                     f"{_ci_cell(_cand_lat(c, key))} | {'n/a' if mem is None else f'{mem:.0f}'}{cell} | {c.measured} | "
                     f"{c.fate} | {_why(c, record)} |")
    return lines


def _conditions_lines(record: BuildRecord) -> list[str]:
    """The runner's conditions of each measured candidate, and the rounds note where the load changed."""
    lines = []
    for c in record.candidates:
        cond, rounds = conditions_text(c.conditions), rounds_text(c.rounds)
        if cond is None and not c.rounds:
            continue
        lines.append(f"  - `{c.name}`: {cond or 'n/a'}" + (f"; {rounds}" if c.rounds else ""))
    return ["- conditions (start -> end) of each measured candidate:", *lines] if lines else []


def render_markdown(record: BuildRecord, budgets: Budgets | None = None, plot: str | None = None) -> str:
    """The build for people: the choice with its intervals, how it was decided, why nothing more accurate
    shipped, every candidate's fate. ``budgets`` (the profile's) adds every budgeted latency statistic to
    the chosen line and picks the table's second latency column; without it, every statistic with an
    interval and p90. ``plot``: the frontier SVG's path relative to the report, embedded in its Frontier."""
    ch, s, ref = record.chosen, record.search, record.reference
    lines = [f"# Build `{record.target}`: **{_STATUS.get(record.status, record.status)}**", ""]
    warning = (record.decision or {}).get("warning")
    if warning:  # a floor met by chance must not hide in a section further down
        lines += [f"**WARNING: {warning}**", ""]
    if record.description:
        lines += [record.description, ""]
    gap = 100 * (ref.val_accuracy - ch.val_accuracy)
    pkg = ch.download_bytes
    shipped = "" if pkg is None else f"; its package, what a device downloads: {pkg / 1024:.1f} KiB"
    # A failed build wrote its record only: its "chosen" is the nearest candidate, and nothing shipped.
    label = "nearest, not shipped (the build failed)" if record.error else "chosen"
    aci = accuracy_ci(ch.val_accuracy_ci, ch.val_accuracy, _images(record), "chosen.val_accuracy_ci")
    acc = f"{100 * ch.val_accuracy:.2f}%" if aci is None else f"{accuracy_text(aci)} on {aci.n} images"
    versus = f"{abs(gap):.2f} pt {'below' if gap >= 0 else 'above'} the {ref.model}'s {100 * ref.val_accuracy:.2f}%"
    lines += [f"- {label}: `{ch.name}` ({ch.precision} on {ch.engine}, {ch.size_bytes / 1024:.1f} KiB{shipped})",
              f"- validation accuracy {acc} ({'' if aci is None else '95% Wilson; '}{versus}), "
              f"ECE {_f(ch.val_ece)}, NLL {_f(ch.val_nll)}",
              _latency_line(record, budgets),
              f"- search: {s.candidates} candidates; {s.device_runs} measured on the device, "
              f"{s.cache_hits} from the measurement cache, {s.skipped} skipped (a more accurate one fits); "
              f"{s.seconds:.1f} s" + (f"; {s.predicted_skips} not measured: predicted over a latency budget"
                                       if s.predicted_skips else ""),
              *_model_lines(s),
              _scored_line(record.scored_on or {})]
    if record.agreement:
        chosen = next((c.agreement for c in record.candidates if c.fate == "chosen"), None)
        lines.append(f"- outputs vs this host: {record.agreement}" +
                     (f"; the chosen: {agreement_cell(chosen)}" if chosen else ""))
    lines += _decision_lines(record)
    if record.infeasible:
        lines += ["", "## No candidate meets every budget", "", "```", record.infeasible, "```"]
    better = [c for c in record.candidates if c.accuracy > ch.val_accuracy and c.fate != "chosen"]
    # The profile's own choices (engines, precisions, models) are not budgets: counted, not listed.
    by_budget = [c for c in better if not any(w.startswith(_SPEC) for w in c.why)]
    if better:
        lines += ["", "## Why nothing more accurate ships", ""]
        if by_budget:
            lines += ["| candidate | val accuracy [95%] | the budget it misses, by how much |", "|---|---|---|"]
            for c in sorted(by_budget, key=lambda c: -c.accuracy):
                aci = _cand_acc(record, c)
                lines.append(f"| `{c.name}` | {accuracy_text(aci) if aci else f'{100 * c.accuracy:.2f}%'} | "
                             f"{_why(c, record) or c.fate} |")
        if len(better) > len(by_budget):
            lines += ["", f"{len(better) - len(by_budget)} more accurate candidate(s) are outside the profile's "
                          f"build spec (its engines, precisions, models or requirements)."]
    key = plot_key(budgets) if budgets is not None else "p90"
    lines += frontier_lines(record, budgets, plot)
    lines += ["", "## Every candidate", "", *_candidate_table(record, "p90" if key == "p50" else key)]
    fp, rt = record.fingerprint or {}, record.runtime or {}
    lines += ["", "## Where it was measured", "", f"- device: {record.device}",
              f"- hardware match: {'yes' if record.hardware_match else 'no (proxy measurement)'}"]
    lines += [f"  - {r}" for r in record.hardware_reasons or []]
    lines += [f"- machine: {fp.get('hostname')}, {fp.get('arch')}, {fp.get('cpu_model')}, {fp.get('cores')} cores",
              f"- runtime of the chosen artifact: {rt.get('name')} {rt.get('version')}, "
              f"threads {threads_text(rt)}", *_conditions_lines(record)]
    return "\n".join(lines) + "\n"


def _model_lines(s: SearchRecord) -> list[str]:
    """The latency model's line: on or why off, and its held-out error (absent from records before it)."""
    if s.prediction is None:
        return []
    if s.predicted_skips is None:  # off: nothing was predicted
        return [f"- latency model: {s.prediction}"]
    err = s.model_error
    held = ("n/a (no group of this device has two measured networks to hold one out)" if not err else
            f"{100 * err['mdape']:.1f}% median absolute error of p50 on {err['n']} held-out artifacts (a third of "
            f"this device's measured networks, fitted on the rest)")
    return [f"- latency model: {s.prediction}; held-out error {held}"]


def _kib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f}"


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def summary(record: BuildRecord) -> dict[str, Any]:
    """The few numbers ``dvc metrics`` tracks per target, the latencies and accuracy with their 95% ends
    (None where the record has no interval)."""
    ch, s = record.chosen, record.search
    lat = ch.latency_ms or {}
    out: dict[str, Any] = {"target": record.target, "status": record.status, "chosen": ch.name,
                           "val_accuracy": ch.val_accuracy}
    aci = accuracy_ci(ch.val_accuracy_ci, ch.val_accuracy, _images(record), "chosen.val_accuracy_ci")
    out.update(val_accuracy_lo=None if aci is None else aci.lo, val_accuracy_hi=None if aci is None else aci.hi,
               val_images=None if aci is None else aci.n)
    out.update(val_ece=ch.val_ece, size_bytes=ch.size_bytes, download_bytes=ch.download_bytes)
    for k in ("p50", "p90"):
        ci = interval_of((ch.latency_ci or {}).get(k), f"chosen.latency_ci.{k}")
        out.update({f"{k}_ms": lat.get(k), f"{k}_ms_lo": None if ci is None else ci.lo,
                    f"{k}_ms_hi": None if ci is None else ci.hi})
    out.update(candidates=s.candidates, device_runs=s.device_runs, cache_hits=s.cache_hits, skipped=s.skipped,
               seconds=s.seconds)
    return out
