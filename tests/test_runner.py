"""The standalone runner: tiny ONNX and TFLite models built here, run as a CLI and as functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import gemm_onnx
from edgecompress.deploy import runner
from edgecompress.deploy.runner import RunnerError

MEAN, STD = [0.3], [0.4]
RESULT_KEYS = {"runner_version", "model", "model_size_bytes", "runtime", "provider_fallback", "requested_providers",
               "active_providers", "bench", "latency_ms", "throughput_per_s", "accuracy", "nll", "ece", "accuracy_samples",
               "memory", "fingerprint", "warnings",
               # runner 5 (issue #28)
               "samples_ms", "rounds", "conditions", "sustained", "accuracy_subset"}


def _sidecar(fmt: str, layout: str, shape: list[int]) -> dict[str, Any]:
    return {"format": fmt, "precision": "fp32", "input_name": "input", "output_name": "logits", "input_shape": shape,
            "layout": layout, "input_dtype": "float32", "output_dtype": "float32", "input_quant": None,
            "output_quant": None, "mean": MEAN, "std": STD, "class_names": ["a", "b", "c"], "num_classes": 3,
            "parent": "test", "params_hash": "0"}


def _logits(x_uint8: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference: normalize, flatten (C=1, so NCHW and NHWC flatten alike), affine."""
    x = (x_uint8.astype(np.float32) / 255.0 - MEAN[0]) / STD[0]
    return x.reshape(len(x), -1) @ w + b


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (37, 1, 4, 4), dtype=np.uint8)  # 37: not a multiple of the batch sizes used
    y = rng.integers(0, 3, 37).astype(np.int64)
    path = tmp_path_factory.mktemp("data") / "testset.npz"
    np.savez(path, x=x, y=y)
    return path, x, y


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Flatten + Gemm over N x 1 x 4 x 4, 3 classes, dynamic batch."""
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    w, b = gemm_onnx(path, np.random.default_rng(1))
    Path(f"{path}.json").write_text(json.dumps(_sidecar("onnx", "NCHW", [1, 1, 4, 4])))
    return path, w, b


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Flatten + Linear over 1 x 4 x 4 x 1 (NHWC), converted with litert_torch (takes a few seconds)."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    path = tmp_path_factory.mktemp("tflite") / "fp32.tflite"
    edge = litert_torch.convert(module, (torch.randn(1, 4, 4, 1),))
    edge.export(str(path))
    Path(f"{path}.json").write_text(json.dumps(_sidecar("tflite", "NHWC", [1, 4, 4, 1])))
    lin = module[1]
    return path, lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()


def _cli(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "edgecompress.deploy.runner", *args], capture_output=True, text=True,
                          timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr  # exactly one JSON object on stdout
    return proc.returncode, json.loads(lines[0])


def _check_latency(res: dict[str, Any], n: int) -> None:
    lat = res["latency_ms"]
    assert lat["n"] == n
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


def test_onnx_cli(onnx_model: Any, data: Any) -> None:
    model, w, b = onnx_model
    npz, x, y = data
    rc, res = _cli("--model", str(model), "--data", str(npz), "--warmup", "2", "--runs", "25", "--threads", "1")
    assert rc == 0, res
    assert RESULT_KEYS <= set(res)
    _check_latency(res, 25)
    assert res["accuracy"] == pytest.approx(float((_logits(x, w, b).argmax(1) == y).mean()))
    assert res["accuracy_samples"] == len(x) and res["accuracy_subset"] is None  # every image: no subset
    assert res["runtime"]["name"] == "onnxruntime" and res["runtime"]["threads"] == 1
    assert res["active_providers"] == ["CPUExecutionProvider"] and res["provider_fallback"] is False
    assert res["model_size_bytes"] == model.stat().st_size
    assert res["memory"]["peak_rss_mb"] > 0
    fp = res["fingerprint"]
    assert {"hostname", "arch", "cpu_model", "cores", "os", "python", "numpy", "runtime", "runtime_version"} <= set(fp)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux-only")
def test_peak_rss_is_the_runners_own_not_its_parents(onnx_model: Any) -> None:
    # ru_maxrss survives exec on Linux: a runner started by a stage with torch loaded reported
    # the stage's 220 MB instead of its own ~50 MB. Hold 400 MB here and spawn the runner.
    ballast = np.ones(50_000_000)
    rc, res = _cli("--model", str(onnx_model[0]), "--warmup", "1", "--runs", "3")
    assert rc == 0, res
    assert res["memory"]["peak_rss_mb"] < 300
    del ballast


def test_onnx_functions_batch_and_subset(onnx_model: Any, data: Any) -> None:
    model, w, b = onnx_model
    npz, x, y = data
    res = runner.run(model, data=npz, warmup=0, runs=5, batch=4, accuracy_samples=30)
    _check_latency(res, 5)
    assert res["bench"]["batch"] == 4 and res["accuracy_samples"] == 30
    # A seeded, class-stratified subset (issue #28), not the first 30 images.
    idx = runner.stratified_subset(y, 30, seed=0)
    assert len(idx) == 30 and not np.array_equal(idx, np.arange(30))
    assert res["accuracy_subset"] == {"n": 30, "seed": 0, "rule": "class-stratified"}
    assert res["accuracy"] == pytest.approx(float((_logits(x[idx], w, b).argmax(1) == y[idx]).mean()))
    # NLL and ECE as edgecompress.metrics computes them (the runner carries its own numpy copy).
    from edgecompress.metrics import classification_metrics, softmax

    ref = classification_metrics(softmax(_logits(x[idx], w, b).astype(np.float64)), y[idx])
    assert res["nll"] == pytest.approx(ref["nll"], rel=1e-5) and res["ece"] == pytest.approx(ref["ece"], abs=1e-6)
    assert res["ece"] > 0 and res["nll"] > 0
    session = runner.load_session(model, "onnxruntime")
    sc = runner.read_sidecar(f"{model}.json")
    out = runner.postprocess(session.run(runner.preprocess(x[:3], sc)), sc)
    np.testing.assert_allclose(out, _logits(x[:3], w, b), rtol=1e-5, atol=1e-5)


def test_cuda_request_reports_fallback(onnx_model: Any) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; no fallback to observe")
    rc, res = _cli("--model", str(onnx_model[0]), "--runs", "3", "--warmup", "0",
                   "--providers", "CUDAExecutionProvider,CPUExecutionProvider")
    assert rc == 0, res
    assert res["provider_fallback"] is True
    assert res["requested_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert res["active_providers"] == ["CPUExecutionProvider"]
    assert any("CUDAExecutionProvider" in w for w in res["warnings"])
    assert res["accuracy"] is None  # no --data: timed on random inputs only


def test_missing_model_is_error_json(tmp_path: Path) -> None:
    rc, res = _cli("--model", str(tmp_path / "nope.onnx"))
    assert rc == 2
    assert set(res) == {"error"} and "nope.onnx does not exist" in res["error"]


def test_corrupt_model_and_missing_sidecar(tmp_path: Path, onnx_model: Any) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    Path(f"{bad}.json").write_text(json.dumps(_sidecar("onnx", "NCHW", [1, 1, 4, 4])))
    rc, res = _cli("--model", str(bad), "--runs", "1")
    assert rc == 2 and "onnxruntime cannot load" in res["error"]
    with pytest.raises(RunnerError, match="sidecar .* does not exist"):
        runner.run(onnx_model[0], sidecar=tmp_path / "missing.json")
    with pytest.raises(RunnerError, match="test set .* does not exist"):
        runner.run(onnx_model[0], data=tmp_path / "missing.npz")


def test_stale_sidecar_shape_is_reported(tmp_path: Path, onnx_model: Any, data: Any) -> None:
    sc = tmp_path / "wrong.json"
    sc.write_text(json.dumps(_sidecar("onnx", "NCHW", [1, 1, 8, 8])))
    with pytest.raises(RunnerError, match="model wants"):
        runner.run(onnx_model[0], sidecar=sc, data=data[0], runs=1)


def test_tflite_functions_and_cli(tflite_model: Any, data: Any) -> None:
    model, w, b = tflite_model
    npz, x, y = data
    expected = float((_logits(x, w, b).argmax(1) == y).mean())
    res = runner.run(model, data=npz, warmup=1, runs=10, threads=1)
    _check_latency(res, 10)
    assert res["accuracy"] == pytest.approx(expected)
    assert res["runtime"]["delegate"] == "xnnpack" and res["provider_fallback"] is False
    # litert_torch bakes batch 1 into the Reshape today: then resizing must fail clearly, not crash.
    try:
        res = runner.run(model, data=npz, warmup=0, runs=3, batch=5)
    except RunnerError as e:
        assert "fixed batch size of 1 and cannot run batch 5" in str(e)
    else:
        assert res["bench"]["batch"] == 5 and res["accuracy"] == pytest.approx(expected)
    rc, res = _cli("--model", str(model), "--data", str(npz), "--runs", "7", "--warmup", "1", "--no-xnnpack")
    assert rc == 0, res
    _check_latency(res, 7)
    assert res["accuracy"] == pytest.approx(expected)
    assert res["runtime"]["xnnpack"] is False and res["runtime"]["delegate"] == "none"


def test_preprocess_int8_nhwc_and_dequantize() -> None:
    sc = {"mean": [0.5], "std": [0.5], "layout": "NHWC", "input_dtype": "int8",
          "input_quant": {"scale": 1 / 200, "zero_point": -3}, "output_quant": {"scale": 0.5, "zero_point": 2}}
    x = np.array([0, 255, 128, 64], np.uint8).reshape(1, 1, 2, 2)
    q = runner.preprocess(x, sc)
    assert q.dtype == np.int8 and q.shape == (1, 2, 2, 1)
    f = (x.astype(np.float32) / 255 - 0.5) / 0.5
    want = np.clip(np.round(f * 200) - 3, -128, 127).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(q, want)
    assert q.min() == -128 and q.max() == 127  # out-of-range values clip, never wrap around
    y = runner.postprocess(np.array([[2, 4, -128]], np.int8), sc)
    np.testing.assert_allclose(y, [[0.0, 1.0, -65.0]])
    with pytest.raises(RunnerError, match="no input_quant"):
        runner.preprocess(x, {**sc, "input_quant": None})


def test_latency_stats_and_rss() -> None:
    stats = runner.latency_stats([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert stats["p50"] == pytest.approx(2.5) and stats["n"] == 4 and stats["max"] == 4.0
    assert runner.peak_rss_mb() is None or runner.peak_rss_mb() > 1
