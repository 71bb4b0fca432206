"""Early-exit networks in the chain: checkpoints, cascade candidates in the pool, builds and checks that
consider them only for a mean-latency budget, and the files a chosen cascade ships."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig
from edgecompress.compression.pool import build_pool, pool_models
from edgecompress.deploy.build import MeasurementCache, build_target, load_index
from edgecompress.deploy.check import run_target_check
from edgecompress.deploy.package import unpack
from edgecompress.deploy.remote import _stage
from edgecompress.deploy.targets import ArtifactSpec, load_target
from edgecompress.errors import EdgeCompressError
from edgecompress.models import arch_of
from edgecompress.training.early_exit import EarlyExitConfig, EarlyExitNet, cascade_predict, exit_probabilities
from edgecompress.training.exit_checkpoints import exit_checkpoints, load_early_exit
from edgecompress.training.loop import TrainConfig, fit, tensors
from tests.test_early_exit import _dataset, _student

TINY = TrainConfig(epochs=3, batch_size=32, lr=0.05, crop_pad=0, flip=False)
CFG = EarlyExitConfig(exits=(0, 1), freeze_backbone=True, max_drop=1.0, train=TINY)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained tiny student (the 'teacher' of this chain), its early-exit checkpoint from the stage's
    function, and a pool of both (fp32 ONNX only: seconds)."""
    d = tmp_path_factory.mktemp("chain")
    ds = _dataset()
    student = _student()
    fit(student, *tensors(ds)["train"], replace(TINY, epochs=6))
    save_checkpoint(d / "teacher.pt", student, arch_of(student), {"data": ds.meta(), "params_hash": "t"})
    meta = lambda metrics, parent: {"data": ds.meta(), "params": {"early_exit": {"max_drop": CFG.max_drop}},  # noqa: E731
                                    "params_hash": "ee", "parent": parent, "metrics": metrics}
    reports = exit_checkpoints({"teacher": d / "teacher.pt"}, student, ds, replace(CFG, models=("teacher",)),
                               d / "early_exit", meta)
    models, _ = pool_models(d / "teacher.pt", [], d / "teacher.pt", d / "teacher.pt", None, 0.3,
                            early_exit=d / "early_exit")
    models = [m for m in models if m.name in ("teacher", "teacher-ee")]
    build_pool(models, ds, ds.normalize(ds.train.x[:32]), CalibrationConfig(val_samples=40, max_drop=None),
               ExportConfig(formats=("fp32.onnx", "int8.onnx")), d / "pool")
    return {"dir": d, "ds": ds, "reports": reports, "pool": d / "pool"}


def meta_of(chain: dict[str, Any]) -> dict[str, Any]:
    """The arch of the chain's 'teacher' (the backbone the exits were put on)."""
    return load_checkpoint(chain["dir"] / "teacher.pt")[1]["arch"]


def test_an_early_exit_checkpoint_round_trips_and_is_refused_where_it_does_not_fit(chain: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    path = chain["dir"] / "early_exit" / "teacher-ee.pt"
    net, meta = load_early_exit(path)
    assert isinstance(net, EarlyExitNet) and net.exits == [0, 1] and meta["arch"]["kind"] == "early_exit"
    rep = chain["reports"]["teacher-ee"]
    # Thresholds were chosen on the validation split within max_drop, and the checkpoint carries them.
    assert len(rep["cascade"]["thresholds"]) == 2 and rep["cascade"]["max_drop_points"] == CFG.max_drop
    assert meta["metrics"]["cascade"] == rep["cascade"] and len(rep["history"]) == TINY.epochs
    # Frozen backbone: the final exit is exactly the model it extends.
    teacher, _ = load_checkpoint(chain["dir"] / "teacher.pt")
    x = chain["ds"].to_tensor(chain["ds"].test.x[:16])
    with torch.no_grad():
        torch.testing.assert_close(net.forward_exits(x)[-1], teacher(x))
    # The heads file beside an ordinary checkpoint of the backbone (rebuilt as any checkpoint is).
    assert (chain["dir"] / "early_exit" / "teacher-ee.backbone.pt").is_file()
    assert load_checkpoint(chain["dir"] / "early_exit" / "teacher-ee.backbone.pt")[1]["arch"] == meta_of(chain)
    with pytest.raises(EdgeCompressError, match="unknown model kind 'early_exit'"):
        load_checkpoint(path)
    with pytest.raises(EdgeCompressError, match="not an early-exit one; the early_exit stage writes those"):
        load_early_exit(chain["dir"] / "teacher.pt")
    shutil.copy(chain["dir"] / "early_exit" / "teacher-ee.backbone.pt", tmp_path)
    bad = tmp_path / "teacher-ee.pt"
    torch.save({"arch": {**meta["arch"], "head_conv": 4}, "meta": {}, "state_dict": net.heads.state_dict()}, bad)
    with pytest.raises(EdgeCompressError, match="exit heads do not match its arch"):
        load_early_exit(bad)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeCompressError, match="unreadable or corrupt"):
        load_early_exit(bad)


def test_the_pool_offers_cascades_scored_through_their_runtime(chain: dict[str, Any]) -> None:
    index = load_index(chain["pool"])
    by = {c.name: c for c in index.candidates}
    # Cascades are fp32 only: the int8 format gives plain models, never a cascade.
    assert set(by) == {"teacher/fp32.onnx", "teacher/int8.onnx", "teacher-ee/fp32.onnx"}
    c = by["teacher-ee/fp32.onnx"]
    assert c.path == "teacher-ee/fp32.onnx.cascade.json" and list(c.segments) == [
        f"segment{k}.fp32.onnx" for k in range(3)]
    seg_paths = [chain["pool"] / "teacher-ee" / s for s in c.segments]
    assert c.size_bytes == sum(p.stat().st_size for p in seg_paths)
    assert abs(sum(c.exit_fractions) - 1) < 1e-9 and len(c.thresholds) == 2
    # The ONNX cascade agrees with the PyTorch one image for image, so it scores what PyTorch scores.
    assert c.top1_agreement == 1.0 and c.accuracy == pytest.approx(index.pytorch["teacher-ee"]["accuracy"])
    # Thresholds were chosen on the decision images, scored on the others: recompute on the scoring images.
    net, _ = load_early_exit(chain["dir"] / "early_exit" / "teacher-ee.pt")
    ds = chain["ds"]
    keep = index.scored_on["skipped_first"]
    probs = exit_probabilities(net, ds.to_tensor(ds.val.x[keep:]))
    thresholds = [np.inf if t is None else t for t in c.thresholds]
    pred, _ = cascade_predict(probs, thresholds)
    assert c.accuracy == pytest.approx(float((pred == ds.val.y[keep:]).mean()))


def _profile(tmp_path: Path, budgets: str, models: str = "all", name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nhardware: {{arch: any}}\nbuild: {{models: {models}, precisions: [int8, fp32], "
                    f"engines: [onnxruntime]}}\nruntime: {{threads: 1}}\n"
                    f"bench: {{warmup: 1, runs: 20, batch: 4, max_seconds: 5}}\nbudgets: {budgets}\n")
    return path


def test_only_a_mean_latency_budget_considers_a_cascade(chain: dict[str, Any], tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "cache")
    p50 = build_target(load_target(_profile(tmp_path, "{latency_ms: {p50: 1000}}", "[teacher-ee, teacher]")),
                       chain["pool"], tmp_path / "p50", cache)
    rows = {r.name: r for r in p50.candidates}
    assert rows["teacher-ee/fp32.onnx"].fate == "rejected"
    assert any("mean-latency budget" in why for why in rows["teacher-ee/fp32.onnx"].why)
    assert not p50.chosen.name.startswith("teacher-ee")
    mean = build_target(load_target(_profile(tmp_path, "{latency_ms: {mean: 1000}}", "[teacher-ee]", "m")),
                        chain["pool"], tmp_path / "mean", cache)
    assert mean.chosen.name == "teacher-ee/fp32.onnx" and mean.status == "built"
    assert mean.chosen.file == "fp32.onnx.cascade.json"
    # Measured one image at a time (images leave at different exits), whatever the profile's batch.
    raw = {r.name: r for r in mean.candidates}["teacher-ee/fp32.onnx"]
    assert raw.latency_ms["mean"] > 0


def test_a_chosen_cascade_ships_every_segment_and_checks_on_the_device(chain: dict[str, Any], tmp_path: Path) -> None:
    profile = _profile(tmp_path, "{latency_ms: {mean: 1000}, download_mb: 10, min_accuracy: 0.0}", "[teacher-ee]")
    out = tmp_path / "built"
    build_target(load_target(profile), chain["pool"], out, MeasurementCache(tmp_path / "cache"))
    segments = [f"segment{k}.fp32.onnx" for k in range(3)]
    shipped = {p.name for p in out.iterdir()}
    assert {"fp32.onnx.cascade.json", *segments, *(f"{s}.ecpk" for s in segments)} <= shipped
    assert not (out / "fp32.onnx.cascade.json.json").exists()
    for s in segments:  # each package restores its segment bit for bit
        assert unpack((out / f"{s}.ecpk").read_bytes())[0] == (out / s).read_bytes()
    result = run_target_check(profile, out, chain["pool"] / "testset.npz", strict=False)
    assert result.status == "pass" and result.latency_ms["mean"] > 0
    rows = {r.budget.name: r for r in result.budgets}
    assert rows["download"].measured * 2**20 == pytest.approx(
        (out / "fp32.onnx.cascade.json").stat().st_size + sum((out / f"{s}.ecpk").stat().st_size for s in segments))


def test_cascade_artifact_names_and_remote_staging(chain: dict[str, Any], tmp_path: Path) -> None:
    spec = ArtifactSpec.from_filename("fp32.tflite.cascade.json")
    assert (spec.format, spec.precision, spec.cascade, spec.filename) == ("tflite", "fp32", True,
                                                                          "fp32.tflite.cascade.json")
    assert ArtifactSpec.from_filename("int8.onnx") == ArtifactSpec("onnx", "int8")
    profile = load_target(_profile(tmp_path, "{latency_ms: {mean: 1}}")).pinned("onnx", "fp32", cascade=True)
    assert profile.bench.batch == 1 and profile.artifact.filename == "fp32.onnx.cascade.json"
    d = chain["pool"] / "teacher-ee"
    staged = _stage(tmp_path, profile, d / "fp32.onnx.cascade.json", None, None,
                    [d / f"segment{k}.fp32.onnx" for k in range(3)])
    assert sorted(p.name for p in staged) == ["fp32.onnx.cascade.json", "runner.py", "segment0.fp32.onnx",
                                              "segment1.fp32.onnx", "segment2.fp32.onnx"]


def test_early_exit_config_names_bad_models_and_drop() -> None:
    with pytest.raises(EdgeCompressError, match="invalid value models=.*'teacher', 'student', 'pruned'"):
        EarlyExitConfig(models=("ensemble",))
    with pytest.raises(EdgeCompressError, match="max_drop=-1"):
        EarlyExitConfig(max_drop=-1)
