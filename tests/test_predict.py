"""The latency model in the build (#30 items 3-4): a prior cache's fit skips a candidate predicted far over a tiny
latency budget, the build ships what it ships without prediction, the record and report say so, and the report's
frontier marks the choice and the Pareto points. Real exports, real runner measurements on this machine: a wide
ResNet (tens of millions of MACs) against the tiny student, timed on batches of 16 images so that the wide one's
compute, not the per-call overhead, sets its latency: the two are over an order of magnitude apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig
from edgecompress.compression.pool import PoolModel, build_pool
from edgecompress.data import Dataset
from edgecompress.deploy.build import MeasurementCache, build_target
from edgecompress.deploy.build_report import render_markdown
from edgecompress.deploy.frontier import pareto
from edgecompress.deploy.latency_model import fit, load_observations
from edgecompress.deploy.latency_features import FeatureCache
from edgecompress.deploy.predict import FEATURES_DIR
from edgecompress.deploy.targets import TargetProfile, load_target
from edgecompress.models import ResNetTeacher
from edgecompress.records import BuildRecord, read_build_record
from tests.test_build import _meta, _trained, pool_inputs  # noqa: F401 (fixture)
from tests.test_records import build_record_json

BUILD = "{models: all, precisions: [fp32], engines: [onnxruntime]}"


@pytest.fixture(scope="module")
def wide_pool(tmp_path_factory: pytest.TempPathFactory, pool_inputs: tuple[list[PoolModel], Dataset, np.ndarray]) -> Path:
    """A wide ResNet (the reference, more accurate) and the tiny student, fp32 ONNX."""
    models, ds, calib = pool_inputs
    wide = _trained(ResNetTeacher(1, 4, widths=[96, 192], blocks=[1, 1], stem=16), ds, 3)
    out = tmp_path_factory.mktemp("wide") / "candidates"
    build_pool([PoolModel("teacher", wide, _meta(ds, "w"), "teacher.pt"), models[2]], ds, calib,
               CalibrationConfig(val_samples=16, max_drop=None), ExportConfig(formats=("fp32.onnx",)), out)
    return out


def _profile(tmp_path: Path, name: str, runs: int, budgets: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{arch: any}}\nbuild: {BUILD}\nruntime: {{threads: 1}}\n"
                    f"bench: {{warmup: 2, runs: {runs}, batch: 16, max_seconds: 5}}\nbudgets: {budgets}\n")
    return path


@pytest.fixture(scope="module")
def prior(wide_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """A cache measured by another profile (other bench settings: other cache keys, the same device key), and the
    p50s it holds: the student's and the wide network's."""
    tmp = tmp_path_factory.mktemp("prior")
    cache = tmp / "cache"
    rec = build_target(load_target(_profile(tmp, "prior", 8, "{min_accuracy: 0.1}")), wide_pool, tmp / "out",
                       MeasurementCache(cache), exhaustive=True)
    p50 = {c.model: c.latency_ms["p50"] for c in rec.candidates}
    return cache, p50["student"], p50["teacher"]


def _built_both_ways(cache: Path, budget: float, wide_pool: Path,
                     tmp_path: Path) -> tuple[dict[bool, BuildRecord], TargetProfile]:
    """The same build with and without prediction, each from its own copy of the prior ``cache``."""
    profile = load_target(_profile(tmp_path, "t", 9, f"{{latency_ms: {{p50: {budget}}}, min_accuracy: 0.1}}"))
    records = {}
    for predict in (True, False):
        copy = tmp_path / f"cache-{predict}"
        shutil.copytree(cache, copy)
        records[predict] = build_target(profile, wide_pool, tmp_path / f"out-{predict}", MeasurementCache(copy),
                                        predict=predict)
    return records, profile


def test_a_predicted_over_candidate_is_not_measured_and_the_choice_is_the_same(
        wide_pool: Path, prior: tuple[Path, float, float], tmp_path: Path) -> None:
    cache, student, wide = prior
    assert wide > 30 * student  # the premise: over an order of magnitude apart on this machine
    # Halfway (in log) between the student and the low end of the wide one's band (2 points: x/4 either way):
    # the student fits with room for noise, the wide one's whole band is over it.
    budget = round(float(np.sqrt(student * wide / 4.06)), 6)
    obs, _ = load_observations(cache, FeatureCache(cache / FEATURES_DIR))
    model = fit(obs)
    assert len(obs) == 2 and len(model.groups) == 1
    records, profile = _built_both_ways(cache, budget, wide_pool, tmp_path)
    for predict, record in records.items():
        (tmp_path / f"out-{predict}.md").write_text(render_markdown(record, profile.budgets))
    on, off = records[True], records[False]
    assert on.chosen.name == off.chosen.name == "student/fp32.onnx" and on.status == off.status == "built"
    assert (on.search.device_runs, on.search.cache_hits, on.search.predicted_skips) == (1, 0, 1)
    assert (off.search.device_runs, off.search.predicted_skips, off.search.model_error) == (2, None, None)
    rows = {c.name: c for c in on.candidates}
    wide_row, chosen = rows["teacher/fp32.onnx"], rows["student/fp32.onnx"]
    assert wide_row.measured == "not measured" and wide_row.fate == "rejected" and wide_row.latency_ms is None
    assert wide_row.why[0].startswith("predicted over budget: p50 ") and f"> {budget:g} ms" in wide_row.why[0]
    assert wide_row.predicted_ms["lo"] > budget > chosen.latency_ms["p50"]
    assert chosen.measured == "device"  # the prediction never decides a ship
    # Without prediction the wide one was measured and missed the budget for real: the same verdict.
    assert any(w.startswith("latency p50 ") for w in {c.name: c for c in off.candidates}["teacher/fp32.onnx"].why), \
        {c.name: c for c in off.candidates}["teacher/fp32.onnx"].why
    assert on.search.prediction.startswith("on: fitted on") and off.search.prediction.startswith("off (--no-predict)")
    # Both the prior's and this build's measurement of the student: 2 networks, one held out.
    assert on.search.model_error is not None and on.search.model_error["n"] == 1
    md = (tmp_path / "out-True.md").read_text()
    assert "predicted over budget: p50" in md and "1 not measured: predicted over a latency budget" in md
    assert f"held-out error {100 * on.search.model_error['mdape']:.1f}% median absolute error of p50 on 1" in md
    assert "| predicted p50 ms [band] |" in md
    off_md = (tmp_path / "out-False.md").read_text()
    assert "- latency model: off (--no-predict)" in off_md and "predicted p50" not in off_md
    # The record on disk reads back with the new fields.
    back = read_build_record(tmp_path / "out-True")
    assert back == on and back.candidates[0].predicted_ms is not None
    # The frontier: smallest first, the budget line, the chosen marked, Pareto points starred.
    front = md.split("## Frontier")[1].split("## Every candidate")[0]
    lines = [ln for ln in front.splitlines() if ln.startswith("| ")][1:]  # after the header
    assert lines[0].startswith("| **`student/fp32.onnx` (chosen)** |") and lines[0].count("★") == 2
    assert lines[1].startswith("| `teacher/fp32.onnx` |") and "| ~" in lines[1] and lines[1].count("★") == 2
    assert f"latency p50 {budget:g} ms" in front
    # More than 0.5 pt below the reference: one line says what reaching it would take.
    assert "**Goal missed**" in front and "`teacher/fp32.onnx`, the smallest within 0.5 pt" in front


def test_when_nothing_measured_fits_the_predicted_over_ones_are_measured_after_all(
        wide_pool: Path, prior: tuple[Path, float, float], tmp_path: Path) -> None:
    cache, student, _ = prior
    budget = round(student / 100, 6)  # both predicted far over: nothing would be measured
    records, _ = _built_both_ways(cache, budget, wide_pool, tmp_path)
    on, off = records[True], records[False]
    assert on.status == off.status == "infeasible" and on.chosen.name == off.chosen.name
    assert on.search.device_runs == off.search.device_runs == 2 and on.search.predicted_skips == 0
    assert "measured after all" in on.search.prediction
    assert all(c.measured == "device" for c in on.candidates)


def test_no_prediction_on_an_emulated_device(tmp_path: Path) -> None:
    from edgecompress.deploy.devices import resolve_device
    from edgecompress.deploy.predict import why_not

    profile = load_target(_profile(tmp_path, "t", 9, "{latency_ms: {p50: 1.0}}"))
    assert why_not(profile, resolve_device(profile.device, None), True) is None
    assert why_not(profile, resolve_device(profile.device, None), False).startswith("off (--no-predict)")
    assert "emulated" in why_not(profile, resolve_device(profile.device, "emulate:aarch64"), True)
    assert why_not(profile, resolve_device(profile.device, "ssh://pi@host"), True) is None  # fitted on its own


def test_pareto_keeps_what_nothing_beats() -> None:
    pts = [("a", 10, 0.90), ("b", 20, 0.95), ("c", 30, 0.94), ("d", 10, 0.89), ("e", 20, 0.95)]
    assert pareto(pts) == {"a", "b", "e"}  # c: b is smaller and more accurate; d: a is as small and better


def test_an_old_record_renders_without_the_model_line(tmp_path: Path) -> None:
    (tmp_path / "build.json").write_text(json.dumps(build_record_json()))
    record = read_build_record(tmp_path)
    assert record.search.prediction is None and record.candidates[0].predicted_ms is None
    md = render_markdown(record)
    assert "latency model:" not in md and "predicted p50" not in md
    front = md.split("## Frontier")[1]
    # The spec allowed both; the unmeasured one has no latency; 81.25% is over 0.5 pt below 87.5%.
    assert "| **`student/int8.onnx` (chosen)** | 81.25% | 20.1 | 9.6 | 0.1234 | ★ | ★ | chosen |" in front
    assert "| `teacher/fp32.onnx` | 81.25% | 20.1 | n/a | n/a | ★ |  | rejected |" in front
    assert "no candidate the build spec allows reaches 87.00%" in front


def test_the_fit_is_the_threads_the_runner_runs(tmp_path: Path) -> None:
    """A 4-thread profile on a 2-core device is measured with 2 threads (runner.usable_threads), so its predictions
    come from the 2-thread fit; on a device with the cores, from the profile's own count."""
    from edgecompress.deploy.predict import Predictor

    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nhardware: {{arch: any}}\nbuild: {BUILD}\nruntime: {{threads: 4}}\n"
                    f"bench: {{warmup: 2, runs: 9, batch: 1, max_seconds: 5}}\nbudgets: {{min_accuracy: 0.1}}\n")
    profile = load_target(path)

    def key(cores: int) -> str:
        probe = {"fingerprint": {"hostname": "h", "cores": cores}, "runtimes": {"onnxruntime": "onnxruntime 1.0"}}
        return Predictor(profile, probe, tmp_path / "cache", None, False).group(profile).device

    assert "/t2/" in key(2) and "/t4/" in key(8)
