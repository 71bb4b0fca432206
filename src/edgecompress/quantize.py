"""Static int8 quantization calibrated on representative data, for ONNX Runtime and LiteRT.

One calibration set (chosen once by the calibrate stage and saved) feeds both backends, so the
int8 ONNX and the int8 TFLite models are calibrated on exactly the same images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SELECTIONS = ("random", "class_balanced")


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration set and range-estimation method for static int8 quantization."""

    samples: int = 512
    method: str = "minmax"  # activation range estimation: minmax | entropy | percentile
    percentile: float = 99.999  # only for method=percentile
    per_channel: bool = True  # per-output-channel weight scales (needed for depthwise convs)
    selection: str = "class_balanced"  # random | class_balanced
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise EdgeCompressError(f"invalid value samples={self.samples!r}: must be >= 1")
        if self.method not in CALIBRATION_METHODS:
            raise EdgeCompressError(f"invalid value method={self.method!r}: allowed {list(CALIBRATION_METHODS)}")
        if not 0 < self.percentile <= 100:
            raise EdgeCompressError(f"invalid value percentile ({self.percentile}) should be within (0, 100]")
        if self.selection not in SELECTIONS:
            raise EdgeCompressError(f"invalid value selection={self.selection!r}: allowed {list(SELECTIONS)}")


def select_calibration(y: np.ndarray, cfg: CalibrationConfig) -> np.ndarray:
    """Indices of the calibration images among the training labels ``y`` (seeded)."""
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.samples, len(y))
    if cfg.selection == "random":
        return np.sort(rng.choice(len(y), size=n, replace=False))
    # Class-balanced: round-robin over classes so rare classes still set the activation ranges.
    classes = np.unique(y)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in classes]
    picked: list[int] = []
    while len(picked) < n:
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return np.sort(np.array(picked, dtype=np.int64))


def quantize_onnx(fp32_path: Path, out_path: Path, calib: np.ndarray, cfg: CalibrationConfig,
                  input_name: str = "input") -> None:
    """Static QDQ int8 quantization of an ONNX model with onnxruntime, calibrated on ``calib``.

    ``calib`` is normalized float32 NCHW. Weights and activations are int8 (symmetric weights,
    per channel if configured), which is what ORT's CPU int8 kernels are fastest with.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    extra: dict[str, Any] = {}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    pre = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=cfg.per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra)
    except Exception as e:
        raise EdgeCompressError(f"onnxruntime static quantization of {fp32_path} failed: {e}") from e
    finally:
        pre.unlink(missing_ok=True)


def quantize_pt2e(module: Any, example: tuple[Any, ...], calib: np.ndarray, cfg: CalibrationConfig) -> tuple[Any, Any]:
    """PT2E int8 quantization for LiteRT: returns (converted module, quantizer).

    Weights symmetric int8 (per channel if configured), activations int8 observed on ``calib``
    one image at a time (the exported graph is specialised to batch 1). torchao has no entropy or
    percentile observer: both map to its histogram observer, which also clips outliers (it picks
    the range minimising quantization error); ``tflite_observer(cfg)`` names what was used.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e as qpt2e

    exported = torch.export.export(module, example).module()
    qconfig = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=cfg.per_channel)
    if cfg.method == "minmax":
        # LiteRT's default activation observer is a histogram (L2-optimal clipping); honour minmax.
        from torchao.quantization.pt2e.observer import MinMaxObserver

        act = dataclasses.replace(qconfig.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        qconfig = dataclasses.replace(qconfig, input_activation=act, output_activation=act)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(qconfig)
    prepared = qpt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    return qpt2e.convert_pt2e(prepared, fold_quantize=False), quantizer


def tflite_observer(cfg: CalibrationConfig) -> str:
    """The activation observer the TFLite int8 export actually uses for ``cfg.method``."""
    return "MinMaxObserver" if cfg.method == "minmax" else "HistogramObserver"
