"""The build report's frontier plot (#30) on synthetic build records: a well-formed SVG with one marker per
candidate the build spec allows on each panel, the chosen one named, measured vs predicted latency, the
Pareto line, budget lines exactly when the profile has them, log axes that survive one point and zero or
missing values, and the report embedding it (the build stage writes both)."""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgecompress.deploy.build_report import render_markdown
from edgecompress.deploy.frontier_plot import accuracy_range, frontier_svg, log_range, log_ticks
from edgecompress.deploy.targets import Budgets
from edgecompress.records import BuildRecord

REPO = Path(__file__).resolve().parents[1]
NS = {"s": "http://www.w3.org/2000/svg"}
SPEC_OUT = "engine onnxruntime not allowed by build.engines"  # how the build words a build-spec exclusion
BUDGETS = Budgets(latency_ms={"p50": 1.0, "p90": 2.0}, download_mb=0.125, min_accuracy=0.88)


def _cand(name: str, acc: float, fate: str, size: int, download: int | None, p50: float | None = None,
          predicted: float | None = None, why: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "model": name.split("/")[0], "precision": name.split("/")[1].split(".")[0],
            "engine": "litert", "size_bytes": size, "download_bytes": download, "accuracy": acc, "nll": 0.2,
            "ece": 0.01, "latency_ms": None if p50 is None else {"p50": p50},
            "peak_memory_mb": None, "measured": "not measured" if p50 is None else "device", "fate": fate,
            "why": list(why), "warnings": [],
            "predicted_ms": None if predicted is None else {"p50": predicted, "lo": predicted / 2, "hi": predicted * 2}}


CANDS = [
    _cand("a/int8.tflite", 0.93, "chosen", 40_000, 30_000, p50=0.5, predicted=0.6),
    _cand("a/fp32.tflite", 0.925, "feasible, less accurate", 150_000, 100_000, p50=0.9),  # dominated on both axes
    _cand("b/fp32.tflite", 0.945, "rejected", 800_000, 700_000, predicted=3.0, why=("download 0.668 MiB > 0.125",)),
    _cand("c/int8.tflite", 0.90, "skipped", 20_000, 15_000),  # neither measured nor predicted: not on (b)
    _cand("d/fp32.onnx", 0.95, "rejected", 50_000, 40_000, p50=0.1, why=(SPEC_OUT,)),  # outside the spec: nowhere
]


def _record(cands: list[dict[str, Any]], ref_acc: float = 0.94, status: str = "built") -> BuildRecord:
    chosen = next((c for c in cands if c["fate"] == "chosen"), cands[0])
    d = {"target": "phone & co", "description": None, "status": status, "hardware_match": True,
         "hardware_reasons": [], "device": "local", "fingerprint": None, "runtime": None,
         "build": {"models": "all", "precisions": ["int8", "fp32"], "engines": ["litert"], "requires": [],
                   "pinned": False},
         "chosen": {"name": chosen["name"], "model": chosen["model"], "file": "x", "precision": chosen["precision"],
                    "engine": "litert", "size_bytes": chosen["size_bytes"], "download_bytes": chosen["download_bytes"],
                    "val_accuracy": chosen["accuracy"], "val_ece": None, "val_nll": None,
                    "latency_ms": chosen["latency_ms"] or {}},
         "reference": {"model": "teacher", "val_accuracy": ref_acc, "used": False},
         "scored_on": {"split": "val", "images": 4000}, "infeasible": None, "candidates": cands,
         "search": {"candidates": len(cands), "device_runs": 2, "cache_hits": 0, "skipped": 1, "seconds": 1.0}}
    return BuildRecord.from_json(json.loads(json.dumps(d)))  # as read back from build.json


def _panels(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    panels = root.findall("s:g[@class='panel']", NS)
    assert len(panels) == 2
    return panels


def _markers(panel: ET.Element) -> dict[str, ET.Element]:
    circles = panel.findall("s:circle[@class='candidate']", NS)
    by_name = {c.get("data-name"): c for c in circles}
    assert len(by_name) == len(circles)  # one marker per candidate
    return by_name


def _lines(panel: ET.Element, cls: str) -> list[tuple[ET.Element, str]]:
    """Each dashed line of a class with the label drawn right after it."""
    kids = list(panel)
    return [(k, kids[i + 1].text or "") for i, k in enumerate(kids) if k.get("class") == cls]


def test_one_marker_per_candidate_each_panel_and_the_chosen_named() -> None:
    size, lat = _panels(frontier_svg(_record(CANDS), BUDGETS))
    assert set(_markers(size)) == {"a/int8.tflite", "a/fp32.tflite", "b/fp32.tflite", "c/int8.tflite"}
    # (b): c has neither a measured nor a predicted p50, so it is left out, and the subtitle counts it.
    assert set(_markers(lat)) == {"a/int8.tflite", "a/fp32.tflite", "b/fp32.tflite"}
    assert "1 without p50 left out" in lat.find("s:text", NS).text
    assert _markers(size)["c/int8.tflite"].get("data-fate") == "skipped"
    for panel in (size, lat):
        m = _markers(panel)
        assert [n for n, c in m.items() if c.get("data-fate") == "chosen"] == ["a/int8.tflite"]
        assert float(m["a/int8.tflite"].get("r")) > float(m["a/fp32.tflite"].get("r"))
        assert (m["a/fp32.tflite"].get("data-fate"), m["b/fp32.tflite"].get("data-fate")) == ("feasible", "rejected")
        labels = [t.text for t in panel.findall("s:text[@class='chosen-label']", NS)]
        assert labels == ["a/int8.tflite (chosen)"]


def test_measured_filled_predicted_hollow_and_the_measured_one_wins() -> None:
    lat = _markers(_panels(frontier_svg(_record(CANDS), BUDGETS))[1])
    assert lat["b/fp32.tflite"].get("data-predicted") == "true" and lat["b/fp32.tflite"].get("fill") == "white"
    # a/int8 has both: the measured 0.5 ms is drawn, filled, left of b's predicted 3 ms.
    assert lat["a/int8.tflite"].get("data-predicted") == "false" and lat["a/int8.tflite"].get("fill") != "white"
    assert float(lat["a/int8.tflite"].get("cx")) < float(lat["a/fp32.tflite"].get("cx")) < \
        float(lat["b/fp32.tflite"].get("cx"))


def test_pareto_line_joins_only_the_undominated() -> None:
    size, lat = _panels(frontier_svg(_record(CANDS), BUDGETS))
    for panel, names in ((size, ["c/int8.tflite", "a/int8.tflite", "b/fp32.tflite"]),
                         (lat, ["a/int8.tflite", "b/fp32.tflite"])):
        m = _markers(panel)
        line = panel.find("s:polyline[@class='pareto']", NS).get("points").split()
        assert line == [f"{m[n].get('cx')},{m[n].get('cy')}" for n in names]  # a/fp32 is dominated: not on it


def test_budget_lines_at_their_place_when_the_profile_has_them() -> None:
    size, lat = _panels(frontier_svg(_record(CANDS), BUDGETS))
    (line, label), = _lines(size, "budget-line")
    assert label == "download budget 128.0 KiB"
    m = _markers(size)
    # The package axis: a/fp32's package is 97.7 KiB (its file, 146 KiB, would be right of it), b's 684 KiB.
    assert float(m["a/fp32.tflite"].get("cx")) < float(line.get("x1")) < float(m["b/fp32.tflite"].get("cx"))
    (line, label), = _lines(lat, "budget-line")
    assert label == "p50 budget 1 ms"  # p50 only: the axis is p50; the p90 budget is named, not drawn
    assert float(_markers(lat)["a/fp32.tflite"].get("cx")) < float(line.get("x1"))
    assert "not drawn: p90 2 ms" in "".join(t.text or "" for t in lat.findall("s:text", NS))
    for panel in (size, lat):
        assert [lb for _, lb in _lines(panel, "goal-line")] == ["goal 93.50%: teacher 94.00% - 0.5 pt"]
        assert [lb for _, lb in _lines(panel, "floor-line")] == ["accuracy floor 88.00%"]


@pytest.mark.parametrize("budgets", [None, Budgets(max_ece=0.05), Budgets(latency_ms={"p90": 2.0}, max_ece=0.05)])
def test_no_budget_lines_without_those_budgets(budgets: Budgets | None) -> None:
    svg = frontier_svg(_record(CANDS), budgets)
    for panel in _panels(svg):
        assert _lines(panel, "budget-line") == [] and _lines(panel, "floor-line") == []
        assert len(_lines(panel, "goal-line")) == 1  # the goal comes from the record, not the profile
    assert "(a) vs file size" in svg  # no download budget: the file is the size axis


def test_size_budget_draws_on_the_file_axis() -> None:
    size, _ = _panels(frontier_svg(_record(CANDS), Budgets(size_mb=0.0625)))
    (line, label), = _lines(size, "budget-line")
    m = _markers(size)
    assert label == "size budget 64.0 KiB"  # a/int8's file 39 KiB is left of it, a/fp32's 146 KiB right
    assert float(m["a/int8.tflite"].get("cx")) < float(line.get("x1")) < float(m["a/fp32.tflite"].get("cx"))


def test_one_point_and_zero_or_missing_values_do_not_crash() -> None:
    one = [_cand("a/int8.tflite", 0.93, "chosen", 40_000, None, p50=0.5)]
    size, lat = _panels(frontier_svg(_record(one), BUDGETS))  # no package size: the file size stands in
    assert len(_markers(size)) == len(_markers(lat)) == 1
    assert len([t for t in size.findall("s:text", NS) if (t.text or "").replace(".", "").isdigit()]) >= 3  # ticks
    zero = [_cand("a/int8.tflite", 0.0, "chosen", 0, 0, p50=0.0),
            _cand("b/int8.tflite", 1.0, "rejected", 10_000, None, p50=None, predicted=None)]
    size, lat = _panels(frontier_svg(_record(zero, ref_acc=0.0, status="infeasible"), None))
    assert set(_markers(size)) == {"b/int8.tflite"} and _markers(lat) == {}
    assert "1 without a size left out" in size.find("s:text", NS).text
    assert "2 without p50 left out" in lat.find("s:text", NS).text
    assert ET.fromstring(frontier_svg(_record([_cand("d/fp32.onnx", 0.9, "rejected", 1, 1, why=(SPEC_OUT,))]),
                                      None)).find("s:g", NS) is None  # nothing the spec allows: no panels


def test_log_axis_and_accuracy_axis_helpers() -> None:
    assert log_ticks(1.0, 1000.0) == [1.0, 10.0, 100.0, 1000.0]
    lo, hi = log_range([5.0])
    assert lo < 5.0 < hi and hi / lo >= 4 and len(log_ticks(lo, hi)) >= 3
    assert log_range([0.0, float("nan")]) == (1.0, 10.0)
    assert log_ticks(*log_range([0.02, 0.03])) == pytest.approx([0.02, 0.03, 0.04])  # every mantissa
    assert accuracy_range([0.93]) == pytest.approx((0.925, 0.935, 0.005))
    assert accuracy_range([0.0, 1.0]) == pytest.approx((0.0, 1.0, 0.2))


def test_report_embeds_the_plot_under_the_frontier_heading() -> None:
    md = render_markdown(_record(CANDS), BUDGETS, "phone.frontier.svg")
    assert "## Frontier\n\n![frontier](phone.frontier.svg)\n\nEvery candidate" in md
    assert "![frontier]" not in render_markdown(_record(CANDS), BUDGETS)  # no plot written: no link


def test_build_stage_writes_the_svg_the_report_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stages/build.py with the build itself replaced by a synthetic record: both files, linked by file name."""
    spec = importlib.util.spec_from_file_location("build_stage", REPO / "stages" / "build.py")
    assert spec and spec.loader
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(stage, "load_target", lambda path: SimpleNamespace(budgets=BUDGETS))
    monkeypatch.setattr(stage, "MeasurementCache", lambda path: None)
    monkeypatch.setattr(stage, "build_target", lambda *a, **k: _record(CANDS))
    out = tmp_path / "reports" / "build"
    monkeypatch.setattr(sys, "argv", ["build.py", "--params", str(REPO / "params.yaml"), "--target", "t.yaml",
                                      "--candidates", "pool", "--out", str(tmp_path / "m"), "--metrics",
                                      str(tmp_path / "m.json"), "--out-md", str(out / "t.md"), "--plot",
                                      str(out / "t.json"), "--out-svg", str(out / "t.frontier.svg")])
    stage.main()
    assert "![frontier](t.frontier.svg)" in (out / "t.md").read_text()
    size, _ = _panels((out / "t.frontier.svg").read_text())
    assert len(_markers(size)) == 4
