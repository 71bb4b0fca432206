"""The report a person reads: accuracies with intervals, reliability rows for one chart per group, and
the dvc plots config and templates (small synthetic inputs, no training, no runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edgecompress.deploy.budgets import BY_NAME, BudgetRow
from edgecompress.deploy.check import CheckedArtifact, CheckResult
from edgecompress.deploy.stats import Interval, wilson
from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import reliability_diagram
from edgecompress.report import accuracy_interval, difference_interval, models_table, summary_markdown
from edgecompress.uncertainty import min_bin_count, plot_rows

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / ".dvc" / "plots"


@pytest.mark.parametrize("accuracy, n, lo, hi", [
    (0.5, 10, 0.2366, 0.7634),   # 5/10: the textbook Wilson interval
    (0.0, 10, 0.0, 0.2775),      # 0/10: a real upper bound, where the normal approximation gives [0, 0]
    (1.0, 10, 0.7225, 1.0),
    (0.9, 100, 0.8256, 0.9448),
])
def test_wilson_interval_known_values(accuracy: float, n: int, lo: float, hi: float) -> None:
    got = accuracy_interval(accuracy, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert got[0] <= accuracy <= got[1]


def test_wilson_interval_narrows_with_more_images_and_rejects_nonsense() -> None:
    small, large = accuracy_interval(0.92, 360), accuracy_interval(0.92, 10000)
    assert small[1] - small[0] > 5 * (large[1] - large[0]) / 2  # ~sqrt(10000/360) = 5.3 times wider
    assert (small[1] - small[0]) / 2 > 0.025  # 360 images: +-2.8 pt, far above "+0.56"
    for bad in ((0.5, 0), (1.2, 100), (-0.1, 100)):
        with pytest.raises(EdgeCompressError):
            accuracy_interval(*bad)


def test_difference_interval_matches_newcombe() -> None:
    # Newcombe (1998), Stat Med 17:873, example (h): 56/70 - 48/80, method 10 gives 0.0524 to 0.3339.
    assert difference_interval(56 / 70, 70, 48 / 80, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def _uncertainty(n: int = 360) -> dict[str, Any]:
    def m(acc: float, params: int) -> dict[str, Any]:
        return {"accuracy": acc, "nll": 0.2, "ece": 0.01, "params": params}
    return {"split": "test", "samples": n, "models": {
        "teacher": m(0.9333, 685514), "member-1": m(0.9361, 685514), "member-2": m(0.9306, 685514),
        "student": m(0.9250, 57970), "pruned": m(0.9194, 27046), "ensemble": m(0.9417, 3 * 685514)}}


DISTILL = {"source": "ensemble", "heads": 1, "scheme": "offline", "params": 57970,
           "test": {"accuracy": 0.9250}, "baseline_test": {"accuracy": 0.9194, "nll": 0.22, "ece": 0.007}}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_models_table_has_every_model_with_interval_and_count() -> None:
    lines = models_table(_uncertainty(), DISTILL)
    rows = {_cells(ln)[0]: _cells(ln) for ln in lines if ln.startswith("| ") and not ln.startswith("| model")}
    assert set(rows) == {"teacher", "ensemble (teacher + 2 members)", "student, labels only (baseline)",
                         "student, ensemble KD", "student, pruned", "KD gain (student - labels only)"}
    lo, hi = accuracy_interval(0.9333, 360)
    assert rows["teacher"][1:4] == ["93.33%", f"{100 * lo:.2f}–{100 * hi:.2f}%", "360"]
    assert rows["student, pruned"][1] == "91.94%" and rows["student, pruned"][3] == "360"
    gain = rows["KD gain (student - labels only)"]
    assert gain[1] == "+0.56 pt"
    glo, ghi = difference_interval(0.9250, 360, 0.9194, 360)
    assert glo < 0 < ghi  # +0.56 pt on 360 images: the interval says it may be nothing
    assert gain[2] == f"{100 * glo:+.2f} to {100 * ghi:+.2f} pt"
    note = lines[-1]
    assert "Wilson" in note and "360 test images" in note and "noise" in note


def test_models_table_without_baseline_or_ensemble() -> None:
    unc = _uncertainty(10000)
    for name in ("ensemble", "member-1", "member-2"):
        unc["models"].pop(name)
    lines = models_table(unc, {"source": "teacher", "params": 57970, "test": {"accuracy": 0.925}})
    text = "\n".join(lines)
    assert "ensemble" not in text and "KD gain" not in text and "labels only" not in text
    assert "| student, KD | 92.50% |" in text and "10,000" in text


def test_models_table_lists_the_students_of_other_widths() -> None:
    students = {"students": {"student-w175": {"test": {"accuracy": 0.9267, "nll": 0.2025, "ece": 0.0147},
                                              "params": 109378, "width": 1.75, "epochs": 12}}}
    lines = models_table(_uncertainty(10000), DISTILL, students)
    rows = {_cells(ln)[0]: _cells(ln) for ln in lines if ln.startswith("| ") and not ln.startswith("| model")}
    row = rows["student-w175 (students stage: width 1.75, 12 epochs)"]
    lo, hi = accuracy_interval(0.9267, 10000)
    assert row[1:5] == ["92.67%", f"{100 * lo:.2f}–{100 * hi:.2f}%", "10,000", "0.0147"]
    assert row[6] == "109,378"
    order = [_cells(ln)[0] for ln in lines if ln.startswith("| student")]
    assert order.index("student, ensemble KD") < order.index(row[0]) < order.index("student, pruned")


def test_summary_puts_intervals_and_counts_on_every_accuracy() -> None:
    check = CheckResult(target="host", artifact=CheckedArtifact("int8.onnx", "onnx", "int8", 62233, None,
                                                                "student/int8.onnx"), ece=0.021,
                        budgets=(BudgetRow(BY_NAME["latency_p50"], 0.5, 0.05, missed=False),
                                 BudgetRow(BY_NAME["accuracy"], 0.9132, 0.9116, missed=True)),
                        device="local", latency_ms={"p50": 0.05, "p90": 0.06, "p99": 0.1}, accuracy=0.9116,
                        accuracy_samples=360, status="pass")
    lo, hi = accuracy_interval(0.9111, 360)
    point = {"artifact": "int8.tflite", "p50_ms": 0.014, "p90_ms": 0.015, "accuracy": 0.9111, "ece": 0.02,
             "nll": 0.25, "size_kib": 66.7, "runtime": "ai-edge-litert 2.3.0", "samples": 360,
             "accuracy_lo": lo, "accuracy_hi": hi}
    md = summary_markdown([check], [point], {"hostname": "vm", "arch": "x86_64", "cores": 2},
                          _uncertainty(), DISTILL)
    assert md.index("## Models") < md.index("## Targets") < md.index("## All artifacts")
    lines = md.splitlines()
    host = _cells(next(ln for ln in lines if ln.startswith("| host ")))
    assert host[5:8] == ["91.16%", "{:.2f}–{:.2f}%".format(*(100 * v for v in accuracy_interval(0.9116, 360))),
                         "360"]
    assert host[1] == "`student/int8.onnx`" and host[9] == "0.0210"
    assert host[8] == "-2.17 pt"  # 91.16% shipped against the teacher's 93.33%
    assert host[11] == "p50 -0.45 ms, accuracy -0.16 pt **missed**"
    art = _cells(next(ln for ln in lines if ln.startswith("| int8.tflite ")))
    assert art[3:6] == ["91.11%", f"{100 * lo:.2f}–{100 * hi:.2f}%", "360"]
    # Without the models' metrics (an older caller) the summary still renders, without that table.
    assert "## Models" not in summary_markdown([check], [point], {})


def test_accuracy_interval_is_the_wilson_of_stats() -> None:
    ci = wilson(0.9379, 2000)
    assert accuracy_interval(0.9379, 2000) == (ci.lo, ci.hi)


def test_summary_shows_latency_intervals_and_undecided_budgets() -> None:
    p90 = BudgetRow(BY_NAME["latency_p90"], 0.5, 0.49, missed=True, interval=Interval(0.49, 0.47, 0.53, 500),
                    verdict="undecided")
    check = CheckResult(target="pi", artifact=CheckedArtifact("int8.tflite", "tflite", "int8", 70_000, None),
                        budgets=(p90,), device="local", latency_ms={"p50": 0.412, "p90": 0.49}, accuracy=0.93,
                        accuracy_samples=2000, status="fail",
                        latency_ci={"p50": {"point": 0.412, "lo": 0.398, "hi": 0.431, "n": 500},
                                    "p90": p90.interval.to_json()})
    point = {"artifact": "int8.tflite", "p50_ms": 0.0141, "p90_ms": 0.0152, "accuracy": 0.93, "ece": 0.02,
             "nll": 0.25, "size_kib": 66.7, "runtime": "ai-edge-litert 2.3.0", "p50_lo": 0.0138, "p50_hi": 0.0143}
    md = summary_markdown([check], [point], {})
    row = _cells(next(ln for ln in md.splitlines() if ln.startswith("| pi ")))
    assert row[3:5] == ["0.412 [0.398, 0.431]", "0.490 [0.470, 0.530]"]
    assert row[11] == "p90 -0.01 ms **undecided (counted as missed)**"
    assert row[8] == "n/a"  # no models' metrics: nothing to compare with
    art = _cells(next(ln for ln in md.splitlines() if ln.startswith("| int8.tflite ")))
    assert art[1:3] == ["0.0141 [0.0138, 0.0143]", "0.0152"]  # sub-0.1 ms: four decimals; no p90 ends, no interval


def _diagram(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A real reliability diagram (metrics.reliability_diagram) of n random 3-class predictions."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [r for r in reliability_diagram(probs, rng.integers(0, 3, n)) if r["count"]]


def test_plot_rows_label_every_row_and_drop_tiny_bins() -> None:
    tiny = [{"lower": 0.0, "upper": 0.5, "count": 3, "confidence": 0.4, "accuracy": 1.0},
            {"lower": 0.5, "upper": 0.9, "count": 9, "confidence": 0.7, "accuracy": 0.0},
            {"lower": 0.9, "upper": 1.0, "count": 348, "confidence": 0.95, "accuracy": 0.94}]
    diagrams = {"teacher": [{"model": "teacher", **r} for r in tiny], "student": _diagram(2000)}
    rows = plot_rows(diagrams, "model")
    assert [r for r in rows if r["model"] == "teacher"] == [{"model": "teacher", **tiny[2]}]
    student = [r for r in rows if r["model"] == "student"]
    assert student and all(r["count"] >= min_bin_count(2000) == 20 for r in student)
    assert len(student) < len(diagrams["student"])  # the random diagram has sparse bins, left out
    assert min_bin_count(360) == 10 and min_bin_count(10000) == 100  # max(10 images, 1% of the test set)
    # Artifacts are keyed by "artifact"; a stale "model" label does not leak into their chart.
    arts = plot_rows({"int8.onnx": diagrams["teacher"]}, "artifact")
    assert arts == [{"artifact": "int8.onnx", **tiny[2]}]


def _dvc_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _stage_plots(stage: str) -> dict[str, dict[str, Any]]:
    return {k: v for entry in _dvc_yaml()["stages"][stage]["plots"] for k, v in entry.items()}


def test_plots_config_has_no_benchmark_and_uses_the_templates() -> None:
    top = _dvc_yaml().get("plots") or []
    assert not any("benchmarks" in json.dumps(p) for p in top), "benchmark evidence is rendered by hand"
    models = _stage_plots("uncertainty")
    report = _stage_plots("report")
    assert models["reports/reliability_models.json"]["template"] == "reliability"
    assert report["reports/reliability_artifacts.json"]["template"] == "reliability"
    assert report["reports/latency_accuracy.json"]["template"] == "latency_accuracy"
    for plot in (*models.values(), *report.values()):
        assert (TEMPLATES / f"{plot['template']}.json").is_file() and plot["title"]


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for layer in spec.get("layer", []):
        out += [layer, *_layers(layer)]
    return out


def test_reliability_template_draws_the_diagonal_on_fixed_axes() -> None:
    spec = json.loads((TEMPLATES / "reliability.json").read_text())
    assert spec["data"] == {"values": "<DVC_METRIC_DATA>"}
    layers = _layers(spec)
    diagonal = [ly for ly in layers if ly.get("data", {}).get("values") == [{"diagonal": 0}, {"diagonal": 1}]]
    assert len(diagonal) == 1 and diagonal[0]["mark"]["type"] == "line"
    assert diagonal[0]["mark"]["strokeDash"]
    scales = [ly["encoding"][axis]["scale"] for ly in layers for axis in ("x", "y")
              if axis in ly.get("encoding", {})]
    assert len(scales) == 4 and all(s["domain"] == [0, 1] for s in scales)
    text = json.dumps(spec)
    assert '"field": "count"' in text  # bin sizes are drawn (point size) and in the tooltip
    assert "datum.model" in text and "datum.artifact" in text  # coloured by model / artifact name


def test_latency_template_names_each_point_and_zooms_accuracy() -> None:
    spec = json.loads((TEMPLATES / "latency_accuracy.json").read_text())
    layers = _layers(spec)
    points = next(ly for ly in layers if ly["mark"]["type"] == "point")
    assert points["encoding"]["color"]["field"] == "series" == points["encoding"]["shape"]["field"]
    assert points["encoding"]["y"]["scale"]["zero"] is False
    assert "datum.artifact" in json.dumps(spec["transform"])
    assert any(ly["mark"]["type"] == "rule" and ly["encoding"]["y2"]["field"] == "accuracy_hi" for ly in layers)


@pytest.mark.parametrize("template, x, y, row", [
    ("reliability", "confidence", "accuracy",
     {"model": "teacher", "lower": 0.9, "upper": 1.0, "count": 300, "confidence": 0.97, "accuracy": 0.96}),
    ("latency_accuracy", "p50_ms", "accuracy",
     {"artifact": "int8.onnx", "p50_ms": 0.05, "accuracy": 0.91, "accuracy_lo": 0.9, "accuracy_hi": 0.92}),
])
def test_templates_fill_as_dvc_fills_them(template: str, x: str, y: str, row: dict[str, Any]) -> None:
    from dvc_render.vega import VegaRenderer

    data = [dict(row, rev="workspace")]
    spec = VegaRenderer(data, "plot", template=template, template_dir=str(TEMPLATES), x=x, y=y,
                        title="t").get_filled_template()
    text = json.dumps(spec)
    assert "<DVC_METRIC" not in text and spec["data"]["values"] == data
