"""Exported artifacts: structure (QDQ nodes, int8 I/O) and agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgecompress.artifacts import DEFAULT_FORMATS as ARTIFACTS
from edgecompress.compression.export import export_all, io_details, run_artifact
from edgecompress.compression.onnx import export_onnx, export_onnx_int8
from edgecompress.compression.calibrate import CalibrationConfig, select_calibration

from conftest import make_blobs, trained_student

META = {"data": {"input_shape": [1, 12, 12], "mean": [0.0], "std": [1.0], "class_names": ["a", "b", "c", "d"]}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The four artifacts of a tiny trained student, exported once for the module."""
    x, y = make_blobs()
    model = trained_student((x, y))
    out = tmp_path_factory.mktemp("export")
    xn, yn = x.numpy(), y.numpy()
    results = export_all(model, META, out, xn[:64], CalibrationConfig(samples=64), xn, yn, "parent.pt", "abc",
                         x_val=xn[128:], y_val=yn[128:])
    with torch.no_grad():
        ref = model(x).numpy()
    return out, results, model, xn, yn, ref


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_all_artifacts_and_sidecars_written(exported) -> None:
    out, results, *_ = exported
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".json")) == sorted(ARTIFACTS)
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0
        side = json.loads((out / f"{name}.json").read_text())
        assert side["class_names"] == ["a", "b", "c", "d"] and side["parent"] == "parent.pt"
        assert side["params_hash"] == "abc" and side["mean"] == [0.0]
        assert side["layout"] == ("NCHW" if name.endswith("onnx") else "NHWC")
        # ONNX takes any batch (input_shape's 1 is an example); TFLite graphs are fixed at batch 1.
        assert side["dynamic_batch"] is name.endswith("onnx")


def test_fp32_artifacts_match_pytorch(exported) -> None:
    out, results, _, x, _, ref = exported
    for name in ("fp32.onnx", "fp32.tflite"):
        side = json.loads((out / f"{name}.json").read_text())
        np.testing.assert_allclose(run_artifact(out / name, side, x), ref, atol=1e-4, rtol=1e-4)
        assert results[name]["top1_agreement"] == 1.0


def test_int8_onnx_has_qdq_nodes_around_every_conv(exported) -> None:
    out, results, *_ = exported
    graph = onnx.load(str(out / "int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    n_conv = ops.count("Conv")
    assert n_conv == 7  # stem + 3 x (dw + pw)
    assert ops.count("QuantizeLinear") >= n_conv
    assert ops.count("DequantizeLinear") >= 2 * n_conv  # activation + weight per conv
    # Per-channel weights: some DequantizeLinear has a vector scale.
    inits = {i.name: i for i in graph.initializer}
    vector_scales = [n for n in graph.node if n.op_type == "DequantizeLinear"
                     and n.input[1] in inits and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1]
    assert vector_scales
    assert results["int8.onnx"]["top1_agreement"] >= 0.95


def test_int8_tflite_is_full_integer(exported) -> None:
    out, results, *_ = exported
    io = io_details(out / "int8.tflite")
    assert io["input_dtype"] == "int8" and io["output_dtype"] == "int8"
    assert io["input_quant"]["scale"] > 0 and io["output_quant"]["scale"] > 0
    assert io["input_shape"] == [1, 12, 12, 1]
    assert results["int8.tflite"]["top1_agreement"] >= 0.95
    assert results["int8.tflite"]["size_bytes"] < results["fp32.tflite"]["size_bytes"]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_quantize(tmp_path, tiny_student, calib_data, method) -> None:
    export_onnx(tiny_student, (1, 12, 12), tmp_path / "fp32.onnx")
    export_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib_data,
                     CalibrationConfig(method=method, samples=32))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node]
    assert "QuantizeLinear" in ops


def test_class_balanced_selection() -> None:
    y = np.array([0] * 90 + [1] * 10)
    idx = select_calibration(y, CalibrationConfig(samples=20, selection="class_balanced"))
    assert len(idx) == 20 and (y[idx] == 1).sum() == 10
    assert np.array_equal(idx, select_calibration(y, CalibrationConfig(samples=20, selection="class_balanced")))


def test_fp16_artifacts(exported) -> None:
    out, results, _, x, _, ref = exported
    graph = onnx.load(str(out / "fp16.onnx")).graph
    big = [i for i in graph.initializer if np.prod(i.dims) > 1]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    side = json.loads((out / "fp16.onnx.json").read_text())
    assert side["keep_io_types"] is True and side["input_dtype"] == "float32" and side["precision"] == "fp16"
    np.testing.assert_allclose(run_artifact(out / "fp16.onnx", side, x), ref, atol=1e-2, rtol=1e-2)
    tside = json.loads((out / "fp16.tflite.json").read_text())
    assert tside["input_dtype"] == "float32" and tside["weights"] == "float16"
    np.testing.assert_allclose(run_artifact(out / "fp16.tflite", tside, x), ref, atol=1e-2, rtol=1e-2)
    from ai_edge_litert.interpreter import Interpreter

    dtypes = {d["dtype"] for d in Interpreter(model_path=str(out / "fp16.tflite")).get_tensor_details()}
    assert np.float16 in dtypes
    assert results["fp16.onnx"]["top1_agreement"] == 1.0 and results["fp16.tflite"]["top1_agreement"] == 1.0


def test_int8_onnx_accuracy_report_in_metrics_and_sidecar(exported) -> None:
    out, results, *_ = exported
    side = json.loads((out / "int8.onnx.json").read_text())
    assert side["float_layers"] == [] and results["int8.onnx"]["float_layers"] == []
    assert results["int8.onnx"]["accuracy_aware"]["checked"] is True


def test_runner_runs_fp16_onnx_with_float32_input(exported, tmp_path) -> None:
    import subprocess
    import sys

    out, *_ = exported
    cmd = [sys.executable, "-m", "edgecompress.deploy.runner", "--model", str(out / "fp16.onnx"), "--runs", "3",
           "--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    res = json.loads(proc.stdout)
    assert "error" not in res, res
    assert res["precision"] == "fp16" and res["latency_ms"]["n"] == 3
