"""The benchmarks' headline figures: early exits chosen on validation (never test), weight sharing package
against package, active learning's first measured round beside the interpolated label count."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from edgecompress.errors import EdgeCompressError

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # as `python benchmarks/x.py` has it (each script imports harness)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def ee() -> ModuleType:
    return _bench("early_exit")


def test_the_cheapest_setting_within_the_bound_on_validation_is_chosen(ee: ModuleType) -> None:
    S = ee.ValSetting
    exactly_03 = 100 * (0.9383333333333334 - 0.9353333333333333)  # 0.30000000000000027: the bound itself
    settings = [S("a", 0.0, 20e6), S("b", 0.1, 15e6), S("c", exactly_03, 12e6), S("d", 0.5, 11e6)]
    assert ee.choose_on_validation(settings, 0.3).name == "c"  # d is cheaper but 0.5 pts down
    assert ee.choose_on_validation(settings, 0.1).name == "b"
    assert ee.choose_on_validation(settings, 1.0).name == "d"
    assert ee.choose_on_validation([S("x", 0.2, 5.0)], 0.1) is None  # nothing within: no cascade
    tie = [S("z", 0.1, 5.0), S("y", 0.1, 5.0), S("w", 0.2, 5.0)]
    assert ee.choose_on_validation(tie, 0.3).name == "y"  # equal cost: the smaller drop, then the name
    with pytest.raises(EdgeCompressError, match="--choose-within -0.1: must be >= 0"):
        ee.choose_on_validation(settings, -0.1)


def _network(val: dict[str, tuple[float, list[float]]], test: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """One network's results: per setting its validation (accuracy, exit fractions) and test (accuracy, ms)."""
    measured = {"plain": {"accuracy": 0.93, "latency_ms": {"mean": 1.0}}}
    measured.update({f"cascade max_drop {k}": {"accuracy": a, "latency_ms": {"mean": ms}} for k, (a, ms) in test.items()})
    return {"fine_tune": {"frozen": True, "macs_to_exit": [10, 20, 40]},
            "choices": {k: {"val_accuracy": a, "val_exit_fractions": f, "val_final_accuracy": 0.94}
                        for k, (a, f) in val.items()},
            "measured": {"fp32.tflite": measured}}


def test_the_headline_is_the_validation_choice_at_its_test_cost(ee: ModuleType) -> None:
    # On test, "0.5" would look best (fastest within 0.3 pts); on validation it is 0.5 pts down, so "0.3" is chosen.
    res = _network(val={"0.1": (0.939, [0.2, 0.2, 0.6]), "0.3": (0.937, [0.5, 0.1, 0.4]),
                        "0.5": (0.935, [0.7, 0.1, 0.2])},
                   test={"0.1": (0.929, 0.9), "0.3": (0.924, 0.8), "0.5": (0.928, 0.5)})
    ch = ee.chosen_on_validation(res, 0.3)
    assert ch["chosen"] == "cascade max_drop 0.3"
    assert [round(s["val_macs"], 6) for s in ch["settings"]] == [30.0, 23.0, 17.0]  # fractions x MACs to each exit
    t = ch["test"]["fp32.tflite"]
    assert t["speedup_mean"] == pytest.approx(1.25) and t["test_change_points"] == pytest.approx(-0.6)
    assert "max_drop 0.3" in "\n".join(ee.chosen_lines("teacher", {**res, "chosen_on_validation": ch}, 6000, 10000))
    res["val_plain_accuracy"] = 0.937  # a plain network below the final exit moves every drop
    assert ee.chosen_on_validation(res, 0.3)["chosen"] == "cascade max_drop 0.5"
    del res["val_plain_accuracy"]
    res["fine_tune"]["frozen"] = False  # a retrained backbone: the final exit is not the plain network
    with pytest.raises(EdgeCompressError, match="no 'val_plain_accuracy'.*re-run"):
        ee.chosen_on_validation(res, 0.3)


def test_packages_are_set_against_packages() -> None:
    ws = _bench("weight_sharing")
    rows = [{"model": "teacher", "artifact": "fp32.onnx", "file": 1000, "package": 800},
            {"model": "s", "artifact": "fp32.onnx", "file": 100, "package": 80},
            {"model": "s", "artifact": "cluster4 fp32.onnx", "file": 100, "package": 16}]
    r = ws.package_ratios(rows)
    assert [(q["model"], q["artifact"]) for q in r] == [("s", "fp32.onnx"), ("s", "cluster4 fp32.onnx")]
    assert (r[1]["vs_own_fp32_package"], r[1]["vs_teacher_package"], r[1]["vs_teacher_file"]) == (5.0, 50.0, 62.5)
    with pytest.raises(EdgeCompressError, match="no 'teacher' 'fp32.onnx' row"):
        ws.package_ratios(rows[1:])


def test_the_first_measured_round_beside_the_interpolated_count() -> None:
    al = _bench("active_learning")
    curve = [{"labels": 200, "accuracy": 0.80}, {"labels": 400, "accuracy": 0.82}, {"labels": 700, "accuracy": 0.81},
             {"labels": 1000, "accuracy": 0.85}]
    assert al.labels_to_reach(curve, 0.81) == pytest.approx(300.0)
    assert al.first_round_reaching(curve, 0.81) == 400
    assert al.first_round_reaching(curve, 0.83) == 1000 and al.labels_to_reach(curve, 0.83) == pytest.approx(850.0)
    assert al.first_round_reaching(curve, 0.80) == 200
    assert al.first_round_reaching(curve, 0.86) is None
