"""The pipeline's summary: the models' accuracies, every target's check result and a latency-vs-accuracy
view of all artifacts, each accuracy with its test-set size and 95% interval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgecompress.artifacts import REGISTRY
from edgecompress.deploy.bench import local_command, run_local
from edgecompress.deploy.budgets import BudgetRow, latency_intervals, margin_text
from edgecompress.deploy.check import CheckResult
from edgecompress.deploy.check_report import failure, interval_of, latency_decimals
from edgecompress.deploy.stats import CONFIDENCE, UNDECIDED, wilson
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json


def accuracy_interval(accuracy: float, n: int, conf: float = CONFIDENCE) -> tuple[float, float]:
    """95% Wilson score interval (lo, hi) of an accuracy measured on ``n`` images: ``stats.wilson``'s ends.

    Wilson, not the normal approximation p +- z*sqrt(p(1-p)/n): that one collapses to zero width
    at 0% or 100% and leaves [0, 1] near them, exactly where small test sets put accuracies.
    """
    ci = wilson(accuracy, n, conf)
    return ci.lo, ci.hi


def difference_interval(a: float, n_a: int, b: float, n_b: int) -> tuple[float, float]:
    """95% interval of the accuracy difference a - b (Newcombe 1998, method 10, from both Wilson intervals).

    It treats the two measurements as independent; on the same test images (a paired comparison)
    it is conservative, i.e. wider than the paired interval.
    """
    lo_a, hi_a = accuracy_interval(a, n_a)
    lo_b, hi_b = accuracy_interval(b, n_b)
    d = a - b
    return d - math.hypot(a - lo_a, hi_b - b), d + math.hypot(hi_a - a, b - lo_b)


def load_checks(directory: str | Path, targets: tuple[str, ...]) -> list[CheckResult]:
    """Each target's check result (metrics/check/<name>.json), in ``check.targets`` order."""
    checks = []
    for name in targets:
        path = Path(directory) / f"{name}.json"
        if not path.exists():
            raise EdgeCompressError(f"{path} missing: check@{name} has not run (dvc repro)")
        checks.append(CheckResult.from_json(read_json(path, f"check result of {name}"), str(path)))
    return checks


def pipeline_gate(checks: list[CheckResult], summary: str | Path) -> EdgeCompressError | None:
    """The error that fails ``dvc repro`` when a target's verdict is a failure (a budget missed on its
    hardware or, with check.strict, anywhere); raised after ``summary`` is written, so it lists the failure too."""
    errors = [str(e) for e in (failure(c, summary) for c in checks) if e is not None]
    return EdgeCompressError("; ".join(errors)) if errors else None


def measure_artifacts(artifacts: Path, export_metrics: dict[str, Any], runs: int = 300,
                      threads: int = 1, samples: int | None = None) -> list[dict[str, Any]]:
    """Latency (this machine, batch 1, ``threads`` threads) of every artifact, beside its test accuracy/ECE.

    The runner runs in a subprocess exactly as in the check stage; the accuracy comes from the
    export stage's full-test-set verification, so the two axes are measured independently.
    ``samples`` is that test set's size: each point then carries its accuracy's 95% interval; the
    latencies carry theirs (``p50_lo``/``p50_hi``, ``p90_lo``/``p90_hi``) when the runner sends its samples.
    """
    points = []
    for name in REGISTRY:
        model = artifacts / name
        if not model.exists():
            continue
        res = run_local(local_command(["--model", str(model), "--threads", str(threads), "--runs", str(runs),
                                       "--warmup", "50", "--max-seconds", "30"]), model, 300, "report")
        m = export_metrics.get(name, {})
        points.append({"artifact": name, "p50_ms": res["latency_ms"]["p50"], "p90_ms": res["latency_ms"]["p90"],
                       "accuracy": m.get("accuracy"), "ece": m.get("ece"), "nll": m.get("nll"),
                       "size_kib": round(model.stat().st_size / 1024, 1), "threads": threads,
                       "runtime": f"{res['runtime'].get('name')} {res['runtime'].get('version')}"})
        cis = latency_intervals(res)  # empty from a runner that sends no samples
        for key in ("p50", "p90"):
            if key in cis:
                points[-1].update({f"{key}_lo": cis[key].lo, f"{key}_hi": cis[key].hi, "runs": cis[key].n})
        if samples and m.get("accuracy") is not None:
            lo, hi = accuracy_interval(m["accuracy"], samples)
            points[-1].update(samples=samples, accuracy_lo=lo, accuracy_hi=hi)
    return points


def reliability(artifacts: Path, testset: Path) -> dict[str, list[dict[str, Any]]]:
    """Reliability-diagram rows (15 confidence bins) of every artifact on the test set, via its own runtime."""
    import numpy as np

    from edgecompress.compression.export import run_artifact
    from edgecompress.data import load_npz_split, normalize_images
    from edgecompress.metrics import reliability_diagram, softmax

    x_raw, y = load_npz_split(testset)
    out = {}
    for name in REGISTRY:
        model = artifacts / name
        if not model.exists():
            continue
        side = read_json(f"{model}.json", "artifact sidecar")
        x = normalize_images(x_raw, side["mean"], side["std"])
        probs = softmax(run_artifact(model, side, x).astype(np.float64))
        out[name] = [{"artifact": name, **row} for row in reliability_diagram(probs, y) if row["count"]]
    return out


def _latency_cell(value: float | None, lo: float | None = None, hi: float | None = None) -> str:
    """A latency table cell: ``0.412 [0.398, 0.431]`` (the 95% interval) where there is one, else the value."""
    if value is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{value:.4f}"
    d = latency_decimals(hi)
    return f"{value:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _check_latency(r: CheckResult, key: str) -> str:
    """A check's ``key`` latency cell: its interval's point and ends where the result has them."""
    ci = interval_of((r.latency_ci or {}).get(key), f"{r.target}: latency_ci.{key}")
    if ci is None:
        return _latency_cell((r.latency_ms or {}).get(key))
    return _latency_cell(ci.point, ci.lo, ci.hi)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _accuracy_cells(accuracy: float | None, n: int | None) -> list[str]:
    """Table cells: accuracy, its 95% Wilson interval, the number of test images ("-" if unknown)."""
    if accuracy is None:
        return ["-", "-", "-" if n is None else f"{n:,}"]
    if not n:
        return [_pct(accuracy), "-", "-"]
    lo, hi = accuracy_interval(accuracy, n)
    return [_pct(accuracy), f"{100 * lo:.2f}–{100 * hi:.2f}%", f"{n:,}"]


def _student_label(distill: dict[str, Any]) -> str:
    """What the distilled student learnt from, as metrics/distill.json records it."""
    how = "ensemble KD" if distill.get("source") == "ensemble" else "KD"
    if distill.get("heads", 1) > 1:
        how = f"multi-head ({distill['heads']} heads)"
    scheme = distill.get("scheme", "offline")
    return f"student, {how}" + ("" if scheme == "offline" else f" ({scheme})")


def models_table(uncertainty: dict[str, Any], distill: dict[str, Any] | None = None,
                 students: dict[str, Any] | None = None) -> list[str]:
    """Markdown lines: every PyTorch model's test accuracy with its 95% interval, and the KD gain.

    ``uncertainty`` is metrics/uncertainty.json (all models, one evaluation, with the test-set size);
    ``distill`` is metrics/distill.json, read for the labels-only baseline (``distill.baseline``);
    ``students`` is metrics/students.json (the students of other widths, each on the same test split).
    """
    n = uncertainty.get("samples")
    models = uncertainty.get("models", {})
    distill = distill or {}
    members = sum(1 for name in models if name.startswith("member-"))
    rows: list[tuple[str, dict[str, Any]]] = []
    if "teacher" in models:
        rows.append(("teacher", models["teacher"]))
    if "ensemble" in models:
        rows.append((f"ensemble (teacher + {members} member{'s' if members != 1 else ''})", models["ensemble"]))
    rows += [(f"{name.removesuffix('-mc-dropout')}, MC dropout", m) for name, m in models.items()
             if name.endswith("-mc-dropout")]
    baseline = distill.get("baseline_test")
    if baseline:
        rows.append(("student, labels only (baseline)", {**baseline, "params": distill.get("params")}))
    if "student" in models:
        rows.append((_student_label(distill), models["student"]))
    for name, m in sorted((students or {}).get("students", {}).items()):
        rows.append((f"{name} (students stage: width {m.get('width')}, {m.get('epochs')} epochs)",
                     {**m.get("test", {}), "params": m.get("params")}))
    if "pruned" in models:
        rows.append(("student, pruned", models["pruned"]))
    lines = ["| model | test accuracy | 95% CI | test images | ECE | NLL | params |", "|---|---|---|---|---|---|---|"]
    widest = 0.0
    for label, m in rows:
        acc, ci, count = _accuracy_cells(m.get("accuracy"), n)
        params = m.get("params")
        lines.append(f"| {label} | {acc} | {ci} | {count} | {m.get('ece', float('nan')):.4f} | "
                     f"{m.get('nll', float('nan')):.3f} | {'-' if params is None else f'{params:,}'} |")
        if n and m.get("accuracy") is not None:
            lo, hi = accuracy_interval(m["accuracy"], n)
            widest = max(widest, (hi - lo) / 2)
    has_gain = bool(baseline and "student" in models and n)
    if has_gain:
        gain = models["student"]["accuracy"] - baseline["accuracy"]
        lo, hi = difference_interval(models["student"]["accuracy"], n, baseline["accuracy"], n)
        lines.append(f"| KD gain (student - labels only) | {100 * gain:+.2f} pt | "
                     f"{100 * lo:+.2f} to {100 * hi:+.2f} pt | {n:,} | | | |")
    if not n:
        return lines + ["", "The test-set size is unknown (metrics/uncertainty.json has no `samples`): no intervals."]
    gain_note = (" (KD gain: Newcombe's interval of a difference, conservative as both students see the same "
                 "images)") if has_gain else ""
    return lines + ["", f"95% CI: Wilson score interval on the {n:,} test images{gain_note}; a difference smaller "
                    f"than the interval width (up to {200 * widest:.2f} pt here: ±{100 * widest:.2f} pt) is noise, "
                    "not an effect."]


def _versus(accuracy: float | None, reference: float | None) -> str:
    """``accuracy`` minus ``reference`` in points, or n/a when either is unknown."""
    return "n/a" if accuracy is None or reference is None else f"{100 * (accuracy - reference):+.2f} pt"


def _margins(rows: tuple[BudgetRow, ...] | list[BudgetRow]) -> str:
    """Each budget's margin in its unit, e.g. 'p50 -0.21 ms, size -0.06 MB, accuracy +3.10 pt'."""
    short = {"accuracy_drop": "drop", "peak_memory": "memory"}
    out = []
    for r in rows:
        name = short.get(r.budget.name, r.budget.name.removeprefix("latency_"))
        if r.margin is None:
            out.append(f"{name} n/a")
        else:
            said = " **undecided (counted as missed)**" if r.verdict == UNDECIDED else " **missed**"
            out.append(f"{name} {margin_text(r)}" + (said if r.missed else ""))
    return ", ".join(out)


def summary_markdown(checks: list[CheckResult], points: list[dict[str, Any]], fingerprint: dict[str, Any],
                     uncertainty: dict[str, Any] | None = None, distill: dict[str, Any] | None = None,
                     students: dict[str, Any] | None = None) -> str:
    """One table per concern: models (accuracy with 95% intervals, KD gain), targets (pass/fail/proxy)
    and all artifacts (latency vs accuracy); ``uncertainty``/``distill``/``students`` are those stages' metrics."""
    lines = ["# edgecompress report", ""]
    if uncertainty:
        lines += ["## Models (PyTorch, test set)", "", *models_table(uncertainty, distill, students), ""]
    teacher = ((uncertainty or {}).get("models", {}).get("teacher") or {}).get("accuracy")
    lines += ["## Targets (what each build chose, checked on the test set on the device)", "",
              "| target | shipped | device | p50 ms | p90 ms | accuracy | 95% CI | test images | vs teacher | ECE | "
              "size KiB | margin to each budget | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in checks:
        art = r.artifact
        acc = " | ".join(_accuracy_cells(r.accuracy, r.accuracy_samples))
        shipped = art.candidate or f"{art.precision}.{art.format}"
        ece = r.ece
        lines.append(f"| {r.target} | `{shipped}` | {r.device} | {_check_latency(r, 'p50')} | "
                     f"{_check_latency(r, 'p90')} | {acc} | {_versus(r.accuracy, teacher)} | "
                     f"{'n/a' if ece is None else f'{ece:.4f}'} | {(art.size_bytes or 0) / 1024:.1f} | "
                     f"{_margins(r.budgets)} | {r.status} |")
    lines += ["", "`proxy-*`: measured on hardware that does not match the profile (see each target's report). "
              "vs teacher: the shipped artifact's test accuracy minus the teacher's (PyTorch, the models table), "
              "in points; a check on fewer test images carries its own interval. "
              "Margins: measured minus budget (negative is inside a ceiling, positive above a floor); why each target "
              "shipped what it did: reports/build/<target>.md.",
              "", "## All artifacts on this machine (batch 1, 1 thread)", "",
              "| artifact | p50 ms | p90 ms | accuracy | 95% CI | test images | ECE | NLL | size KiB | runtime |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        acc = " | ".join(_accuracy_cells(p.get("accuracy"), p.get("samples")))
        lines.append(f"| {p['artifact']} | {_latency_cell(p['p50_ms'], p.get('p50_lo'), p.get('p50_hi'))} | "
                     f"{_latency_cell(p['p90_ms'], p.get('p90_lo'), p.get('p90_hi'))} | {acc} | "
                     f"{p['ece']:.4f} | {p['nll']:.3f} | {p['size_kib']} | {p['runtime']} |")
    cpu = fingerprint.get("cpu_model") or fingerprint.get("cpu")
    lines += ["", "95% CI as for the models: differences between artifacts smaller than the interval width "
              "are noise. Latencies: the point, then its 95% interval in brackets where the runner sent its "
              "samples (order statistics for percentiles).", "",
              f"Measured on {fingerprint.get('hostname')} ({fingerprint.get('arch')}, {cpu}, "
              f"{fingerprint.get('cores')} cores).", ""]
    return "\n".join(lines)
