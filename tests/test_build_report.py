"""The build report on synthetic build records: every latency and accuracy with its interval, how the
choice was decided (tie, validation-to-test gap, warning), conditions, and an older record still renders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgecompress.deploy.build_report import plot_rows, render_markdown, summary
from edgecompress.deploy.stats import wilson
from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord

IMAGES = 6000
P50 = {"point": 0.412, "lo": 0.398, "hi": 0.431, "n": 500}
P90 = {"point": 0.47, "lo": 0.455, "hi": 0.49, "n": 500}
P99 = {"point": 0.61, "lo": 0.55, "hi": 0.72, "n": 500}
COND = {"start": {"loadavg": [0.52, 0.4, 0.3], "cpu_mhz": {"min": 2400.0, "max": 3500.0, "mean": 2950.0},
                  "governor": "performance", "thermal_c": {"x86_pkg_temp": 45.0, "acpitz": 30.0}},
        "end": {"loadavg": [1.8, 0.6, 0.35], "cpu_mhz": {"min": 2400.0, "max": 3500.0, "mean": 3100.0},
                "governor": "performance", "thermal_c": {"x86_pkg_temp": 52.0, "acpitz": 31.0}}}
UNDECIDED_WHY = "latency p99 undecided: 0.480-0.530 ms (95%, 500 runs) straddles 0.50 ms; treated as a miss"
WARNING = ("ensemble/int8.onnx meets min_accuracy 94.20% on validation by 0.27 pt, inside the 0.68 pt the "
           "reference model (ensemble) loses from validation to test: its check on test may fail")


def _ci(acc: float) -> dict[str, Any]:
    return wilson(acc, IMAGES).to_json()


def _cand(name: str, acc: float, fate: str, lat: dict[str, Any] | None = None, why: tuple[str, ...] = (),
          new: bool = True, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name, "model": name.split("/")[0], "precision": name.split("/")[1].split(".")[0],
        "engine": "onnxruntime",
        "size_bytes": 100_000, "download_bytes": 90_000, "accuracy": acc, "nll": 0.2, "ece": 0.01,
        "latency_ms": None if lat is None else {k: v["point"] for k, v in lat.items()},
        "peak_memory_mb": None if lat is None else 80.0, "measured": "not measured" if lat is None else "device",
        "fate": fate, "why": list(why), "warnings": []}
    if new:
        row.update(accuracy_ci=_ci(acc), latency_ci=lat, **extra)
    return row


def _record(new: bool = True, decision: dict[str, Any] | None = None) -> BuildRecord:
    """A build of a target with a p99 budget: int8 chosen, fp32 tied with it, teacher undecided on p99."""
    lat = {"p50": P50, "p90": P90, "p99": P99}
    chosen = {"name": "ensemble/int8.onnx", "model": "ensemble", "file": "int8.onnx", "precision": "int8",
              "engine": "onnxruntime", "size_bytes": 100_000, "download_bytes": 90_000, "val_accuracy": 0.9447,
              "val_ece": 0.01, "val_nll": 0.2, "latency_ms": {k: v["point"] for k, v in lat.items()}}
    cands = [_cand("ensemble/int8.onnx", 0.9447, "chosen", lat, new=new, conditions=COND, rounds=""),
             _cand("ensemble/fp32.onnx", 0.9445, "feasible, less accurate",
                   {"p50": {"point": 0.9, "lo": 0.88, "hi": 0.93, "n": 500}, "p99": P99}, new=new,
                   conditions=COND, rounds="rounds disagree: round medians 0.41-0.63 ms, beyond their own 95% "
                                           "intervals (load changed during the measurement)"),
             _cand("teacher/fp32.onnx", 0.9460, "rejected", {"p50": P50, "p99": P99}, (UNDECIDED_WHY,), new=new),
             _cand("student/int8.onnx", 0.92, "skipped", None, ("not measured: ensemble/int8.onnx is more accurate "
                                                                 "and fits",), new=new)]
    d: dict[str, Any] = {
        "target": "phone", "description": "a phone", "status": "built", "hardware_match": True,
        "hardware_reasons": [], "device": "local", "fingerprint": {"hostname": "vm", "arch": "x86_64",
                                                                  "cpu_model": "EPYC", "cores": 2},
        "runtime": {"name": "onnxruntime", "version": "1.20", "threads": 1},
        "build": {"models": "all", "precisions": ["int8", "fp32"], "engines": ["onnxruntime"], "requires": [],
                  "pinned": False},
        "chosen": chosen, "reference": {"model": "ensemble", "val_accuracy": 0.9447, "used": False},
        "scored_on": {"split": "val", "images": IMAGES}, "infeasible": None, "candidates": cands,
        "search": {"candidates": 4, "device_runs": 3, "cache_hits": 0, "skipped": 1, "seconds": 1.5}}
    if new:
        chosen.update(val_accuracy_ci=_ci(0.9447), latency_ci=lat)
        d["decision"] = decision or {"tied": ["ensemble/fp32.onnx"], "why": "tied within validation noise with "
                                     "ensemble/fp32.onnx: p99 intervals not apart, so by fewer bytes, then name",
                                     "val_test_gap_pt": 0.68, "warning": WARNING}
    return BuildRecord.from_json(json.loads(json.dumps(d)))  # as read back from build.json


BUDGETS = Budgets(latency_ms={"p99": 0.5}, min_accuracy=0.942)


def test_chosen_line_gives_every_budgeted_statistic_with_its_interval() -> None:
    md = render_markdown(_record(), BUDGETS)
    line = next(ln for ln in md.splitlines() if ln.startswith("- on the device:"))
    assert line == ("- on the device: p50 0.412 [0.398, 0.431] ms (95%, 500 runs), p90 0.470 [0.455, 0.490] ms "
                    "(95%, 500 runs), p99 0.610 [0.550, 0.720] ms (95%, 500 runs)")
    # A profile that budgets only p90 does not get p99 on that line; without budgets, every interval shows.
    assert "p99" not in next(ln for ln in render_markdown(_record(), Budgets(latency_ms={"p90": 1.0})).splitlines()
                             if ln.startswith("- on the device:"))
    assert "p99 0.610 [0.550, 0.720] ms" in render_markdown(_record())
    ci = wilson(0.9447, IMAGES)
    assert (f"- validation accuracy 94.47% [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}] on 6000 images (95% Wilson; "
            f"0.00 pt below the ensemble's 94.47%)") in md


def test_how_it_was_decided_and_the_warning_near_the_top() -> None:
    md = render_markdown(_record(), BUDGETS)
    lines = md.splitlines()
    # The warning is the first thing after the title, and again in its section.
    assert lines[2] == f"**WARNING: {WARNING}**"
    section = md[md.index("## How it was decided"):md.index("## Every candidate")]
    assert "- tied with `ensemble/int8.onnx` (validation accuracies within noise): `ensemble/fp32.onnx`" in section
    assert "p99 intervals not apart, so by fewer bytes, then name" in section
    assert "validation-to-test gap of the reference (ensemble): +0.68 pt" in section
    assert f"- **WARNING: {WARNING}**" in section
    # No tie, no gap, no warning: the section says so and nothing is bolded at the top.
    quiet = render_markdown(_record(decision={"tied": [], "why": "", "val_test_gap_pt": None, "warning": None}))
    assert "WARNING" not in quiet and "no other feasible candidate is within validation noise" in quiet
    assert "validation-to-test gap of the reference (ensemble): n/a" in quiet


def _row(md: str, name: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| `{name}` ") and ln.count("|") > 10)
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_candidate_table_has_interval_columns_and_a_verdict_aware_why() -> None:
    md = render_markdown(_record(), BUDGETS)
    header = next(ln for ln in md.splitlines() if ln.startswith("| candidate |") and "size KiB" in ln)
    assert "| p50 ms | p50 95% | p99 ms | p99 95% |" in header  # p50, then the first budgeted key
    chosen = _row(md, "ensemble/int8.onnx")
    assert chosen[5:9] == ["0.4120", "[0.398, 0.431]", "0.6100", "[0.550, 0.720]"]
    ci = wilson(0.9447, IMAGES)
    assert chosen[1] == f"94.47% [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}]"
    teacher = _row(md, "teacher/fp32.onnx")
    assert teacher[-1].startswith("latency p99 **undecided**: 0.480-0.530 ms") and "treated as a miss" in teacher[-1]
    assert _row(md, "ensemble/fp32.onnx")[-1].startswith("tied with `ensemble/int8.onnx` within validation noise")
    assert _row(md, "student/int8.onnx")[5:9] == ["n/a"] * 4  # never measured
    # The more accurate teacher is listed under why nothing more accurate ships, undecided in bold.
    why = md[md.index("## Why nothing more accurate ships"):md.index("## Every candidate")]
    assert "`teacher/fp32.onnx`" in why and "**undecided**" in why


def test_conditions_and_the_rounds_note() -> None:
    md = render_markdown(_record(), BUDGETS)
    where = md[md.index("## Where it was measured"):]
    assert ("  - `ensemble/int8.onnx`: load average (1 min) 0.52 -> 1.80, CPU 2950 MHz (2400-3500) -> 3100 MHz "
            "(2400-3500), governor performance, hottest thermal zone x86_pkg_temp 45.0 -> 52.0 °C") in where
    fp32 = next(ln for ln in where.splitlines() if ln.startswith("  - `ensemble/fp32.onnx`"))
    assert fp32.endswith("; **rounds disagree: round medians 0.41-0.63 ms, beyond their own 95% intervals (load "
                         "changed during the measurement)**")
    assert "agree" not in next(ln for ln in where.splitlines() if ln.startswith("  - `ensemble/int8.onnx`"))
    assert "`teacher/fp32.onnx`" not in where  # no conditions recorded, rounds unknown: no line


def test_plot_rows_and_summary_carry_the_intervals() -> None:
    rows = {r["candidate"]: r for r in plot_rows(_record(), BUDGETS)}
    assert set(rows) == {"ensemble/int8.onnx", "ensemble/fp32.onnx", "teacher/fp32.onnx"}  # measured ones
    r = rows["ensemble/int8.onnx"]
    ci = wilson(0.9447, IMAGES)
    assert (r["latency_ms"], r["latency_lo"], r["latency_hi"], r["runs"]) == (0.61, 0.55, 0.72, 500)
    assert (r["accuracy_lo"], r["accuracy_hi"], r["images"]) == pytest.approx((ci.lo, ci.hi, IMAGES))
    assert r["latency_budget_ms"] == 0.5 and r["accuracy_floor"] == 0.942
    s = summary(_record())
    assert (s["p50_ms"], s["p50_ms_lo"], s["p50_ms_hi"]) == (0.412, 0.398, 0.431)
    assert (s["p90_ms"], s["p90_ms_lo"], s["p90_ms_hi"]) == (0.47, 0.455, 0.49)
    assert (s["val_accuracy_lo"], s["val_accuracy_hi"], s["val_images"]) == pytest.approx((ci.lo, ci.hi, IMAGES))


def test_an_older_record_without_intervals_still_renders() -> None:
    old = _record(new=False)
    assert old.decision is None and old.chosen.latency_ci is None and old.candidates[0].conditions is None
    md = render_markdown(old, BUDGETS)
    assert "## How it was decided" not in md and "WARNING" not in md and "conditions" not in md
    assert "- on the device: p50 0.4120 ms, p90 0.4700 ms, p99 0.6100 ms" in md
    assert _row(md, "ensemble/int8.onnx")[5:9] == ["0.4120", "n/a", "0.6100", "n/a"]
    # Its accuracies rest on the images its scored_on names: their Wilson interval is the same formula.
    ci = wilson(0.9447, IMAGES)
    assert f"94.47% [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}] on 6000 images" in md
    s = summary(old)
    assert s["p50_ms"] == 0.412 and s["p50_ms_lo"] is None and s["p90_ms_hi"] is None
    assert "latency_lo" not in plot_rows(old, BUDGETS)[0]
    # Nor does it need a scored_on count: then the accuracy is shown alone.
    bare = BuildRecord.from_json({**old.to_json(), "scored_on": None})
    assert "- validation accuracy 94.47% (0.00 pt below" in render_markdown(bare)
    assert summary(bare)["val_accuracy_lo"] is None
