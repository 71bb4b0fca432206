"""The candidate pool and per-target builds on tiny models: real exports, real runner measurements."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig, run_artifact
from edgecompress.compression.pool import PoolConfig, PoolModel, build_pool, ensemble_model, in_processes
from edgecompress.data import Dataset, Split
from edgecompress.deploy.build import MeasurementCache, build_target, load_index, overshoot, pool_candidates
from edgecompress.deploy.build_report import plot_rows, render_markdown, summary
from edgecompress.deploy.check import run_target_check
from edgecompress.deploy.latency_features import FeatureCache
from edgecompress.deploy.latency_model import load_observations
from edgecompress.deploy.predict import FEATURES_DIR
from edgecompress.deploy.package import unpack
from edgecompress.deploy.search import candidate_of
from edgecompress.deploy.targets import Budgets, load_target
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher
from edgecompress.training.loop import TrainConfig, fit
from tests.test_ensemble import blob_dataset
from tests import test_remote
from tests.test_remote import Server

sshd = test_remote.sshd  # the loopback sshd fixture, shared with the check's SSH tests

FORMATS = ("fp32.onnx", "int8.onnx")


def _meta(ds: Dataset, name: str) -> dict[str, Any]:
    return {"data": ds.meta(), "params_hash": name}


def _trained(model: torch.nn.Module, ds: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    fit(model, ds.to_tensor(ds.train.x), torch.from_numpy(ds.train.y),
        TrainConfig(epochs=8, batch_size=32, lr=0.05, crop_pad=0, flip=False, seed=seed))
    return model.eval()


@pytest.fixture(scope="module")
def pool_inputs() -> tuple[list[PoolModel], Dataset, np.ndarray]:
    """A teacher, a 2-member ensemble and a small student, the data and the calibration images."""
    base = blob_dataset()
    # Score on more images than the 32 the blob split has: the pool splits val in decide/score halves.
    ds = Dataset(base.train, Split(np.concatenate([base.val.x, base.test.x]), np.concatenate([base.val.y, base.test.y])),
                 base.test, base.class_names, base.mean, base.std)
    teacher = _trained(ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8), ds, 0)
    member = _trained(ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8), ds, 1)
    student = _trained(MobileNetStudent(1, 4, [8, 16], [2]), ds, 2)
    t = PoolModel("teacher", teacher, _meta(ds, "t"), "teacher.pt")
    models = [t, ensemble_model(t, [member]), PoolModel("student", student, _meta(ds, "s"), "student.pt")]
    return models, ds, ds.normalize(ds.train.x[:32])


def _build_pool(inputs: tuple[list[PoolModel], Dataset, np.ndarray], out: Path, workers: int = 1) -> dict[str, Any]:
    models, ds, calib = inputs
    return build_pool(models, ds, calib, CalibrationConfig(val_samples=16, max_drop=None),
                      ExportConfig(formats=FORMATS), out, aliases={"pruned": "student"}, temperature=True,
                      workers=workers)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, pool_inputs: tuple[list[PoolModel], Dataset, np.ndarray]) -> Path:
    """The pool of ``pool_inputs``, each model as fp32 and int8 ONNX, exported in this process."""
    out = tmp_path_factory.mktemp("pool") / "candidates"
    _build_pool(pool_inputs, out)
    return out


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_pool_in_two_processes_is_the_same_pool(pool: Path, pool_inputs: tuple[list[PoolModel], Dataset, np.ndarray],
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """candidates.workers: models exported side by side in spawned processes give the index one process gives."""
    serial, parallel = load_index(pool), _build_pool(pool_inputs, tmp_path / "pool", workers=2)
    assert "in 2 processes" in capsys.readouterr().err
    assert [c.name for c in parallel.candidates] == [c.name for c in serial.candidates]
    for a, b in zip(serial.candidates, parallel.candidates):
        assert b.accuracy == a.accuracy and b.size_bytes == a.size_bytes, a.name
        # An untempered graph is the same byte for byte; a fitted temperature may differ in its last bits
        # (float sums over another thread count), so a tempered one may too.
        if a.precision == "fp32" and a.model not in serial.temperature:
            assert b.sha256 == a.sha256, a.name
    for model, scores in serial.pytorch.items():
        assert parallel.pytorch[model] == pytest.approx(scores, rel=1e-4, abs=1e-9), model
    assert {m: t["temperature"] for m, t in parallel.temperature.items()} == pytest.approx(
        {m: t["temperature"] for m, t in serial.temperature.items()}, rel=1e-4)
    assert load_index(tmp_path / "pool").candidates == parallel.candidates


def test_pool_exports_in_one_process_what_cannot_be_sent(capsys: pytest.CaptureFixture[str]) -> None:
    """A model pickle cannot send (like a module class defined in a brought script) is exported here."""
    unsendable = [lambda: 1, lambda: 2]  # pickle refuses lambdas
    assert in_processes(lambda make: make() * 2, unsendable, workers=2) == [2, 4]
    assert "one model at a time" in capsys.readouterr().err


def test_a_dead_export_process_is_one_clear_error() -> None:
    """An export process the system kills (out of memory) names the setting that avoids it."""
    import os

    with pytest.raises(EdgeCompressError, match="candidates.workers to 1"):
        in_processes(os._exit, [3, 3], workers=2)  # each worker exits at once, as a killed one would


@pytest.mark.parametrize("workers", [0, -1, True, "two", 1.5])
def test_pool_workers_must_be_a_count(workers: object) -> None:
    with pytest.raises(EdgeCompressError, match="workers"):
        PoolConfig(workers=workers)  # type: ignore[arg-type]
    assert PoolConfig(workers=3).processes() == 3 and PoolConfig().processes() >= 1


def _profile(tmp_path: Path, budgets: str, build: str = "{models: all, precisions: [int8, fp32], "
             "engines: [onnxruntime]}", arch: str = "any", name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{arch: {arch}}}\nbuild: {build}\n"
                    f"runtime: {{threads: 1}}\nbench: {{warmup: 1, runs: 8, batch: 1, max_seconds: 5}}\n"
                    f"budgets: {budgets}\n")
    return path


def test_pool_index_scores_every_candidate_on_validation(pool: Path) -> None:
    index = load_index(pool)
    names = [c.name for c in index.candidates]
    assert names == [f"{m}/{f}" for m in ("teacher", "ensemble", "student") for f in FORMATS]
    # 32 + 32 validation images: the first 16 decide (accuracy-aware int8), the other 48 score.
    assert index.scored_on == {**index.scored_on, "split": "validation", "images": 48, "skipped_first": 16}
    assert index.reference_model == "teacher" and index.aliases == {"pruned": "student"}
    by = {c.name: c for c in index.candidates}
    assert by["ensemble/fp32.onnx"].uncertainty and not by["teacher/fp32.onnx"].uncertainty
    assert by["student/fp32.onnx"].size_bytes < by["teacher/fp32.onnx"].size_bytes
    assert all(0 <= c.accuracy <= 1 and c.ece >= 0 and len(c.sha256) == 64 for c in index.candidates)
    assert (pool / "valset.npz").is_file() and (pool / "testset.npz").is_file()
    # Temperature scaling: fitted for single networks only (the ensemble keeps its own calibration), on the
    # 16 decision images, reported on the 48 scoring ones; folding it in never changes a prediction.
    assert set(index.temperature) == {"teacher", "student"}
    for fitted in index.temperature.values():
        assert fitted["temperature"] > 0 and fitted["fitted_on"] == 16
        assert fitted["before"]["accuracy"] == fitted["after"]["accuracy"]
    # The exported ensemble scores what the PyTorch ensemble scores.
    assert by["ensemble/fp32.onnx"].accuracy == pytest.approx(index.pytorch["ensemble"]["accuracy"])


def test_each_file_is_scored_on_every_validation_image_its_export_decided_nothing_on(
        pool: Path, pool_inputs: tuple[list[PoolModel], Dataset, np.ndarray], tmp_path: Path) -> None:
    """No accuracy check here (max_drop null): every file's accuracy is on all 64 validation images, the
    decision images included, and it is the file's own accuracy there; NLL and ECE stay on the 48. With the
    accuracy check, the int8 ONNX chose its float layers on the first 16, so only the other 48 score it."""
    models, ds, calib = pool_inputs
    index = load_index(pool)
    assert index.scored_on["accuracy_images"] == 64
    x, y = ds.normalize(ds.val.x), ds.val.y
    for c in index.candidates:
        assert c.accuracy_images == 64, c.name
        sidecar = json.loads((pool / f"{c.path}.json").read_text())
        right = run_artifact(pool / c.path, sidecar, x).argmax(1) == y
        assert c.accuracy == pytest.approx(right.mean()), c.name
    student = next(c for c in pool_candidates(index) if c.name == "student/fp32.onnx")
    assert student.accuracy_n == 64  # what the build's intervals and ties count
    checked = build_pool([models[2]], ds, calib, CalibrationConfig(val_samples=16, max_drop=1.0),
                         ExportConfig(formats=FORMATS), tmp_path / "checked", reference="student")
    by = {c.name: c for c in checked.candidates}
    assert by["student/fp32.onnx"].accuracy_images == 64 and by["student/int8.onnx"].accuracy_images == 48
    right = run_artifact(tmp_path / "checked/student/int8.onnx",
                         json.loads((tmp_path / "checked/student/int8.onnx.json").read_text()), x[16:]).argmax(1)
    assert by["student/int8.onnx"].accuracy == pytest.approx((right == y[16:]).mean())
    # An index from before the field: its accuracies rest on scored_on's images.
    old = replace(by["student/fp32.onnx"], accuracy_images=None)
    assert "accuracy_images" not in old.to_json() and candidate_of(old, 48).accuracy_n == 48


def test_pool_index_refuses_a_changed_artifact(pool: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    with open(copy / "student/int8.onnx", "ab") as f:
        f.write(b"x")
    with pytest.raises(EdgeCompressError, match=r"student/int8\.onnx: .* the index says .*re-run the candidates stage"):
        load_index(copy)


def test_budgets_decide_and_a_changed_budget_is_not_measured_again(pool: Path, tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "cache")
    index = load_index(pool)
    smallest = min(index.candidates, key=lambda c: c.size_bytes)
    small = smallest.size_bytes / 2**20
    loose = build_target(load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}")), pool, tmp_path / "loose",
                         cache)
    best = max(index.candidates, key=lambda c: (c.accuracy, -c.size_bytes))
    assert loose.chosen.val_accuracy == best.accuracy and loose.status == "built"
    # A size budget only the smallest candidate meets forces it.
    tight = build_target(load_target(_profile(tmp_path, f"{{size_mb: {small * 1.01}, latency_ms: {{p50: 1000}}}}")),
                         pool, tmp_path / "tight", cache)
    assert tight.chosen.name == smallest.name
    file = Path(smallest.path).name
    assert (tmp_path / "tight" / file).is_file() and (tmp_path / "tight" / f"{file}.json").is_file()
    # The package ships beside it and restores it bit for bit; the index knew its size before any device run.
    shipped = (tmp_path / "tight" / f"{file}.ecpk").read_bytes()
    assert unpack(shipped)[0] == (tmp_path / "tight" / file).read_bytes()
    assert len(shipped) == smallest.package_bytes == tight.chosen.download_bytes < smallest.size_bytes
    rows = {r.name: r for r in tight.candidates}
    assert rows["teacher/fp32.onnx"].measured == "not measured"  # ruled out by size before any run
    assert any(w.startswith("size ") for w in rows["teacher/fp32.onnx"].why)
    # Another budget value, same device, artifacts and settings: re-chosen without a device run.
    again = build_target(load_target(_profile(tmp_path, f"{{size_mb: {small * 1.01}, latency_ms: {{p50: 999}}}}")),
                         pool, tmp_path / "tight", cache)
    assert again.search.device_runs == 0 and again.search.cache_hits == 1
    assert again.chosen == tight.chosen
    md = render_markdown(tight)
    assert f"`{smallest.name}`" in md and summary(tight)["chosen"] == smallest.name
    if loose.chosen.val_accuracy > tight.chosen.val_accuracy:
        assert "Why nothing more accurate ships" in md
    points = plot_rows(tight, Budgets(latency_ms={"p50": 1000}))
    assert any(p.get("fate") == "chosen" for p in points)
    assert all(p["latency_budget_ms"] == 1000 and "accuracy_floor" not in p for p in points)
    # The check then gates what the build chose, on the test split.
    result = run_target_check(_profile(tmp_path, "{latency_ms: {p50: 1000}}"), tmp_path / "tight",
                              pool / "testset.npz", strict=False)
    assert result.artifact.candidate == smallest.name and result.status == "pass"


def test_search_stops_at_the_first_fit_unless_exhaustive(pool: Path, tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}"))
    quick = build_target(profile, pool, tmp_path / "a", MeasurementCache(tmp_path / "c1"))
    full = build_target(profile, pool, tmp_path / "b", MeasurementCache(tmp_path / "c2"), exhaustive=True)
    assert full.search.device_runs == 6 and quick.search.device_runs < 6
    assert quick.chosen.val_accuracy == full.chosen.val_accuracy


def test_requires_uncertainty_ships_the_ensemble(pool: Path, tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}", "{requires: [uncertainty], "
                                   "engines: [onnxruntime]}"))
    assert build_target(profile, pool, tmp_path / "u", MeasurementCache(tmp_path / "c")).chosen.model == "ensemble"


def test_pinned_profile_ships_its_artifact_of_the_pruned_model(pool: Path, tmp_path: Path) -> None:
    path = tmp_path / "pin.yaml"
    path.write_text("name: pin\nartifact: {format: onnx, precision: int8}\nruntime: {engine: onnxruntime}\n"
                    "bench: {warmup: 1, runs: 8}\nbudgets: {latency_ms: {p50: 1000}}\n")
    record = build_target(load_target(path), pool, tmp_path / "pin", MeasurementCache(tmp_path / "c"))
    assert record.chosen.name == "student/int8.onnx" and record.build.pinned


def test_no_feasible_candidate(pool: Path, tmp_path: Path) -> None:
    budgets = "{size_mb: 0.000001}"
    # On matching hardware (arch any matches) the build fails, naming the nearest and by how much.
    real = build_target(load_target(_profile(tmp_path, budgets)), pool, tmp_path / "r", MeasurementCache(tmp_path / "c"))
    assert real.status == "infeasible"
    assert "no candidate meets every budget" in real.error and "size" in real.error and "(by " in real.error
    # Elsewhere it is a labelled proxy: it ships the candidate nearest its budgets (the smallest here).
    proxy = build_target(load_target(_profile(tmp_path, budgets, arch="aarch64", name="p")), pool, tmp_path / "p",
                         MeasurementCache(tmp_path / "c"))
    assert proxy.status == "proxy-infeasible" and proxy.error is None and "error" not in proxy.to_json()
    smallest = min(load_index(pool).candidates, key=lambda c: c.size_bytes)
    assert proxy.chosen.name == smallest.name


def test_a_build_spec_that_allows_nothing_fails_everywhere(pool: Path, tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{size_mb: 1}", "{models: [student], requires: [uncertainty]}",
                                   arch="aarch64"))
    with pytest.raises(EdgeCompressError, match=r"nothing to choose from: all 6 candidate\(s\) are excluded by the "
                                                r"build spec; check build\.models"):
        build_target(profile, pool, tmp_path / "x", MeasurementCache(tmp_path / "c"))
    assert not (tmp_path / "x").exists()


def test_overshoot_is_zero_inside_the_budgets(pool: Path, tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{size_mb: 100}"))
    c = pool_candidates(load_index(pool))[0]
    assert overshoot(c, profile, None) == 0
    tight = replace(profile, budgets=Budgets(size_mb=c.size_bytes / 2**20 / 2))
    assert overshoot(c, tight, None) == pytest.approx(1.0)


def test_unknown_model_in_build_spec(pool: Path, tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{size_mb: 1}", "{models: [pruned-90]}"))
    with pytest.raises(EdgeCompressError, match=r"build\.models names \['pruned-90'\].*it has teacher, ensemble, student"):
        build_target(profile, pool, tmp_path / "x", MeasurementCache(tmp_path / "c"))


def test_cache_key_tracks_what_determines_a_measurement(tmp_path: Path) -> None:
    profile = load_target(_profile(tmp_path, "{size_mb: 1}")).pinned("onnx", "int8")
    probe = {"fingerprint": {"cpu_model": "x"}, "runtimes": {"onnxruntime": "onnxruntime 1.0"}, "runner_version": 1}
    key = MeasurementCache.key("a" * 64, probe, profile)
    assert key == MeasurementCache.key("a" * 64, json.loads(json.dumps(probe)), profile)
    assert key != MeasurementCache.key("b" * 64, probe, profile)
    assert key != MeasurementCache.key("a" * 64, {**probe, "runtimes": {"onnxruntime": "onnxruntime 1.1"}}, profile)
    assert key != MeasurementCache.key("a" * 64, probe, replace(profile, runtime=replace(profile.runtime, threads=2)))
    assert key != MeasurementCache.key("a" * 64, probe, replace(profile, bench=replace(profile.bench, runs=7)))
    # A budget is not part of it: changing one re-chooses from the same measurements.
    assert key == MeasurementCache.key("a" * 64, probe, replace(profile, budgets=Budgets(size_mb=2)))
    cache = MeasurementCache(tmp_path / "cache")
    assert cache.get(key) is None
    cache.put(key, {"latency_ms": {"p50": 1.0}})
    assert cache.get(key) == {"latency_ms": {"p50": 1.0}}
    (tmp_path / "cache" / f"{key}.json").write_text("{half")  # a killed run's entry: measured again
    assert cache.get(key) is None


def test_build_profile_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("build: {engines: [litert]}\nartifact: {format: tflite, precision: int8}\n"
                    "runtime: {threads: 1}\nbudgets: {size_mb: 1}\n")
    with pytest.raises(EdgeCompressError, match=r"bad\.yaml: field artifact/build: give exactly one"):
        load_target(path)
    path.write_text("build: {engines: [litert]}\nruntime: {engine: litert}\nbudgets: {size_mb: 1}\n")
    with pytest.raises(EdgeCompressError, match=r"field runtime\.engine: remove it: with build"):
        load_target(path)
    path.write_text("build: {engines: [litert]}\nruntime: {providers: [CPUExecutionProvider]}\nbudgets: {size_mb: 1}\n")
    with pytest.raises(EdgeCompressError, match=r"field runtime\.providers: applies only to engine onnxruntime"):
        load_target(path)
    path.write_text("runtime: {threads: 1}\nbudgets: {size_mb: 1}\n")
    with pytest.raises(EdgeCompressError, match=r"field build: is required \(or artifact"):
        load_target(path)
    path.write_text("build: {engines: [litert], speed: fast}\nruntime: {threads: 1}\nbudgets: {size_mb: 1}\n")
    with pytest.raises(EdgeCompressError, match=r"field build\.speed: unknown key"):
        load_target(path)


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_build_over_ssh(sshd: Server, pool: Path, tmp_path: Path) -> None:
    """The loopback sshd as the device: probe and measurements run there; the cache keys on its fingerprint."""
    work = tmp_path / "remote"
    profile = replace(load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}")), device=sshd.device(work))
    cache = MeasurementCache(tmp_path / "cache")
    first = build_target(profile, pool, tmp_path / "ssh", cache)
    assert first.device == sshd.url and first.status == "built" and first.search.device_runs >= 1
    assert first.fingerprint["hostname"] == socket.gethostname()
    assert work.is_dir() and not any(work.iterdir())  # every remote run dir removed
    again = build_target(profile, pool, tmp_path / "ssh", cache)
    assert again.search.device_runs == 0 and again.chosen == first.chosen
    # The latency model fits the device's own entries: they name their artifacts by sha256 (the device ran
    # its copy, removed since) under the device's fingerprint.
    assert first.search.prediction.startswith("on: fitted on")
    obs, _ = load_observations(cache.dir, FeatureCache(cache.dir / FEATURES_DIR))
    shas = {e.sha256 for e in load_index(pool).candidates}
    assert len(obs) == first.search.device_runs and {o.artifact for o in obs} <= shas
    assert {o.features.macs for o in obs} and all(o.features.macs > 0 for o in obs)
    assert all(c.predicted_ms for c in again.candidates if c.measured == "device")  # the probe's group: the same
    # The same artifacts measured here are other measurements: the device is part of the key.
    local = build_target(replace(profile, device=load_target(_profile(tmp_path, "{size_mb: 1}")).device), pool,
                         tmp_path / "local", cache)
    assert local.search.device_runs >= 1


def test_cli_build_then_check(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edgecompress build` and `edgecompress check` by hand: the same code as the stages."""
    from edgecompress.cli import main

    target = _profile(tmp_path, "{latency_ms: {p50: 1000}}", name="by-hand")
    out = tmp_path / "targets" / "by-hand"
    main(["build", "--target", str(target), "--candidates", str(pool), "--out", str(out),
          "--cache", str(tmp_path / "cache"), "--out-md", str(tmp_path / "build.md")])
    record = json.loads((out / "build.json").read_text())
    assert "# Build `by-hand`: **BUILT**" in capsys.readouterr().out and (tmp_path / "build.md").is_file()
    assert "![frontier](build.frontier.svg)" in (tmp_path / "build.md").read_text()  # the plot beside it
    assert (tmp_path / "build.frontier.svg").read_text().startswith("<svg")
    main(["check", "--target", str(target), "--artifacts", str(out), "--testset", str(pool / "testset.npz"),
          "--out-json", str(tmp_path / "check.json"), "--out-md", str(tmp_path / "check.md")])
    check = json.loads((tmp_path / "check.json").read_text())
    assert check["artifact"]["candidate"] == record["chosen"]["name"] and check["status"] == "pass"


def test_a_gpu_profile_built_without_its_gpu_ships_by_accuracy_not_by_cpu_latency(pool: Path, tmp_path: Path) -> None:
    """#28: a CPU's timings say nothing of a GPU's, so on a machine without the profile's GPU no latency budget
    decides (a 1 ms GPU budget judged on the CPU flipped the choice between networks from build to build)."""
    budgets = "{latency_ms: {p50: 0.000001}}"  # no machine meets it
    cpu = build_target(load_target(_profile(tmp_path, budgets)), pool, tmp_path / "cpu", MeasurementCache(tmp_path / "c"))
    assert cpu.status == "infeasible"
    path = _profile(tmp_path, budgets, name="g")
    path.write_text(path.read_text().replace("hardware: {arch: any}", "hardware: {arch: any, gpu: NVIDIA}"))
    gpu = build_target(load_target(path), pool, tmp_path / "gpu", MeasurementCache(tmp_path / "c"))
    best = max(c.accuracy for c in load_index(pool).candidates if c.engine == "onnxruntime")
    assert gpu.status == "proxy-built" and gpu.chosen.val_accuracy == best
    assert any("not judged" in r for r in gpu.hardware_reasons)
    again = build_target(load_target(path), pool, tmp_path / "gpu2", MeasurementCache(tmp_path / "c2"))
    assert again.chosen.name == gpu.chosen.name  # fresh measurements, same choice
