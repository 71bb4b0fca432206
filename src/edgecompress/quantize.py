"""Static int8 quantization calibrated on representative data, for ONNX Runtime and LiteRT.

One calibration set (chosen once by the calibrate stage and saved) feeds both backends, so the
int8 ONNX and the int8 TFLite models are calibrated on exactly the same images.

The set is chosen at random, class-balanced, or diverse (greedy k-center on the fp32 model's pooled
features). The int8 ONNX export is accuracy-aware: when it loses more than ``max_drop`` accuracy
points against fp32 on a validation subset, a per-layer sensitivity analysis ranks the quantized
layers by the harm they do and keeps the worst ones in float until the drop is within bounds.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecompress.errors import EdgeCompressError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SELECTIONS = ("random", "class_balanced", "kcenter")
# ONNX ops the sensitivity analysis may keep in float (the ones carrying weights).
SENSITIVE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration set and range-estimation method for static int8 quantization."""

    samples: int = 512
    method: str = "minmax"  # activation range estimation: minmax | entropy | percentile
    percentile: float = 99.999  # only for method=percentile
    per_channel: bool = True  # per-output-channel weight scales (needed for depthwise convs)
    selection: str = "class_balanced"  # random | class_balanced | kcenter (diverse, on fp32 embeddings)
    seed: int = 0
    # Accuracy-aware int8 ONNX: the largest accepted drop of int8 below fp32 validation accuracy, in
    # accuracy *points* (percentage points: 0.5 = 0.5 %, i.e. 0.005 in fraction); null disables the
    # check. A negative value always triggers the fallback (diagnostics and tests).
    max_drop: float | None = 1.0
    val_samples: int = 2000  # validation images the drop is measured on (never the test set)
    max_float_layers: int = 4  # at most this many layers are kept in float by the fallback

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise EdgeCompressError(f"invalid value samples={self.samples!r}: must be an integer >= 1")
        if self.method not in CALIBRATION_METHODS:
            raise EdgeCompressError(f"invalid value method={self.method!r}: allowed {list(CALIBRATION_METHODS)}")
        if not 0 < self.percentile <= 100:
            raise EdgeCompressError(f"invalid value percentile ({self.percentile}) should be within (0, 100]")
        if self.selection not in SELECTIONS:
            raise EdgeCompressError(f"invalid value selection={self.selection!r}: allowed {list(SELECTIONS)}")
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float))
                                          or not np.isfinite(self.max_drop)):
            raise EdgeCompressError(f"invalid value max_drop={self.max_drop!r}: must be a number of accuracy "
                                    f"points (e.g. 0.5) or null")
        for name in ("val_samples", "max_float_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgeCompressError(f"invalid value {name}={v!r}: must be an integer >= 1")


def embeddings(model: Any, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Pooled features of ``model`` (``model.features(x)`` then global average pool) on normalized NCHW ``x``."""
    import torch

    if not hasattr(model, "features"):
        raise EdgeCompressError(f"selection=kcenter needs a model with a features() method; "
                                f"{type(model).__name__} has none")
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            f = model.features(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)))
            out.append(f.mean(dim=tuple(range(2, f.ndim))).reshape(len(f), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def kcenter_greedy(emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-center (Gonzalez): each pick is the point farthest from everything picked so far.

    Starts from a seeded random point; covers the embedding space (every cluster gets a centre before
    any cluster gets a second one), which random sampling does not guarantee for rare modes.
    """
    emb = np.asarray(emb, np.float32).reshape(len(emb), -1)
    n = len(emb)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    picked = [first]
    dist = ((emb - emb[first]) ** 2).sum(1)
    while len(picked) < k:
        i = int(dist.argmax())
        if dist[i] <= 0:  # only duplicates of picked points remain: fill at random
            rest = np.setdiff1d(np.arange(n), picked)
            picked += rng.choice(rest, size=k - len(picked), replace=False).tolist()
            break
        picked.append(i)
        dist = np.minimum(dist, ((emb - emb[i]) ** 2).sum(1))
    return np.sort(np.array(picked, dtype=np.int64))


def select_calibration(y: np.ndarray, cfg: CalibrationConfig, embeddings: np.ndarray | None = None) -> np.ndarray:
    """Indices of the calibration images among the training labels ``y`` (seeded).

    ``selection=kcenter`` needs ``embeddings`` (one row per training image, e.g. from
    :func:`embeddings` on the fp32 model) and picks a diverse set by greedy k-center on them.
    """
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.samples, len(y))
    if cfg.selection == "kcenter":
        if embeddings is None:
            raise EdgeCompressError("selection=kcenter needs the fp32 model's embeddings of the training images")
        if len(embeddings) != len(y):
            raise EdgeCompressError(f"kcenter: {len(embeddings)} embeddings for {len(y)} labels")
        return kcenter_greedy(embeddings, n, cfg.seed)
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


def _onnx_logits(path: Path, x: np.ndarray, input_name: str = "input") -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


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

    log = log or (lambda msg: print(f"[quantize] {msg}", file=sys.stderr, flush=True))
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
