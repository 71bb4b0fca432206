"""ONNX artifacts: fp32 export, static int8 QDQ (accuracy-aware), fp16 and dynamic int8.

The int8 export is accuracy-aware: when it loses more than ``max_drop`` accuracy points against
fp32 on a validation subset, a per-layer sensitivity analysis ranks the quantized layers by the
harm they do and keeps the worst ones in float until the drop is within bounds.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path
from edgecompress.log import get_logger


# ONNX ops the sensitivity analysis may keep in float (the ones carrying weights).
SENSITIVE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _reader(calib: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    return Reader()


def _quantize_static(pre_path: Path, out_path: Path, calib: np.ndarray | None, cfg: CalibrationConfig,
                     input_name: str = "input", nodes_to_exclude: list[str] | None = None,
                     cache: Path | None = None) -> None:
    """quantize_static on an already pre-processed model; ``cache`` reuses the calibrated ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]
    extra: dict[str, Any] = {}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    cached = cache is not None and cache.is_file()
    quantize_static(str(pre_path), str(out_path), None if cached or calib is None else _reader(calib, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method, extra_options=extra,
                    nodes_to_exclude=list(nodes_to_exclude or []),
                    calibration_cache_path=None if cache is None else str(cache))


def quantize_onnx(fp32_path: Path, out_path: Path, calib: np.ndarray, cfg: CalibrationConfig,
                  input_name: str = "input", nodes_to_exclude: list[str] | None = None) -> None:
    """Static QDQ int8 quantization of an ONNX model with onnxruntime, calibrated on ``calib``.

    ``calib`` is normalized float32 NCHW. Weights and activations are int8 (symmetric weights,
    per channel if configured), which is what ORT's CPU int8 kernels are fastest with. Nodes named
    in ``nodes_to_exclude`` (names as in the fp32 graph) stay in float.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        _quantize_static(pre, out_path, calib, cfg, input_name, nodes_to_exclude)
    except Exception as e:
        raise EdgeCompressError(f"onnxruntime static quantization of {fp32_path} failed: {e}") from e
    finally:
        pre.unlink(missing_ok=True)


def quantize_onnx_dynamic(fp32_path: Path, out_path: Path, per_channel: bool = True) -> None:
    """Dynamic (weight-only ahead of time) int8 ONNX: int8 weights, activations quantized per batch at run time.

    No calibration set; Conv becomes ConvInteger and MatMul/Gemm MatMulInteger behind
    DynamicQuantizeLinear, which ORT's CPU provider runs.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel)
    except Exception as e:
        raise EdgeCompressError(f"onnxruntime dynamic quantization of {fp32_path} failed: {e}") from e
    finally:
        pre.unlink(missing_ok=True)


def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session for ``path``; warnings and errors only (its info logs flood stage output)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = torch.get_num_threads()  # the cores this process may use (its share in a pool)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: np.ndarray, input_name: str = "input", batch_size: int = 500) -> list[np.ndarray]:
    """Every output of ``session`` on ``x``, run in batches and concatenated (one array per output)."""
    outs = [session.run(None, {input_name: x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _onnx_logits(path: Path, x: np.ndarray, input_name: str = "input") -> np.ndarray:
    return run_onnx(ort_session(path), x, input_name)[0]


def quantize_onnx_accuracy_aware(fp32_path: Path, out_path: Path, calib: np.ndarray, cfg: CalibrationConfig,
                                 x_val: np.ndarray | None, y_val: np.ndarray | None, input_name: str = "input",
                                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """int8 QDQ ONNX whose validation accuracy stays within ``cfg.max_drop`` points of fp32, if it can.

    1. Quantize everything (calibrating once; the ranges are cached for every later variant).
    2. If fp32 minus int8 accuracy on (``x_val``, ``y_val``) exceeds ``cfg.max_drop`` points: for each
       weighted layer (Conv/Gemm/MatMul), quantize all *but* that layer and measure validation accuracy
       (and logit MSE against fp32, the tie-breaker); the layer whose float copy recovers the most is
       the one whose quantization harms most.
    3. Keep layers in float (``nodes_to_exclude``) in that order, one at a time, until the drop is
       within bounds or ``cfg.max_float_layers`` are kept.

    Returns the report that the metrics and the sidecar carry (``float_layers`` names the layers kept
    in float, as named in the fp32 ONNX graph). Without validation data, or with ``max_drop`` null,
    it is plain static quantization and the report says the check was skipped.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    log = log or get_logger("quantize").info
    report: dict[str, Any] = {"max_drop_points": cfg.max_drop, "float_layers": [], "checked": False}
    with tempfile.TemporaryDirectory(prefix="edgecompress-q.") as td:
        tmp = Path(td)
        pre, cache = tmp / "pre.onnx", tmp / "calibration.json"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            _quantize_static(pre, out_path, calib, cfg, input_name, None, cache)
        except Exception as e:
            raise EdgeCompressError(f"onnxruntime static quantization of {fp32_path} failed: {e}") from e
        if cfg.max_drop is None or x_val is None or y_val is None or len(x_val) == 0:
            report["reason"] = "max_drop is null" if cfg.max_drop is None else "no validation data"
            return report
        x_val, y_val = x_val[:cfg.val_samples], y_val[:cfg.val_samples]
        ref = _onnx_logits(fp32_path, x_val, input_name)
        acc32 = float((ref.argmax(1) == y_val).mean())

        def evaluate(exclude: list[str], path: Path) -> tuple[float, float]:
            try:
                _quantize_static(pre, path, None, cfg, input_name, exclude, cache)
            except Exception as e:
                raise EdgeCompressError(f"onnxruntime static quantization of {fp32_path} "
                                        f"(float layers {exclude}) failed: {e}") from e
            logits = _onnx_logits(path, x_val, input_name)
            return float((logits.argmax(1) == y_val).mean()), float(((logits - ref) ** 2).mean())

        acc8 = float((_onnx_logits(out_path, x_val, input_name).argmax(1) == y_val).mean())
        drop = 100 * (acc32 - acc8)
        report.update({"checked": True, "val_samples": int(len(x_val)), "fp32_val_accuracy": acc32,
                       "int8_val_accuracy_all_quantized": acc8, "drop_points_all_quantized": drop,
                       "int8_val_accuracy": acc8, "drop_points": drop, "within_bound": drop <= cfg.max_drop})
        if drop <= cfg.max_drop:
            return report
        log(f"int8 ONNX loses {drop:.2f} points on {len(x_val)} validation images (max_drop {cfg.max_drop}); "
            f"per-layer sensitivity analysis")
        layers = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in SENSITIVE_OPS and n.name]
        sens = []
        for name in layers:
            acc, mse = evaluate([name], tmp / "variant.onnx")
            sens.append({"layer": name, "val_accuracy_if_float": acc, "recovered_points": 100 * (acc - acc8),
                         "logit_mse_if_float": mse})
        sens.sort(key=lambda r: (-r["val_accuracy_if_float"], r["logit_mse_if_float"]))
        report["sensitivity"] = sens
        excluded: list[str] = []
        best = tmp / "best.onnx"
        for row in sens[:cfg.max_float_layers]:
            excluded.append(row["layer"])
            acc, _ = evaluate(excluded, best)
            drop = 100 * (acc32 - acc)
            log(f"float {excluded}: validation accuracy {acc:.4f}, drop {drop:.2f} points")
            if drop <= cfg.max_drop:
                break
        shutil.copyfile(best, out_path)
        report.update({"float_layers": excluded, "int8_val_accuracy": acc, "drop_points": drop,
                       "within_bound": drop <= cfg.max_drop})
        if drop > cfg.max_drop:
            log(f"still {drop:.2f} points below fp32 with {len(excluded)} float layers (max_float_layers)")
    return report


@contextlib.contextmanager
def quiet() -> Any:
    # The converters print pages of MLIR progress and deprecation warnings; keep stage logs readable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """fp32 ONNX, single file (no external data), dynamic batch, input 'input' / output 'logits'."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, quiet():
        # The TorchScript exporter writes one self-contained file; opset 17 runs on every ORT >= 1.14.
        torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)


def export_onnx_int8(fp32_path: Path, path: Path, calib: np.ndarray, cfg: CalibrationConfig,
                     x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> dict[str, Any]:
    """int8 QDQ ONNX from the fp32 ONNX, calibrated on ``calib`` (normalized NCHW).

    With validation data it is accuracy-aware (layers kept in float while int8 loses more than
    ``cfg.max_drop`` points); returns that report (``float_layers`` and the measurements).
    """
    with atomic_path(path) as tmp:
        if x_val is None:
            quantize_onnx(fp32_path, tmp, calib, cfg)
            return {"max_drop_points": cfg.max_drop, "float_layers": [], "checked": False,
                    "reason": "no validation data"}
        return quantize_onnx_accuracy_aware(fp32_path, tmp, calib, cfg, x_val, y_val)


def export_onnx_fp16(fp32_path: Path, path: Path) -> None:
    """fp16 ONNX for GPU targets: float16 weights and compute, float32 input/output (keep_io_types).

    Clients keep feeding float32 (Cast nodes at the graph edges), so the runner and every sidecar
    consumer treat it like fp32.onnx.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    except Exception as e:
        raise EdgeCompressError(f"fp16 conversion of {fp32_path} failed: {type(e).__name__}: {e}") from e
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_onnx_dynamic(fp32_path: Path, path: Path, per_channel: bool = True) -> None:
    """Dynamic int8 ONNX (int8 weights; activations quantized per batch at run time)."""
    with atomic_path(path) as tmp:
        quantize_onnx_dynamic(fp32_path, tmp, per_channel)
