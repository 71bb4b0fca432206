"""Choosing a target's build: the most accurate candidate that meets every budget, or a pointed error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecompress.deploy.choose import (BuildSpec, Candidate, Choice, NoFeasibleCandidate, Rejection, allowed, choose,
                                        misses, ranked_for_search)
from edgecompress.deploy.stats import Interval
from edgecompress.deploy.targets import Budgets, load_target
from edgecompress.errors import EdgeCompressError

MIB = 2**20


def cand(name: str, accuracy: float, p90: float | None = 1.0, *, model: str = "student", precision: str = "int8",
         engine: str = "litert", size_mb: float = 0.25, p50: float | None = None, ece: float | None = 0.02,
         nll: float | None = 0.3, mem: float | None = 50.0, uncertainty: bool = False,
         download_mb: float | None = None) -> Candidate:
    latency = {k: v for k, v in (("p50", p50 if p50 is not None else p90), ("p90", p90)) if v is not None}
    return Candidate(name=name, model=model, precision=precision, engine=engine, size_bytes=int(size_mb * MIB),
                     accuracy=accuracy, ece=ece, nll=nll, latency_ms=latency, peak_memory_mb=mem,
                     uncertainty=uncertainty, download_bytes=None if download_mb is None else int(download_mb * MIB))


ALL = BuildSpec()


@pytest.mark.parametrize("budgets, candidate, reference, expected", [
    (Budgets(latency_ms={"p90": 1.0}), cand("a", 0.9, p90=2.1), None, ["latency p90 2.10 ms > 1.00 ms (by 1.10 ms)"]),
    (Budgets(size_mb=0.5), cand("a", 0.9, size_mb=1.2), None, ["size 1.20 MiB > 0.50 MiB (by 0.70 MiB)"]),
    (Budgets(peak_memory_mb=40.0), cand("a", 0.9, mem=60.0), None, ["peak memory 60.0 MiB > 40.0 MiB (by 20.0 MiB)"]),
    (Budgets(download_mb=0.05), cand("a", 0.9, download_mb=0.0625), None,
     ["download 0.062 MiB > 0.050 MiB (by 0.012 MiB)"]),
    (Budgets(download_mb=0.05), cand("a", 0.9), None, ["download size unknown (no package; re-run the candidates stage)"]),
    (Budgets(download_mb=0.05, size_mb=1.0), cand("a", 0.9, size_mb=0.25, download_mb=0.04), None, []),
    (Budgets(min_accuracy=0.91), cand("a", 0.901), None, ["accuracy 90.10% < 91.00% (by 0.90 pt)"]),
    (Budgets(max_drop=2.0), cand("a", 0.90), 0.93, ["accuracy drop 3.00 pt > 2.00 pt vs teacher 93.00% (by 1.00 pt)"]),
    (Budgets(max_ece=0.03), cand("a", 0.9, ece=0.041), None, ["ECE 0.041 > 0.030 (by 0.011)"]),
    (Budgets(max_nll=0.35), cand("a", 0.9, nll=0.412), None, ["NLL 0.412 nats > 0.350 nats (by 0.062 nats)"]),
    (Budgets(latency_ms={"p99": 5.0}), cand("a", 0.9), None, ["latency p99 not measured"]),
    (Budgets(max_ece=0.03, max_nll=0.4, peak_memory_mb=10.0), cand("a", 0.9, ece=None, nll=None, mem=None), None,
     ["peak memory not measured", "ECE not measured", "NLL not measured"]),
    # Each budget exactly met: no miss, including the drop whose float difference is 2.0000000000000018.
    (Budgets(latency_ms={"p90": 1.0}, size_mb=0.25, min_accuracy=0.91, max_drop=2.0, max_ece=0.02, max_nll=0.3,
             peak_memory_mb=50.0), cand("a", 0.91), 0.93, []),
])
def test_misses_each_budget(budgets: Budgets, candidate: Candidate, reference: float | None,
                            expected: list[str]) -> None:
    assert misses(candidate, budgets, reference) == expected


def test_max_drop_without_reference_is_an_error() -> None:
    with pytest.raises(EdgeCompressError, match="budgets.max_drop compares with the teacher"):
        misses(cand("a", 0.9), Budgets(max_drop=1.0), None)
    with pytest.raises(EdgeCompressError, match="budgets.max_drop compares with the teacher"):
        choose([cand("a", 0.9)], Budgets(max_drop=1.0), ALL)


def test_most_accurate_feasible_wins_over_a_more_accurate_infeasible_one() -> None:
    table = [cand("fast", 0.88, p90=0.5), cand("best-but-slow", 0.95, p90=3.0), cand("good", 0.91, p90=0.9),
             cand("too-big", 0.93, p90=0.2, size_mb=2.0)]
    choice = choose(table, Budgets(latency_ms={"p90": 1.0}, size_mb=1.0), ALL, target="pi")
    assert isinstance(choice, Choice)
    assert choice.chosen.name == "good"
    assert [c.name for c in choice.feasible] == ["good", "fast"]
    assert choice.rejected == (Rejection("best-but-slow", ("latency p90 3.00 ms > 1.00 ms (by 2.00 ms)",)),
                               Rejection("too-big", ("size 2.00 MiB > 1.00 MiB (by 1.00 MiB)",)))


def ci(point: float, half: float, n: int = 200) -> Interval:
    return Interval(point, point - half, point + half, n)


def test_an_accuracy_tie_is_never_broken_by_a_point_latency() -> None:
    # Equal accuracy, no intervals: which timing came out lower is noise, so fewer bytes then the name decide.
    table = [cand("slow", 0.9, p90=0.8, size_mb=0.2), cand("quick", 0.9, p90=0.4), cand("worse", 0.89, p90=0.1)]
    choice = choose(table, Budgets(latency_ms={"p90": 1.0}), ALL)
    assert choice.chosen.name == "slow" and choice.tied == ("quick",) and "fewer bytes" in choice.why
    table = [cand("z", 0.9), cand("y", 0.9)]
    assert choose(table, Budgets(size_mb=1.0), ALL).chosen.name == "y"


def test_tied_candidates_go_to_the_clearly_faster_only_when_the_intervals_are_apart() -> None:
    big_fast = replace(cand("big", 0.9, size_mb=0.5), latency_ci={"p90": ci(0.30, 0.01)})
    small_slow = replace(cand("small", 0.9, size_mb=0.1), latency_ci={"p90": ci(0.50, 0.01)})
    choice = choose([small_slow, big_fast], Budgets(latency_ms={"p90": 1.0}), ALL)
    assert choice.chosen.name == "big" and "clearly faster" in choice.why
    # 0.30 [0.29, 0.31] vs 0.33 [0.32, 0.34]: apart, but by less than SEPARATION: a tie, fewer bytes wins.
    near = replace(small_slow, latency_ci={"p90": ci(0.33, 0.01)})
    assert choose([near, big_fast], Budgets(latency_ms={"p90": 1.0}), ALL).chosen.name == "small"
    # The host's teacher fp16 against int8 ONNX: 0.42 against 0.48 ms, apart by 1.14x, which builds from an
    # empty cache did not reproduce (9 of 10): a tie too.
    host = replace(small_slow, latency_ci={"p90": ci(0.48, 0.005)})
    assert choose([host, replace(big_fast, latency_ci={"p90": ci(0.42, 0.005)})],
                  Budgets(latency_ms={"p90": 1.0}), ALL).chosen.name == "small"


def test_within_validation_noise_is_a_tie_and_beyond_it_accuracy_wins() -> None:
    # 4000 validation images: the Wilson half-width at 90% is about 0.93 pt.
    best = replace(cand("best", 0.900, size_mb=0.5), accuracy_n=4000)
    close = replace(cand("close", 0.895, size_mb=0.1), accuracy_n=4000)
    far = replace(cand("far", 0.880, size_mb=0.05), accuracy_n=4000)
    choice = choose([best, close, far], Budgets(size_mb=1.0), ALL)
    assert choice.chosen.name == "close" and choice.tied == ("best",)
    assert "4000 images" in choice.why
    assert choose([best, far], Budgets(size_mb=1.0), ALL).chosen.name == "best"
    # Another network within the same noise is not a tie: networks are ranked by their (fixed) accuracies.
    other = replace(close, name="other", model="teacher")
    assert choose([best, other], Budgets(size_mb=1.0), ALL).chosen.name == "best"


def test_requires_uncertainty_keeps_only_uncertainty_candidates() -> None:
    table = [cand("student", 0.93), cand("ensemble", 0.92, model="ensemble", uncertainty=True)]
    choice = choose(table, Budgets(size_mb=1.0), BuildSpec(requires=("uncertainty",)))
    assert choice.chosen.name == "ensemble"
    assert choice.rejected == (Rejection("student", ("requires uncertainty: no heads or members",)),)


def test_spec_filters_models_precisions_engines_with_reasons() -> None:
    table = [cand("teacher/fp32.onnx", 0.95, model="teacher", precision="fp32", engine="onnxruntime"),
             cand("student/fp16.tflite", 0.92, precision="fp16"),
             cand("student/int8.onnx", 0.91, engine="onnxruntime"),
             cand("student/int8.tflite", 0.90)]
    spec = BuildSpec(models=("student",), precisions=("int8",), engines=("litert",))
    kept, rejected = allowed(table, spec)
    assert [c.name for c in kept] == ["student/int8.tflite"]
    assert {r.name: r.reasons for r in rejected} == {
        "teacher/fp32.onnx": ("model teacher not allowed by build.models",
                              "precision fp32 not allowed by build.precisions",
                              "engine onnxruntime not allowed by build.engines"),
        "student/fp16.tflite": ("precision fp16 not allowed by build.precisions",),
        "student/int8.onnx": ("engine onnxruntime not allowed by build.engines",)}
    choice = choose(table, Budgets(size_mb=1.0), spec)
    assert choice.chosen.name == "student/int8.tflite"
    assert [r.name for r in choice.rejected] == ["teacher/fp32.onnx", "student/fp16.tflite", "student/int8.onnx"]


def test_unmeasured_latency_is_not_feasible() -> None:
    table = [cand("unmeasured", 0.95, p90=None, p50=0.3), cand("measured", 0.90, p90=0.9)]
    choice = choose(table, Budgets(latency_ms={"p90": 1.0}), ALL)
    assert choice.chosen.name == "measured"
    assert choice.rejected == (Rejection("unmeasured", ("latency p90 not measured",)),)


def test_infeasible_error_names_target_and_nearest_with_amounts() -> None:
    table = [cand(f"c{i}", 0.80 + i / 100, p90=2.0 + i) for i in range(7)]
    table.append(cand("two-misses", 0.99, p90=9.0, size_mb=3.0))
    with pytest.raises(NoFeasibleCandidate) as info:
        choose(table, Budgets(latency_ms={"p90": 1.5}, size_mb=1.0), ALL, target="raspberry-pi")
    text = str(info.value)
    assert text.startswith("target raspberry-pi: no candidate meets every budget (8 checked, 0 excluded")
    rows = text.splitlines()[2:]
    # Nearest first, by how far each misses (issue #26 item 11): c0 .. c4 (c5, c6 and two-misses are left out).
    assert [r.split()[0] for r in rows] == ["c0", "c1", "c2", "c3", "c4"]
    assert "80.00%" in rows[0] and "latency p90 2.00 ms > 1.50 ms (by 0.50 ms)" in rows[0]
    assert "two-misses" not in text and "c5 " not in text
    assert isinstance(info.value, EdgeCompressError)


def test_infeasible_error_lists_every_miss_of_a_candidate() -> None:
    with pytest.raises(NoFeasibleCandidate, match=r"(?s)only.*91\.00%.*size 3\.00 MiB > 1\.00 MiB \(by 2\.00 MiB\); "
                                                  r"ECE 0\.050 > 0\.030 \(by 0\.020\)"):
        choose([cand("only", 0.91, size_mb=3.0, ece=0.05)], Budgets(size_mb=1.0, max_ece=0.03), ALL, target="phone")


@pytest.mark.parametrize("table, why", [
    ([], "no candidates were given"),
    ([cand("t", 0.9, model="teacher")], "all 1 candidate\\(s\\) are excluded by the build spec"),
])
def test_nothing_to_choose_from(table: list[Candidate], why: str) -> None:
    with pytest.raises(NoFeasibleCandidate, match=f"target pi: nothing to choose from: {why}; check build.models"):
        choose(table, Budgets(size_mb=1.0), BuildSpec(models=("student",)), target="pi")


def test_ranked_for_search_by_accuracy_then_size() -> None:
    table = [cand("small", 0.9, size_mb=0.1), cand("top", 0.95, size_mb=4.0), cand("big", 0.9, size_mb=1.0)]
    assert [c.name for c in ranked_for_search(table)] == ["top", "small", "big"]


def test_duplicate_candidate_names_are_an_error() -> None:
    with pytest.raises(EdgeCompressError, match="candidate 'a' is listed twice"):
        allowed([cand("a", 0.9), cand("a", 0.8)], ALL)


@pytest.mark.parametrize("kwargs, match", [
    ({"precisions": ("int4",)}, r"field build\.precisions: 'int4' is not one of int8, fp16, fp32"),
    ({"precisions": ()}, r"field build\.precisions: \(\) must be a list"),
    ({"engines": ("tensorrt",)}, r"field build\.engines: 'tensorrt' is not one of onnxruntime, litert"),
    ({"requires": ("speed",)}, r"field build\.requires: 'speed' is not one of uncertainty"),
    ({"models": "student"}, r"field build\.models: 'student' must be 'all' or a non-empty list"),
    ({"objective": "latency"}, r"field build\.objective: 'latency' is not supported; the only objective is accuracy"),
])
def test_build_spec_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        BuildSpec(**kwargs)


def test_build_spec_accepts_yaml_lists() -> None:
    spec = BuildSpec(models=["student"], precisions=["int8"], requires=["uncertainty"])  # type: ignore[arg-type]
    assert (spec.models, spec.precisions, spec.requires) == (("student",), ("int8",), ("uncertainty",))


@pytest.mark.parametrize("kwargs, match", [
    ({"max_ece": -0.01}, r"field max_ece: -0\.01 must be a fraction between 0 and 1 \(e\.g\. 0\.03\)"),
    ({"max_ece": 1.5}, r"field max_ece: 1\.5 must be a fraction between 0 and 1"),
    ({"max_nll": 0}, r"field max_nll: 0 must be a finite number of nats > 0 \(e\.g\. 0\.35\)"),
    ({"max_nll": float("inf")}, r"field max_nll: inf must be a finite number"),
    ({}, r"no budget is set; .*max_ece, max_nll"),
])
def test_budget_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        Budgets(**kwargs)


def test_candidate_errors() -> None:
    with pytest.raises(EdgeCompressError, match=r"candidate 'x': precision 'dynamic' is not one of int8"):
        replace(cand("x", 0.9), precision="dynamic")
    with pytest.raises(EdgeCompressError, match=r"candidate 'x': accuracy 91\.0 must be a fraction"):
        cand("x", 91.0)
    with pytest.raises(EdgeCompressError, match=r"candidate 'x': latency_ms p95"):
        replace(cand("x", 0.9), latency_ms={"p95": 1.0})
    with pytest.raises(EdgeCompressError, match=r"candidate 'x': download_bytes -1 must be an integer >= 0"):
        replace(cand("x", 0.9), download_bytes=-1)


PROFILE = """\
name: t
artifact: {format: tflite, precision: int8}
runtime: {engine: litert}
budgets:
"""


def test_profile_with_calibration_budgets_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(PROFILE + "  max_ece: 0.03\n  max_nll: 0.35\n")
    b = load_target(path).budgets
    assert (b.max_ece, b.max_nll, b.min_accuracy, b.latency_ms) == (0.03, 0.35, None, {})
    path.write_text(PROFILE + "  max_ece: 2\n")
    with pytest.raises(EdgeCompressError, match=r"t\.yaml: field budgets\.max_ece: 2 must be a fraction"):
        load_target(path)


def test_a_download_budget_ships_the_clustered_copy_the_file_size_alone_would_not_choose() -> None:
    """size_mb counts what the runtime loads; download_mb the package a device fetches over the air."""
    table = [cand("student/int8.tflite", 0.92, size_mb=0.10, download_mb=0.07),
             cand("student-c4/int8.tflite", 0.915, model="student-c4", size_mb=0.10, download_mb=0.03)]
    assert choose(table, Budgets(size_mb=0.125), ALL).chosen.model == "student"
    chosen = choose(table, Budgets(size_mb=0.125, download_mb=0.05), ALL)
    assert chosen.chosen.model == "student-c4"
    why = {r.name: r.reasons for r in chosen.rejected}
    assert why["student/int8.tflite"] == ("download 0.070 MiB > 0.050 MiB (by 0.020 MiB)",)
