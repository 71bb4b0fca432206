"""Quantization options: k-center calibration sets, accuracy-aware int8 ONNX, dynamic int8, QAT, configs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.compression.export import ExportConfig, export_all, export_onnx, export_onnx_dynamic, export_onnx_int8
from edgecompress.compression.qat import QATConfig
from edgecompress.compression.calibrate import CalibrationConfig, embeddings, kcenter_greedy, select_calibration
from edgecompress.config import from_dict

from conftest import make_blobs, trained_student

META = {"data": {"input_shape": [1, 12, 12], "mean": [0.0], "std": [1.0], "class_names": ["a", "b", "c", "d"]}}


@pytest.fixture(scope="module")
def student():
    x, y = make_blobs()
    return trained_student((x, y)), x.numpy(), y.numpy()


def test_kcenter_covers_every_cluster() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8)) * 20
    # Very unequal clusters: random sampling of 6 points would usually miss the small ones.
    sizes = [500, 300, 100, 20, 5, 2]
    emb = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centres, sizes)])
    labels = np.repeat(np.arange(6), sizes)
    idx = select_calibration(labels, CalibrationConfig(samples=6, selection="kcenter"), embeddings=emb)
    assert sorted(labels[idx].tolist()) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(idx, kcenter_greedy(emb, 6, seed=0))  # deterministic for a seed


def test_kcenter_handles_duplicates_and_needs_embeddings() -> None:
    emb = np.zeros((10, 3))
    idx = kcenter_greedy(emb, 4)
    assert len(set(idx.tolist())) == 4
    with pytest.raises(EdgeCompressError, match="embeddings"):
        select_calibration(np.zeros(10, int), CalibrationConfig(samples=4, selection="kcenter"))
    with pytest.raises(EdgeCompressError, match="3 embeddings for 10 labels"):
        select_calibration(np.zeros(10, int), CalibrationConfig(samples=4, selection="kcenter"), np.zeros((3, 2)))


def test_embeddings_are_pooled_features(student) -> None:
    model, x, _ = student
    emb = embeddings(model, x[:10])
    assert emb.shape == (10, model.fc.in_features)
    with torch.no_grad():
        ref = model.features(torch.from_numpy(x[:10])).mean((2, 3)).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-6)


def test_sensitivity_fallback_keeps_the_worst_layer_in_float(student, tmp_path) -> None:
    model, x, y = student
    export_onnx(model, (1, 12, 12), tmp_path / "fp32.onnx")
    # A negative max_drop can never be met: the fallback must run and keep max_float_layers=1 layer.
    cfg = CalibrationConfig(samples=32, max_drop=-100.0, max_float_layers=1)
    report = export_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x[:32], cfg, x[128:], y[128:])
    assert report["checked"] and len(report["float_layers"]) == 1 and report["within_bound"] is False
    sens = report["sensitivity"]
    assert len(sens) == 8  # 7 convs + the classifier's Gemm
    assert report["float_layers"][0] == sens[0]["layer"]
    accs = [r["val_accuracy_if_float"] for r in sens]
    assert accs == sorted(accs, reverse=True)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    kept = by_name[report["float_layers"][0]]
    assert kept.op_type in ("Conv", "Gemm")
    # Weights and bias of the float layer are plain float initializers, not dequantized int8.
    for name in kept.input[1:]:
        assert name in inits and producer.get(name) != "DequantizeLinear"
    # Every other weighted layer is still quantized.
    others = [n for n in graph.node if n.op_type in ("Conv", "Gemm") and n.name != kept.name]
    assert len(others) == 7 and all(producer.get(n.input[1]) == "DequantizeLinear" for n in others)


def test_no_fallback_when_within_bound(student, tmp_path) -> None:
    model, x, y = student
    export_onnx(model, (1, 12, 12), tmp_path / "fp32.onnx")
    report = export_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x[:32],
                              CalibrationConfig(samples=32, max_drop=100.0), x[128:], y[128:])
    assert report["checked"] and report["within_bound"] and report["float_layers"] == []
    assert "sensitivity" not in report  # the analysis only runs when the drop is too large


def test_dynamic_onnx_has_int8_weights(student, tmp_path) -> None:
    model, x, _ = student
    export_onnx(model, (1, 12, 12), tmp_path / "fp32.onnx")
    export_onnx_dynamic(tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx")
    graph = onnx.load(str(tmp_path / "dynamic.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "DynamicQuantizeLinear" in ops and "ConvInteger" in ops and "MatMulInteger" in ops
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and np.prod(i.dims) > 1]
    assert len(int8_weights) >= 8
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = sess.run(None, {"input": x})[0]
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_qat_int8_tflite_runs_and_agrees(student, tmp_path) -> None:
    """QAT fine-tunes, converts and exports a full-integer int8 TFLite; dynamic.onnx rides along."""
    model, x, y = student
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ecfg = ExportConfig(formats=("int8.tflite",), dynamic=True,
                        qat=QATConfig(enabled=True, epochs=1, lr=1e-3, batch_size=32))
    results = export_all(model, META, tmp_path, x[:32], CalibrationConfig(samples=32), x, y, "p.pt", "h",
                         export_cfg=ecfg, train=(x, y))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamic.onnx", "dynamic.onnx.json",
                                                          "int8.tflite", "int8.tflite.json"]
    side = json.loads((tmp_path / "int8.tflite.json").read_text())
    assert side["input_dtype"] == "int8" and side["output_dtype"] == "int8" and side["qat"]["enabled"] is True
    assert side["calibration"] is None  # ranges were learned by QAT, not calibrated
    assert results["int8.tflite"]["top1_agreement"] >= 0.9
    assert len(results["int8.tflite"]["qat"]["history"]) == 1
    dside = json.loads((tmp_path / "dynamic.onnx.json").read_text())
    assert dside["weights"] == "int8" and results["dynamic.onnx"]["top1_agreement"] >= 0.95
    for k, v in model.state_dict().items():  # QAT trained a copy
        assert torch.equal(v, before[k])


def test_export_config_from_dict() -> None:
    cfg = from_dict(ExportConfig, {"formats": ["fp32.onnx", "fp16.tflite"], "dynamic": True,
                                  "qat": {"enabled": True, "epochs": 2, "lr": 0.001}})
    assert cfg.artifacts == ("fp32.onnx", "dynamic.onnx", "fp16.tflite")
    assert cfg.qat == QATConfig(enabled=True, epochs=2, lr=0.001)
    assert ExportConfig().artifacts == ("fp32.onnx", "int8.onnx", "fp16.onnx", "fp32.tflite", "int8.tflite",
                                        "fp16.tflite")


@pytest.mark.parametrize("build, match", [
    (lambda: CalibrationConfig(method="kl"), "allowed"),
    (lambda: CalibrationConfig(percentile=120), r"percentile \(120\)"),
    (lambda: CalibrationConfig(samples=0), "samples"),
    (lambda: CalibrationConfig(selection="farthest"), "allowed"),
    (lambda: CalibrationConfig(max_drop="half"), "max_drop"),
    (lambda: CalibrationConfig(max_drop=float("nan")), "max_drop"),
    (lambda: CalibrationConfig(val_samples=0), "val_samples"),
    (lambda: CalibrationConfig(max_float_layers=0), "max_float_layers"),
    (lambda: QATConfig(epochs=0), "qat.epochs"),
    (lambda: QATConfig(lr=0), "qat.lr"),
    (lambda: QATConfig(enabled="yes"), "qat.enabled"),
    (lambda: QATConfig(batch_size=1), "qat.batch_size"),
    (lambda: ExportConfig(formats=("int4.onnx",)), r"unknown artifact\(s\) \['int4.onnx'\]"),
    (lambda: ExportConfig(formats=()), "non-empty"),
    (lambda: ExportConfig(formats="fp32.onnx"), "non-empty"),
    (lambda: ExportConfig(formats=("fp32.onnx", "fp32.onnx")), "twice"),
    (lambda: ExportConfig(dynamic="yes"), "dynamic"),
    (lambda: from_dict(ExportConfig, {"qat": {"epoch": 1}}, "params.yaml:export"),
     r"params.yaml:export.qat: unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    (lambda: from_dict(ExportConfig, {"qat": True}), "qat=True: must be a mapping"),
    (lambda: from_dict(ExportConfig, {"format": []}), r"unknown key 'format' \(did you mean 'formats'\?\)"),
])
def test_config_errors(build, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        build()
