"""Early-exit students: the net, the validation-chosen thresholds, the exported cascade and the runner on it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_blobs
from edgecompress.compression.cascade import export_cascade, run_segments, write_manifest
from edgecompress.data import Dataset, Split
from edgecompress.deploy import runner
from edgecompress.deploy.runner import RunnerError
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher
from edgecompress.training.early_exit import (EarlyExitConfig, EarlyExitNet, cascade_predict, choose_thresholds,
                                              exit_probabilities, thresholds_on_val, train_early_exit)
from edgecompress.training.loop import TrainConfig

MEAN, STD = (0.3,), (0.4,)
META = {"mean": list(MEAN), "std": list(STD), "class_names": list("abcd"), "input_shape": [1, 12, 12]}


def _uint8(x: torch.Tensor) -> np.ndarray:
    """Blobs (normalized floats) back to uint8 pixels under MEAN/STD, so the Dataset normalizes them again."""
    return np.clip(np.round((x.numpy() * STD[0] + MEAN[0]) * 255), 0, 255).astype(np.uint8)


def _dataset(n: int = 400) -> Dataset:
    x, y = make_blobs(n)
    xu, yn = _uint8(x), y.numpy().astype(np.int64)
    a, b = n // 2, 3 * n // 4
    return Dataset(Split(xu[:a], yn[:a]), Split(xu[a:b], yn[a:b]), Split(xu[b:], yn[b:]), list("abcd"), MEAN, STD)


def _student() -> MobileNetStudent:
    torch.manual_seed(0)
    return MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]).eval()


@pytest.fixture(scope="module")
def trained() -> tuple[EarlyExitNet, Dataset, dict[str, Any]]:
    """A tiny student fine-tuned with two exits (a second or so)."""
    from edgecompress.training.loop import fit, tensors

    ds = _dataset()
    student = _student()
    fit(student, *tensors(ds)["train"], TrainConfig(epochs=6, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    cfg = EarlyExitConfig(exits=(0, 1), train=TrainConfig(epochs=3, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    net, report = train_early_exit(student, student, ds, cfg)  # the trained student teaches its exits
    return net, ds, report


# --------------------------------------------------------------------------- config and net


@pytest.mark.parametrize("kw, match", [
    ({"exits": ()}, "exits=.*non-empty"),
    ({"exits": (3, 1)}, "strictly increasing"),
    ({"exits": (-1,)}, "integers >= 0"),
    ({"weights": (1.0, 1.0)}, "needs 3 entries"),
    ({"weights": (1.0, -1.0, 1.0)}, ">= 0 with a positive sum"),
    ({"temperature": 0.0}, "temperature=0.0: must be > 0"),
    ({"alpha": 1.5}, r"alpha=1.5: must be within \[0, 1\]"),
    ({"head_conv": -4}, "head_conv=-4"),
    ({"train_samples": 0}, "train_samples=0"),
])
def test_config_rejects_bad_values(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        EarlyExitConfig(**kw)


def test_config_from_params_names_the_section() -> None:
    from edgecompress.config import from_dict

    cfg = from_dict(EarlyExitConfig, {"exits": [1, 2], "weights": [0.5, 0.5, 1], "train": {"epochs": 1}})
    assert cfg.exits == (1, 2) and cfg.loss_weights == (0.5, 0.5, 1) and cfg.train.epochs == 1
    with pytest.raises(EdgeCompressError, match="early_exit: unknown key 'exit'.*did you mean 'exits'"):
        from_dict(EarlyExitConfig, {"exit": [1]}, "early_exit")


@pytest.mark.parametrize("head_conv", [0, 8])
def test_net_exits_and_final_equals_backbone(head_conv: int) -> None:
    m = _student()
    net = EarlyExitNet(m, [0, 1], head_conv).eval()
    x = torch.randn(5, 1, 12, 12)
    outs = net.forward_exits(x)
    assert [tuple(o.shape) for o in outs] == [(5, 4)] * 3
    torch.testing.assert_close(outs[-1], m(x))
    torch.testing.assert_close(net(x), m(x))
    assert isinstance(net.heads[0].conv, nn.Sequential) == bool(head_conv)


def test_net_wraps_the_resnet_teacher() -> None:
    torch.manual_seed(0)
    t = ResNetTeacher(1, 4, widths=[8, 16, 16], blocks=[1, 1, 1], stem=8).eval()
    net = EarlyExitNet(t, [0, 1]).eval()
    x = torch.randn(3, 1, 12, 12)
    assert net.heads[0].fc.in_features == 8 and net.heads[1].fc.in_features == 16
    torch.testing.assert_close(net.forward_exits(x)[-1], t(x))


def test_net_errors_name_the_problem() -> None:
    with pytest.raises(EdgeCompressError, match=r"exits=\[2\].*\[0, 1\].*3 blocks"):
        EarlyExitNet(_student(), [2])  # after the last block: a duplicate of the final classifier
    with pytest.raises(EdgeCompressError, match="nn.Sequential named one of"):
        EarlyExitNet(nn.Linear(3, 3), [0])


def test_training_reports_every_exit_and_frozen_backbone_keeps_the_final_exit(
        trained: tuple[EarlyExitNet, Dataset, dict[str, Any]]) -> None:
    net, ds, report = trained
    assert len(report["test_accuracy"]) == 3 and len(report["val_accuracy"]) == 3
    assert report["macs_to_exit"] == sorted(report["macs_to_exit"])  # each exit costs more than the one before
    assert report["test_accuracy"][-1] > 0.5  # learnable blobs
    assert {"exit0_loss", "exit1_loss", "exit2_loss"} <= set(report["history"][0])
    student = _student()
    cfg = EarlyExitConfig(exits=(0, 1), freeze_backbone=True, train_samples=40,
                          train=TrainConfig(epochs=1, batch_size=16, lr=0.05, crop_pad=0, flip=False))
    frozen, rep = train_early_exit(student, student, ds, cfg)
    assert rep["train_samples"] == 40
    x = ds.to_tensor(ds.test.x)
    with torch.no_grad():
        torch.testing.assert_close(frozen.eval()(x), student.eval()(x))


# --------------------------------------------------------------------------- thresholds


def test_cascade_predict_takes_the_first_confident_exit() -> None:
    p0 = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    p1 = np.array([[0.2, 0.8], [0.05, 0.95], [0.6, 0.4]])
    final = np.array([[0.0, 1.0], [1.0, 0.0], [0.3, 0.7]])
    pred, exits = cascade_predict([p0, p1, final], [0.8, 0.9])
    assert exits.tolist() == [0, 1, 2] and pred.tolist() == [0, 1, 1]
    pred, exits = cascade_predict([p0, p1, final], [float("inf"), 0.0])
    assert exits.tolist() == [1, 1, 1]
    with pytest.raises(EdgeCompressError, match="3 exits need 2 thresholds"):
        cascade_predict([p0, p1, final], [0.5])


def _synthetic_probs(seed: int, n: int = 400) -> tuple[list[np.ndarray], np.ndarray]:
    """Three exits of growing accuracy whose confidence tracks correctness (as trained exits do)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    probs = []
    for acc in (0.6, 0.75, 0.9):
        right = rng.random(n) < acc
        pred = np.where(right, y, (y + rng.integers(1, 5, n)) % 5)
        conf = np.where(right, rng.uniform(0.5, 1.0, n), rng.uniform(0.3, 0.8, n))
        p = np.full((n, 5), 0.0)
        p[np.arange(n), pred] = conf
        p += ((1 - conf) / 4)[:, None] * (np.arange(5)[None, :] != pred[:, None])
        probs.append(p)
    return probs, y


@pytest.mark.parametrize("max_drop", [0.0, 0.3, 1.0, 5.0])
def test_accuracy_bound_holds_on_val(max_drop: float) -> None:
    probs, y = _synthetic_probs(0)
    choice = choose_thresholds(probs, y, max_drop)
    pred, exits = cascade_predict(probs, choice.thresholds)
    acc = float((pred == y).mean())
    assert acc == pytest.approx(choice.accuracy)
    assert acc >= choice.final_accuracy - max_drop / 100 - 1e-12
    assert sum(choice.exit_fractions) == pytest.approx(1.0)
    assert np.bincount(exits, minlength=3) / len(y) == pytest.approx(np.array(choice.exit_fractions))
    if max_drop >= 1.0:
        assert choice.exit_fractions[-1] < 1.0  # a looser bound lets images out early


def test_thresholds_follow_val_not_test(trained: tuple[EarlyExitNet, Dataset, dict[str, Any]]) -> None:
    net, ds, _ = trained
    base = thresholds_on_val(net, ds, 0.5)
    other_test = dataclasses.replace(ds, test=Split(ds.test.x[::-1].copy(), ds.test.y[::-1].copy()))
    assert thresholds_on_val(net, other_test, 0.5) == base
    flipped = np.ascontiguousarray(ds.val.x[..., ::-1, :])  # another validation set: other confidences
    other_val = dataclasses.replace(ds, val=Split(flipped, ds.val.y))
    assert thresholds_on_val(net, other_val, 0.5).thresholds != base.thresholds
    with pytest.raises(EdgeCompressError, match="max_drop=-1"):
        choose_thresholds([np.eye(2), np.eye(2)], np.array([0, 1]), -1)


def test_confident_correct_first_exit_takes_everything() -> None:
    y = np.array([0, 1, 0, 1])
    early = np.array([[0.99, 0.01], [0.02, 0.98], [0.97, 0.03], [0.1, 0.9]])
    choice = choose_thresholds([early, np.eye(2)[y]], y, 0.0)
    assert choice.exit_fractions == (1.0, 0.0) and choice.thresholds == (0.9,)


# --------------------------------------------------------------------------- cascade export and the runner


@pytest.fixture(scope="module")
def cascade_dir(trained: tuple[EarlyExitNet, Dataset, dict[str, Any]],
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    net, ds, _ = trained
    d = tmp_path_factory.mktemp("cascade")
    choice = thresholds_on_val(net, ds, 1.0)
    res = export_cascade(net, {**META}, d, choice, ds.normalize(ds.test.x))
    np.savez(d / "testset.npz", x=ds.test.x, y=ds.test.y)
    return d, res


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
@pytest.mark.parametrize("artifact", ["fp32.onnx", "fp32.tflite"])
def test_cascade_outputs_equal_pytorch_at_every_exit(trained: tuple[EarlyExitNet, Dataset, dict[str, Any]],
                                                     cascade_dir: tuple[Path, dict[str, Any]], artifact: str) -> None:
    net, ds, _ = trained
    d, res = cascade_dir
    x = ds.normalize(ds.test.x)
    got = run_segments(d / f"{artifact}.cascade.json", x)
    with torch.no_grad():
        want = [o.numpy() for o in net.forward_exits(torch.from_numpy(x))]
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4)
    manifest = json.loads((d / f"{artifact}.cascade.json").read_text())
    assert [s["file"] for s in manifest["segments"]] == [f"segment{k}.{artifact}" for k in range(3)]
    assert manifest["layout"] == ("NCHW" if artifact.endswith("onnx") else "NHWC")
    for key in ("input_shape", "input_dtype", "mean", "std", "class_names", "num_classes", "input_quant"):
        assert key in manifest
    assert "features" in manifest["segments"][0]["outputs"] and "features" not in manifest["segments"][2]["outputs"]
    assert max(res[artifact]["verification"]["max_abs_logit_diff"]) < 1e-4


def test_runner_on_a_cascade_matches_cascade_predict(trained: tuple[EarlyExitNet, Dataset, dict[str, Any]],
                                                     cascade_dir: tuple[Path, dict[str, Any]]) -> None:
    net, ds, _ = trained
    d, _ = cascade_dir
    manifest = d / "fp32.onnx.cascade.json"
    res = runner.run(manifest, data=d / "testset.npz", threads=1, runs=30, warmup=2)
    assert res["runner_version"] == runner.RUNNER_VERSION and res["kind"] == "cascade"
    assert sum(res["exit_fractions"]) == pytest.approx(1.0) and len(res["exit_fractions"]) == 3
    assert sum(res["timed_exit_fractions"]) == pytest.approx(1.0)
    lat = res["latency_ms"]
    assert lat["n"] == 30 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # The runner's exit rule is the library's (the runner cannot import it): same exits, same accuracy.
    thr = [np.inf if t is None else t for t in json.loads(manifest.read_text())["thresholds"]]
    probs = exit_probabilities(net, torch.from_numpy(ds.normalize(ds.test.x)))
    pred, exits = cascade_predict(probs, thr)
    assert res["accuracy"] == pytest.approx(float((pred == ds.test.y).mean()))
    assert res["exit_fractions"] == pytest.approx((np.bincount(exits, minlength=3) / len(exits)).tolist())


def test_runner_cli_on_a_tflite_cascade(cascade_dir: tuple[Path, dict[str, Any]]) -> None:
    d, _ = cascade_dir
    proc = subprocess.run([sys.executable, "-m", "edgecompress.deploy.runner", "--model",
                           str(d / "fp32.tflite.cascade.json"), "--data", str(d / "testset.npz"), "--threads", "1",
                           "--runs", "20", "--warmup", "1"], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    res = json.loads(lines[0])
    assert sum(res["exit_fractions"]) == pytest.approx(1.0) and res["runtime"]["xnnpack"] is True


def test_runner_names_a_missing_segment(cascade_dir: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    d, _ = cascade_dir
    for f in ("fp32.onnx.cascade.json", "segment0.fp32.onnx", "segment2.fp32.onnx", "testset.npz"):
        shutil.copy(d / f, tmp_path / f)  # segment1 left behind
    with pytest.raises(RunnerError, match=r"segment 1 file .*segment1.fp32.onnx does not exist"):
        runner.run(tmp_path / "fp32.onnx.cascade.json", data=tmp_path / "testset.npz")
    rc = runner.main(["--model", str(tmp_path / "fp32.onnx.cascade.json")])
    assert rc == 2


def test_runner_rejects_a_bad_manifest(trained: tuple[EarlyExitNet, Dataset, dict[str, Any]],
                                       cascade_dir: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    net, _, _ = trained
    d, res = cascade_dir
    for k in range(3):
        shutil.copy(d / f"segment{k}.fp32.onnx", tmp_path / f"segment{k}.fp32.onnx")
    m = json.loads((d / "fp32.onnx.cascade.json").read_text())
    (tmp_path / "cascade.json").write_text(json.dumps({**m, "thresholds": [0.5]}))
    with pytest.raises(RunnerError, match="3 segments need 2 thresholds"):
        runner.run(tmp_path / "cascade.json")
    with pytest.raises(RunnerError, match="drop --sidecar and --batch"):
        runner.run(tmp_path / "cascade.json", batch=4)
    with pytest.raises(EdgeCompressError, match="need as many thresholds"):
        write_manifest(tmp_path / "x.cascade.json", res["fp32.onnx"]["segments"], [0.5], META, net)
