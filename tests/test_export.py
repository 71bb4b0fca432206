"""Exported artifacts: structure (QDQ nodes, int8 I/O) and agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.export import export_all, export_onnx, export_onnx_int8, io_details, run_artifact
from edgecompress.quantize import CalibrationConfig, select_calibration

from conftest import make_blobs, trained_student

META = {"data": {"input_shape": [1, 12, 12], "mean": [0.0], "std": [1.0], "class_names": ["a", "b", "c", "d"]}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The four artifacts of a tiny trained student, exported once for the module."""
    x, y = make_blobs()
    model = trained_student((x, y))
    out = tmp_path_factory.mktemp("export")
    xn, yn = x.numpy(), y.numpy()
    results = export_all(model, META, out, xn[:64], CalibrationConfig(samples=64), xn, yn, "parent.pt", "abc")
    with torch.no_grad():
        ref = model(x).numpy()
    return out, results, model, xn, yn, ref


def test_all_artifacts_and_sidecars_written(exported) -> None:
    out, results, *_ = exported
    for name in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite"):
        assert (out / name).stat().st_size > 0
        side = json.loads((out / f"{name}.json").read_text())
        assert side["class_names"] == ["a", "b", "c", "d"] and side["parent"] == "parent.pt"
        assert side["params_hash"] == "abc" and side["mean"] == [0.0]
        assert side["layout"] == ("NCHW" if name.endswith("onnx") else "NHWC")


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


@pytest.mark.parametrize("kw, match", [
    ({"method": "kl"}, "allowed"), ({"percentile": 120}, r"percentile \(120\)"),
    ({"samples": 0}, "samples"), ({"selection": "kcenter"}, "allowed"),
])
def test_calibration_config_errors(kw, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        CalibrationConfig(**kw)
