"""The one judge of a measurement against a target's budgets (deploy/budgets.py): every budget kind, its
direction, margin, miss wording and overshoot; and the check result that carries its rows, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.deploy.budgets import (BY_NAME, CEILING, FLOOR, LATENCY, MIB, TABLE, BudgetRow, Measurement,
                                         judge, margin_text)
from edgecompress.deploy.check import CheckResult
from edgecompress.deploy.targets import LATENCY_KEYS, Budgets
from edgecompress.errors import EdgeCompressError

ROOT = Path(__file__).resolve().parents[1]

M = Measurement(latency_ms={"p50": 0.8, "p90": 1.2, "p99": 2.0, "mean": 0.9}, size_bytes=MIB // 2,
                download_bytes=MIB // 4, peak_memory_mb=60.0, accuracy=0.9, ece=0.04, nll=0.3,
                reference_accuracy=0.93)


@pytest.mark.parametrize("budgets, name, measured, missed, margin, reason", [
    (Budgets(latency_ms={"p90": 1.0}), "latency_p90", 1.2, True, 0.2, "latency p90 1.20 ms > 1.00 ms (by 0.20 ms)"),
    (Budgets(latency_ms={"mean": 1.0}), "latency_mean", 0.9, False, -0.1, ""),
    (Budgets(size_mb=0.25), "size", 0.5, True, 0.25, "size 0.50 MiB > 0.25 MiB (by 0.25 MiB)"),
    (Budgets(download_mb=0.5), "download", 0.25, False, -0.25, ""),
    (Budgets(download_mb=0.2), "download", 0.25, True, 0.05, "download 0.250 MiB > 0.200 MiB (by 0.050 MiB)"),
    (Budgets(peak_memory_mb=50.0), "peak_memory", 60.0, True, 10.0, "peak memory 60.0 MiB > 50.0 MiB (by 10.0 MiB)"),
    (Budgets(min_accuracy=0.92), "accuracy", 0.9, True, 0.9 - 0.92, "accuracy 90.00% < 92.00% (by 2.00 pt)"),
    (Budgets(min_accuracy=0.88), "accuracy", 0.9, False, 0.9 - 0.88, ""),
    (Budgets(max_drop=2.0), "accuracy_drop", 100 * (0.93 - 0.9), True, 100 * (0.93 - 0.9) - 2.0,
     "accuracy drop 3.00 pt > 2.00 pt vs teacher 93.00% (by 1.00 pt)"),
    (Budgets(max_ece=0.03), "ece", 0.04, True, 0.04 - 0.03, "ECE 0.040 > 0.030 (by 0.010)"),
    (Budgets(max_nll=0.35), "nll", 0.3, False, 0.3 - 0.35, ""),
])
def test_each_budget_kind(budgets: Budgets, name: str, measured: float, missed: bool, margin: float,
                          reason: str) -> None:
    (row,) = judge(M, budgets)
    assert row.budget.name == name and row.measured == measured and row.missed is missed
    assert row.margin == pytest.approx(margin) and row.reason == reason
    assert (row.overshoot > 0) is missed  # outside the budget, by a positive relative amount


def test_every_budget_is_in_the_table_once() -> None:
    """A Budgets field without a row would never be judged; a row without a field could never bind."""
    fields = {f for f in Budgets.__dataclass_fields__ if f != "latency_ms"}
    assert sorted(b.field for b in TABLE) == sorted(fields)
    assert list(LATENCY) == list(LATENCY_KEYS) and len(BY_NAME) == len(TABLE) + len(LATENCY_KEYS)
    assert {b.kind for b in BY_NAME.values()} == {CEILING, FLOOR} and BY_NAME["accuracy"].kind == FLOOR


def test_rows_come_latency_first_in_the_profile_order_then_the_table_order() -> None:
    b = Budgets(latency_ms={"p99": 5.0, "p50": 1.0}, max_nll=1.0, size_mb=1.0, min_accuracy=0.5)
    assert [r.budget.name for r in judge(M, b)] == ["latency_p99", "latency_p50", "size", "accuracy", "nll"]
    # Before the device has run it, only what is known without the device is judged.
    b = Budgets(latency_ms={"p50": 1.0}, peak_memory_mb=10.0, size_mb=1.0)
    assert [r.budget.name for r in judge(M, b, device=False)] == ["size"]


def test_floors_and_ceilings_at_their_limit_fit_and_unmeasured_misses() -> None:
    exact = Measurement(latency_ms={"p90": 1.0}, size_bytes=MIB, accuracy=0.91, reference_accuracy=0.93,
                        ece=0.02, nll=0.3, peak_memory_mb=50.0, download_bytes=MIB)
    b = Budgets(latency_ms={"p90": 1.0}, size_mb=1.0, download_mb=1.0, peak_memory_mb=50.0, min_accuracy=0.91,
                max_drop=2.0, max_ece=0.02, max_nll=0.3)
    rows = judge(exact, b)
    # The drop is 2.0000000000000018 in floats: float noise never misses a budget.
    assert not any(r.missed for r in rows) and rows[5].measured > 2.0
    nothing = judge(Measurement(), b)
    assert all(r.missed and r.measured is None and r.margin is None and r.overshoot == 0 for r in nothing)
    assert [r.reason for r in nothing] == [
        "latency p90 not measured", "size not measured",
        "download size unknown (no package; re-run the candidates stage)", "peak memory not measured",
        "accuracy not measured", "accuracy drop not measured", "ECE not measured", "NLL not measured"]
    nan = judge(Measurement(ece=float("nan")), Budgets(max_ece=0.1))[0]
    assert nan.missed  # a NaN is not inside any budget


def test_overshoot_is_relative_and_the_drop_counts_points() -> None:
    b = Budgets(latency_ms={"p90": 1.0}, min_accuracy=0.95, max_drop=0.5)
    lat, acc, drop = judge(M, b)
    assert lat.overshoot == pytest.approx(0.2) and acc.overshoot == pytest.approx(1 - 0.9 / 0.95)
    assert drop.overshoot == pytest.approx(3.0 - 0.5)  # over a budget under one point: per point, not x6
    assert judge(M, Budgets(min_accuracy=0.0))[0].overshoot == 0.0


def test_margins_read_in_the_rows_unit() -> None:
    rows = judge(M, Budgets(latency_ms={"p50": 1.0}, size_mb=1.0, min_accuracy=0.88, max_drop=5.0, max_ece=0.05))
    assert [margin_text(r) for r in rows] == ["-0.2 ms", "-0.5 MB", "+2.00 pt", "-2 pt", "-0.01"]
    assert margin_text(judge(Measurement(), Budgets(size_mb=1.0))[0]) == "n/a"


def test_rows_read_back_as_written() -> None:
    for row in judge(M, Budgets(latency_ms={"p50": 1.0}, size_mb=0.25, max_drop=2.0, max_nll=0.1)):
        again = BudgetRow.from_json(json.loads(json.dumps(row.to_json())), M.reference_accuracy)
        assert again == row and again.reason == row.reason
    with pytest.raises(EdgeCompressError, match="not a budget row of a check result"):
        BudgetRow.from_json({"name": "sustained", "budget": 1.0, "measured": 1.0, "ok": True})


@pytest.mark.parametrize("path", sorted((ROOT / "metrics" / "check").glob("*.json")), ids=lambda p: p.stem)
def test_a_real_check_result_round_trips_byte_for_byte(path: Path) -> None:
    """metrics/check/<target>.json as the pipeline wrote it: read into a CheckResult, written back the same."""
    text = path.read_text()
    result = CheckResult.from_json(json.loads(text), str(path))
    assert json.dumps(result.to_json(), indent=2) + "\n" == text
    assert result.failed == (result.status == "fail" or (result.strict and result.status == "proxy-fail"))


def test_a_check_result_of_another_shape_is_one_line() -> None:
    with pytest.raises(EdgeCompressError, match=r"^x\.json: not a check result \(no '\w+'\); re-run the check stage$"):
        CheckResult.from_json({"target": "t", "description": "", "device": "local", "remote": None,
                               "artifact": {"path": None, "format": "onnx", "precision": "int8", "size_bytes": 1,
                                            "package_bytes": None}}, "x.json")
