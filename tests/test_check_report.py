"""The check report on synthetic check results: accuracy and latency with intervals, met / MISSED /
UNDECIDED per budget, conditions and rounds, the sustained section, and an older result still renders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgecompress.deploy.budgets import Measurement, judge
from edgecompress.deploy.check import CheckedArtifact, CheckResult
from edgecompress.deploy.check_report import conditions_text, failure, missed_text, render_markdown
from edgecompress.deploy.stats import MET, MISSED, UNDECIDED, Interval, wilson
from edgecompress.deploy.targets import Budgets

CIS = {"p50": Interval(0.412, 0.398, 0.431, 500), "p90": Interval(0.47, 0.455, 0.49, 500),
       "p99": Interval(0.61, 0.55, 0.72, 500)}
LAT = {"p50": 0.412, "p90": 0.47, "p99": 0.61, "mean": 0.43, "max": 0.9, "n": 500}
COND = {"start": {"loadavg": [0.52, 0.4, 0.3], "cpu_mhz": {"min": 2400.0, "max": 2400.0, "mean": 2400.0},
                  "governor": "schedutil", "thermal_c": {"cpu": 41.0}},
        "end": {"loadavg": [1.8, 0.6, 0.35], "cpu_mhz": {"min": 1800.0, "max": 2400.0, "mean": 2100.0},
                "governor": "powersave", "thermal_c": {"cpu": 58.5}}}
SUSTAINED = {"seconds": 6.0, "tail_intervals": 2, "drift_p50": 1.25, "drift_p90": 1.5,
             "intervals": [{"t0": 2.0 * i, "t1": 2.0 * i + 2, "n": 100, "p50": 0.4 + 0.05 * i, "p90": 0.5 + 0.125 * i}
                           for i in range(3)]}
# p50 met (0.431 <= 0.5), p90 missed (0.455 > 0.45), p99 undecided (0.55-0.72 straddles 0.6).
BUDGETS = Budgets(latency_ms={"p50": 0.5, "p90": 0.45, "p99": 0.6}, min_accuracy=0.9)


def _result(new: bool = True) -> CheckResult:
    m = Measurement(latency_ms=LAT, accuracy=0.9379, latency_ci=CIS if new else {}, accuracy_n=10_000 if new else None)
    rows = judge(m, BUDGETS)
    extra: dict[str, Any] = {}
    if new:
        extra = {"latency_ci": {k: v.to_json() for k, v in CIS.items()},
                 "accuracy_ci": wilson(0.9379, 10_000).to_json(), "conditions": COND, "sustained": SUSTAINED,
                 "rounds": "rounds disagree: round medians 0.41-0.63 ms, beyond their own 95% intervals (load "
                           "changed during the measurement)"}
    res = CheckResult(target="pi", artifact=CheckedArtifact("int8.tflite", "tflite", "int8", 70_000, None),
                      status="fail", latency_ms=LAT, accuracy=0.9379, accuracy_samples=10_000, budgets=rows,
                      bench={"batch": 1}, failed=True, **extra)
    return CheckResult.from_json(json.loads(json.dumps(res.to_json())))  # as read back from its JSON


def _cells(md: str, label: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_the_judge_gives_the_three_verdicts_the_report_shows() -> None:
    assert [r.verdict for r in _result().budgets] == [MET, MISSED, UNDECIDED, MET]


def test_accuracy_and_latency_carry_their_intervals_and_counts() -> None:
    md = render_markdown(_result())
    ci = wilson(0.9379, 10_000)
    assert f"- accuracy: 93.79% [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}] (95% Wilson) on 10000 test images" in md
    assert ("- latency (batch 1, n=500, 95% intervals): p50 0.412 [0.398, 0.431] ms, p90 0.470 [0.455, 0.490] ms, "
            "p99 0.610 [0.550, 0.720] ms, mean 0.430 ms, max 0.900 ms") in md


def test_budget_table_shows_interval_and_met_missed_undecided() -> None:
    md = render_markdown(_result())
    assert "| budget | limit | measured | 95% interval | margin | result |" in md
    p50, p90, p99 = (_cells(md, f"{k} latency") for k in ("p50", "p90", "p99"))
    assert p50[3] == "[0.398, 0.431] ms (95%, 500 runs)" and p50[5] == "met"
    assert p90[5] == "**MISSED**"
    assert p99[5] == "**UNDECIDED (counted as missed)**"
    acc = _cells(md, "accuracy")
    assert acc[3].endswith("(95%, 10000 images)") and acc[5] == "met"
    assert "the check counts it as missed (the conservative rule)" in md


def test_missed_text_gives_both_ends_of_an_undecided_row() -> None:
    res = _result()
    text = missed_text(res.budgets)
    assert text == ("p90 latency 0.470 ms > 0.450 ms (+0.02 ms), p99 latency undecided: [0.550, 0.720] ms straddles "
                    "0.600 ms (95%, 500 runs; counted as missed)")
    assert str(failure(res, "r.md")) == f"target pi missed budget(s): {text}; see r.md"


def test_conditions_and_rounds_sit_beside_the_latency() -> None:
    lines = render_markdown(_result()).splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("- latency"))
    assert lines[at + 1] == ("  - conditions (start -> end): load average (1 min) 0.52 -> 1.80, CPU 2400 MHz -> "
                             "2100 MHz (1800-2400), governor schedutil -> powersave, hottest thermal zone cpu 41.0 -> "
                             "58.5 °C")
    assert lines[at + 2].startswith("  - rounds: **rounds disagree: round medians 0.41-0.63 ms")
    quiet = {"loadavg": None, "cpu_mhz": None, "governor": None, "thermal_c": None}
    assert conditions_text({"start": quiet, "end": quiet}).startswith("not exposed by this OS")


def test_sustained_section_has_intervals_drift_and_bars() -> None:
    md = render_markdown(_result())
    sec = md[md.index("## Sustained"):md.index("## Where it ran")]
    assert "6 s of continuous runs in 3 intervals; drift (last interval / first): p50 x1.250, p90 x1.500." in sec
    assert "judged on the last 2 interval(s) (marked *)" in sec
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in sec.splitlines()
            if ln.startswith("| ") and not ln.startswith("| interval")]
    assert [r[:5] for r in rows] == [["1", "0.0-2.0", "100", "0.400", "0.500"],
                                     ["2 *", "2.0-4.0", "100", "0.450", "0.625"],
                                     ["3 *", "4.0-6.0", "100", "0.500", "0.750"]]
    # The bars grow with p90, scaled from zero: 0.5 / 0.75 of the longest.
    assert [len(r[5]) for r in rows] == [27, 33, 40] and set(rows[0][5]) == {"█"}


def test_an_older_result_without_intervals_still_renders() -> None:
    md = render_markdown(_result(new=False))
    assert "## Sustained" not in md and "conditions" not in md and "rounds" not in md
    assert "- latency (batch 1, n=500, no intervals: the runner sent no samples): p50 0.412 ms, p90 0.470 ms" in md
    assert _cells(md, "p50 latency")[3] == "n/a" and _cells(md, "p90 latency")[5] == "**MISSED**"
    assert "UNDECIDED" not in md  # a point estimate is met or missed
    # Its accuracy still gets the Wilson interval of its image count.
    assert f"- accuracy: 93.79% [{100 * wilson(0.9379, 10_000).lo:.2f}," in md


@pytest.mark.parametrize("sustained", [{"seconds": 4.0, "intervals": [], "tail_intervals": None},
                                       {"seconds": 4.0, "intervals": [{"t0": 0.0, "t1": 4.0, "n": 3, "p50": None,
                                                                       "p90": None}], "drift_p50": None}])
def test_a_sparse_sustained_run_still_renders(sustained: dict[str, Any]) -> None:
    res = CheckResult.from_json({**_result().to_json(), "sustained": sustained})
    sec = render_markdown(res)
    assert "## Sustained" in sec and "drift (last interval / first): n/a" in sec
