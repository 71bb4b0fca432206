"""benchmarks/scale.py's pieces: the MobileNetV2 it times and how it reads target profiles (fast; no export, no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its `import harness`, as `python benchmarks/scale.py` finds it
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def test_mobilenetv2_has_the_standard_size(scale: ModuleType) -> None:
    model = scale.MobileNetV2().eval()
    assert scale.count_params(model) == 3_504_872  # the reference MobileNetV2 1.0 (1000 classes)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)


def test_channel_pruning_halves_a_small_mobilenetv2(scale: ModuleType) -> None:
    torch.manual_seed(0)
    model = scale.set_bn_stats(scale.MobileNetV2(num_classes=10, width=0.25), scale.normalize(scale.synthetic(8, 32, 0)))
    before = scale.count_params(model)
    pruned = scale.prune_channels(model, (3, 32, 32), 0.5, scale.PruneConfig(ratio=0.5, round_to=8))
    with torch.no_grad():
        assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert scale.count_params(pruned) < 0.6 * before


def test_profile_rules_read_old_and_build_style_profiles(scale: ModuleType) -> None:
    old = {"artifact": {"format": "tflite", "precision": "int8"}, "runtime": {"engine": "litert", "threads": 1},
           "budgets": {"latency_ms": {"p50": 1.0}, "size_mb": 0.125}}
    new = {"build": {"models": "all", "engines": ["onnxruntime"], "precisions": ["fp32", "fp16"]},
           "runtime": {"threads": None}, "budgets": {"latency_ms": {"p50": 2.0}}}
    ro, rn = scale.profile_rules(old, 8), scale.profile_rules(new, 8)
    assert (ro["engines"], ro["precisions"], ro["column"], ro["size_mb"]) == (["litert"], ["int8"], 1, 0.125)
    assert (rn["engines"], rn["precisions"], rn["column"], rn["size_mb"]) == (["onnxruntime"], ["fp32", "fp16"], 8, None)
    get = {("mbv2", 96, "int8.tflite", 1): {"p50": 1.5, "p90": 3.0, "size_bytes": 2**20}}
    assert scale.fits(get, ro, "mbv2", "int8.tflite", 96) == "p50 1.5>1 ms; size 1>0.125 MiB"
    assert scale.fits(get, rn, "mbv2", "int8.tflite", 96) == "-"  # measured at 1 thread only; rn wants 8
    assert [a for _, a in scale.allowed(rn)] == ["fp32.onnx", "fp16.onnx"] * 2
