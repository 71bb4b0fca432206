"""Shared fixtures: tiny synthetic models and data (milliseconds, no real dataset)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecompress.models import MobileNetStudent, ResNetTeacher

# Under pytest-xdist (-n N) the workers share the cores: each worker's torch takes its share, not all of them
# (two workers with a thread per core each would contend for the cores).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def tiny_student() -> MobileNetStudent:
    torch.manual_seed(0)
    return MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]).eval()


@pytest.fixture
def tiny_teacher() -> ResNetTeacher:
    torch.manual_seed(0)
    return ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8).eval()


def make_blobs(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 4-class problem on 1x12x12 images: the class sets which quadrant is bright."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        r, s = divmod(c, 2)
        x[i, 0, r * 6:(r + 1) * 6, s * 6:(s + 1) * 6] += 2.0
    return x, y


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    return make_blobs()


def trained_student(blobs: tuple[torch.Tensor, torch.Tensor]) -> MobileNetStudent:
    from edgecompress.training.loop import TrainConfig, fit

    torch.manual_seed(0)
    m = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    fit(m, *blobs, TrainConfig(epochs=4, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    return m.eval()


@pytest.fixture
def calib_data(blobs: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    return blobs[0][:32].numpy()


def gemm_onnx(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Write a Flatten + Gemm ONNX model (N x 1 x 4 x 4 -> 3 classes, dynamic batch); returns (W, B)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = rng.normal(size=(16, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.14
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return w, b


def tiny_export_dir(d: Path, seed: int, n_acc: int = 40) -> tuple[Path, Path, float]:
    """An export-stage-like directory: fp32.onnx + sidecar + 40-image testset.npz.

    Returns (dir, testset, accuracy on the first ``n_acc`` images computed with numpy).
    """
    rng = np.random.default_rng(seed)
    w, b = gemm_onnx(d / "fp32.onnx", rng)
    (d / "fp32.onnx.json").write_text(json.dumps({
        "format": "onnx", "precision": "fp32", "input_name": "input", "output_name": "logits",
        "input_shape": [1, 1, 4, 4], "layout": "NCHW", "input_dtype": "float32", "output_dtype": "float32",
        "input_quant": None, "output_quant": None, "mean": [0.5], "std": [0.25], "num_classes": 3}))
    x = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, 40).astype(np.int64)
    np.savez(d / "testset.npz", x=x, y=y)
    logits = ((x[:n_acc].astype(np.float32) / 255 - 0.5) / 0.25).reshape(n_acc, -1) @ w + b
    return d, d / "testset.npz", float((logits.argmax(1) == y[:n_acc]).mean())
