"""Export to ONNX (fp32, int8 QDQ, fp16, dynamic int8) and TFLite (fp32, full-integer int8, fp16), each verified.

``export.formats`` chooses the artifacts. int8.onnx is accuracy-aware (see
:func:`edgecompress.quantize.quantize_onnx_accuracy_aware`); int8.tflite is post-training
quantized, or quantization-aware trained with ``export.qat.enabled``; fp16 artifacts (float16
weights, float32 I/O) target GPUs; dynamic.onnx has int8 weights and run-time activation scales.

Every artifact gets a sidecar JSON a client can use without our code (input name, shape, layout,
dtype, int8 I/O scale/zero point, normalization, class names, parent, params hash), and is
evaluated on the test set with its own runtime against the PyTorch model it came from.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path, write_json
from edgecompress.metrics import classification_metrics, softmax
from edgecompress.qat import QATConfig
from edgecompress.quantize import (CalibrationConfig, quantize_onnx, quantize_onnx_accuracy_aware,
                                   quantize_onnx_dynamic, quantize_pt2e, tflite_observer)

# Every artifact export_all can write, in the order it writes them.
ALL_ARTIFACTS = ("fp32.onnx", "int8.onnx", "fp16.onnx", "dynamic.onnx", "fp32.tflite", "int8.tflite", "fp16.tflite")
ARTIFACTS = ("fp32.onnx", "int8.onnx", "fp16.onnx", "fp32.tflite", "int8.tflite", "fp16.tflite")  # default formats


@dataclass(frozen=True)
class ExportConfig:
    """``export`` in params.yaml: which artifacts to write and the optional quantization variants."""

    formats: tuple[str, ...] = ARTIFACTS
    dynamic: bool = False  # also write dynamic.onnx (int8 weights, activations quantized at run time)
    qat: QATConfig = field(default_factory=QATConfig)  # quantization-aware training for int8.tflite

    def __post_init__(self) -> None:
        formats = self.formats
        if isinstance(formats, str) or not isinstance(formats, (list, tuple)) or not formats:
            raise EdgeCompressError(f"invalid value formats={formats!r}: must be a non-empty list of "
                                    f"{list(ALL_ARTIFACTS)}")
        bad = [f for f in formats if f not in ALL_ARTIFACTS]
        if bad:
            raise EdgeCompressError(f"invalid value formats: unknown artifact(s) {bad}; allowed {list(ALL_ARTIFACTS)}")
        if len(set(formats)) != len(formats):
            raise EdgeCompressError(f"invalid value formats={list(formats)}: an artifact is listed twice")
        if not isinstance(self.dynamic, bool):
            raise EdgeCompressError(f"invalid value dynamic={self.dynamic!r}: must be true or false")
        if not isinstance(self.qat, QATConfig):
            raise EdgeCompressError(f"invalid value qat={self.qat!r}: must be a mapping")
        object.__setattr__(self, "formats", tuple(formats))

    @property
    def artifacts(self) -> tuple[str, ...]:
        """The artifacts to write, in writing order (``dynamic: true`` adds dynamic.onnx)."""
        wanted = set(self.formats) | ({"dynamic.onnx"} if self.dynamic else set())
        return tuple(a for a in ALL_ARTIFACTS if a in wanted)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "params.yaml:export") -> "ExportConfig":
        """Build from the params section; unknown keys and bad values name ``where``."""
        from edgecompress.train import from_dict

        d = dict(d or {})
        qat = d.pop("qat", None)
        if qat is not None and not isinstance(qat, dict):
            raise EdgeCompressError(f"{where}: invalid value qat={qat!r}: must be a mapping")
        if qat is not None:
            d["qat"] = from_dict(QATConfig, qat, f"{where}.qat")
        return from_dict(cls, d, where)


class NHWCWrapper(nn.Module):
    """Takes NHWC input, the layout TFLite kernels and mobile camera pipelines use natively."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


@contextlib.contextmanager
def _quiet() -> Any:
    # The converters print pages of MLIR progress and deprecation warnings; keep stage logs readable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """fp32 ONNX, single file (no external data), dynamic batch, input 'input' / output 'logits'."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, _quiet():
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


def export_tflite_fp16(fp32_tflite: Path, path: Path) -> None:
    """fp16 TFLite from the fp32 one: float16 weights (ai_edge_quantizer float casting), float32 I/O.

    The standard TFLite "float16 quantization": conv/depthwise/fully-connected weights are stored as
    float16 behind DEQUANTIZE ops; the GPU delegate computes in fp16, the CPU dequantizes to fp32.
    """
    from ai_edge_quantizer import qtyping, quantizer

    fp16 = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
    try:
        q = quantizer.Quantizer(str(fp32_tflite))
        for op in (qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D,
                   qtyping.TFLOperationName.FULLY_CONNECTED):
            q.update_quantization_recipe(regex=".*", operation_name=op, op_config=fp16,
                                         algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING)
        with _quiet():
            result = q.quantize(enable_progress_report=False)
    except Exception as e:
        raise EdgeCompressError(f"fp16 TFLite conversion of {fp32_tflite} failed: {type(e).__name__}: {e}") from e
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(bytes(result.quantized_model))


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                  calib: np.ndarray | None = None, cfg: CalibrationConfig | None = None) -> None:
    """TFLite through litert-torch: fp32, or full-integer int8 (int8 I/O) when ``calib`` is given."""
    import litert_torch
    from litert_torch.quantize import quant_config

    c, h, w = input_shape
    wrapped = NHWCWrapper(model.eval().to(memory_format=torch.contiguous_format)).eval()
    example = (torch.zeros(1, h, w, c),)
    try:
        with _quiet():
            if calib is None:
                edge = litert_torch.convert(wrapped, example)
            else:
                assert cfg is not None
                nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
                qmodel, quantizer = quantize_pt2e(wrapped, example, nhwc, cfg)
                edge = litert_torch.convert(qmodel, example,
                                            quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
            with atomic_path(path) as tmp:
                edge.export(str(tmp))
    except EdgeCompressError:
        raise
    except Exception as e:
        raise EdgeCompressError(f"TFLite conversion to {path} failed: {type(e).__name__}: {e}") from e


def io_details(path: Path) -> dict[str, Any]:
    """Input/output name, shape, dtype and int8 quantization of an artifact, read from the file."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]
        dt = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
        return {"input_name": i.name, "output_name": o.name, "input_shape": [1, *i.shape[1:]],
                "layout": "NCHW", "input_dtype": dt.get(i.type, i.type), "output_dtype": dt.get(o.type, o.type),
                "input_quant": None, "output_quant": None}
    interp = _tflite_interpreter(path)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]

    def quant(d: dict[str, Any]) -> dict[str, float] | None:
        scale, zp = d["quantization"]
        return {"scale": float(scale), "zero_point": int(zp)} if d["dtype"] in (np.int8, np.uint8) else None

    return {"input_name": i["name"], "output_name": o["name"], "input_shape": [int(v) for v in i["shape"]],
            "layout": "NHWC", "input_dtype": np.dtype(i["dtype"]).name, "output_dtype": np.dtype(o["dtype"]).name,
            "input_quant": quant(i), "output_quant": quant(o)}


def _tflite_interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    interp.allocate_tensors()
    return interp


def run_artifact(path: Path, sidecar: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Logits (float) of an artifact on normalized NCHW float ``x``, through its own runtime."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {sidecar["input_name"]: x[i:i + 500]})[0]
                               for i in range(0, len(x), 500)])
    interp = _tflite_interpreter(path)
    i_d, o_d = interp.get_input_details()[0], interp.get_output_details()[0]
    xs = x.transpose(0, 2, 3, 1)
    iq, oq = sidecar["input_quant"], sidecar["output_quant"]
    out = []
    for k in range(len(xs)):
        xi = xs[k:k + 1]
        if iq:
            xi = np.clip(np.round(xi / iq["scale"]) + iq["zero_point"], -128, 127).astype(np.int8)
        interp.set_tensor(i_d["index"], xi.astype(i_d["dtype"]))
        interp.invoke()
        y = interp.get_tensor(o_d["index"]).astype(np.float32)
        if oq:
            y = (y - oq["zero_point"]) * oq["scale"]
        out.append(y)
    return np.concatenate(out)


def verify(path: Path, sidecar: dict[str, Any], x: np.ndarray, y: np.ndarray,
           ref_logits: np.ndarray) -> dict[str, Any]:
    """Accuracy/calibration of the artifact on (x, y) and its agreement with the reference logits."""
    logits = run_artifact(path, sidecar, x)
    probs = softmax(logits.astype(np.float64))
    m = classification_metrics(probs, y)
    m["top1_agreement"] = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    m["max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
    m["size_bytes"] = path.stat().st_size
    return m


def export_all(model: nn.Module, meta: dict[str, Any], out_dir: Path, calib: np.ndarray,
               cfg: CalibrationConfig, x_test: np.ndarray, y_test: np.ndarray,
               parent: str, phash: str, export_cfg: ExportConfig | None = None,
               x_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
               train: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Write the configured artifacts with sidecars into ``out_dir``; returns verification metrics.

    ``x_val``/``y_val`` (normalized validation images, never the test set) drive the accuracy-aware
    int8 ONNX; ``train`` (normalized images, labels) is needed only for QAT.
    """
    export_cfg = export_cfg or ExportConfig()
    artifacts = export_cfg.artifacts
    if export_cfg.qat.enabled and "int8.tflite" in artifacts and train is None:
        raise EdgeCompressError("export.qat.enabled needs the training set (train=(x, y))")
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(meta["data"]["input_shape"])
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x_test[i:i + 1000])).numpy() for i in range(0, len(x_test), 1000)])
    ref_metrics = classification_metrics(softmax(ref.astype(np.float64)), y_test)
    scratch = Path(tempfile.mkdtemp(prefix="edgecompress-export."))
    # Derived artifacts start from the fp32 files; those live in scratch when not asked for.
    fp32_onnx = out_dir / "fp32.onnx" if "fp32.onnx" in artifacts else scratch / "fp32.onnx"
    fp32_tflite = out_dir / "fp32.tflite" if "fp32.tflite" in artifacts else scratch / "fp32.tflite"

    made: set[Path] = set()

    def need(path: Path, make: Any) -> Path:
        if path not in made:  # once per call: never reuse a file left by an earlier run
            make(path)
            made.add(path)
        return path

    onnx_base = lambda: need(fp32_onnx, lambda p: export_onnx(model, input_shape, p))  # noqa: E731
    tflite_base = lambda: need(fp32_tflite, lambda p: export_tflite(model, input_shape, p))  # noqa: E731
    extra: dict[str, dict[str, Any]] = {}

    def int8_onnx(p: Path) -> None:
        report = export_onnx_int8(onnx_base(), p, calib, cfg, x_val, y_val)
        extra["int8.onnx"] = {"float_layers": report["float_layers"], "accuracy_aware": report}

    def int8_tflite(p: Path) -> None:
        if export_cfg.qat.enabled:
            from edgecompress.qat import export_tflite_qat

            assert train is not None
            history = export_tflite_qat(model, input_shape, p, train[0], train[1], export_cfg.qat, cfg.per_channel)
            extra["int8.tflite"] = {"qat": {**export_cfg.qat.__dict__, "history": history}}
        else:
            export_tflite(model, input_shape, p, calib, cfg)

    steps = {
        "fp32.onnx": lambda p: onnx_base(),
        "int8.onnx": int8_onnx,
        "fp16.onnx": lambda p: export_onnx_fp16(onnx_base(), p),
        "dynamic.onnx": lambda p: export_onnx_dynamic(onnx_base(), p, cfg.per_channel),
        "fp32.tflite": lambda p: tflite_base(),
        "int8.tflite": int8_tflite,
        "fp16.tflite": lambda p: export_tflite_fp16(tflite_base(), p),
    }
    results: dict[str, Any] = {"pytorch": ref_metrics}
    try:
        for name in artifacts:
            path = out_dir / name
            print(f"[export] {name} ...", file=sys.stderr, flush=True)
            steps[name](path)
            results[name] = _sidecar_and_verify(path, name, meta, cfg, calib, parent, phash, x_test, y_test, ref,
                                                extra.get(name, {}))
        from edgecompress.multihead import MultiHeadStudent

        if isinstance(model, MultiHeadStudent):
            results.update(export_heads(model, meta, out_dir, x_test, parent, phash))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


HEAD_ARTIFACTS = ("heads.onnx", "heads.tflite")


def _run_heads(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean probabilities (N, C), per-head probabilities (N, M, C)) of a heads artifact, told apart by rank."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = [sess.run(None, {"input": x[i:i + 500]}) for i in range(0, len(x), 500)]
        both = [np.concatenate([o[j] for o in outs]) for j in range(2)]
    else:
        interp = _tflite_interpreter(path)
        i_d, o_ds = interp.get_input_details()[0], interp.get_output_details()
        rows: list[list[np.ndarray]] = [[], []]
        for k in range(len(x)):
            interp.set_tensor(i_d["index"], np.ascontiguousarray(x[k:k + 1].transpose(0, 2, 3, 1)))
            interp.invoke()
            for j, d in enumerate(o_ds):
                rows[j].append(interp.get_tensor(d["index"]))
        both = [np.concatenate(r) for r in rows]
    mean = next(o for o in both if o.ndim == 2)
    heads = next(o for o in both if o.ndim == 3)
    return mean, heads


def export_heads(model: nn.Module, meta: dict[str, Any], out_dir: Path, x_test: np.ndarray,
                 parent: str, phash: str, samples: int = 1000) -> dict[str, Any]:
    """fp32 ONNX and TFLite of a multi-head student with two outputs: the mean probabilities (N, C)
    and every head's probabilities (N, M, C), so a device can also compute the heads' disagreement
    (mutual information). Each is verified against PyTorch on the first ``samples`` test images."""
    from edgecompress.multihead import PerHeadOutputs
    from edgecompress.uncertainty import uncertainty_decomposition

    input_shape = tuple(meta["data"]["input_shape"])
    wrapper = PerHeadOutputs(model.eval().to(memory_format=torch.contiguous_format)).eval()  # type: ignore[arg-type]
    x = x_test[:samples]
    with torch.no_grad():
        want_mean, want_heads = (t.numpy() for t in wrapper(torch.from_numpy(x)))
    results: dict[str, Any] = {}
    for name in HEAD_ARTIFACTS:
        path = out_dir / name
        print(f"[export] {name} (mean and per-head probabilities) ...", file=sys.stderr, flush=True)
        if name.endswith(".onnx"):
            with atomic_path(path) as tmp, _quiet():
                torch.onnx.export(wrapper, (torch.zeros(1, *input_shape),), str(tmp), input_names=["input"],
                                  output_names=["probs", "head_probs"], opset_version=17, dynamo=False,
                                  dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}, "head_probs": {0: "batch"}})
        else:
            export_tflite(wrapper, input_shape, path)
        mean, heads = _run_heads(path, x)
        mi = uncertainty_decomposition(heads.transpose(1, 0, 2))["mutual_information"]
        want_mi = uncertainty_decomposition(want_heads.transpose(1, 0, 2))["mutual_information"]
        check = {"samples": len(x), "max_abs_mean_prob_diff": float(np.abs(mean - want_mean).max()),
                 "max_abs_head_prob_diff": float(np.abs(heads - want_heads).max()),
                 "mutual_information": float(mi.mean()), "pytorch_mutual_information": float(want_mi.mean())}
        fmt = name.split(".")[1]
        write_json(Path(str(path) + ".json"), {
            "format": fmt, "precision": "fp32", "outputs": {
                "probs": "mean over heads of the softmax probabilities (N, C)",
                "head_probs": f"each head's softmax probabilities (N, {heads.shape[1]}, C)"},
            "input_layout": "NCHW" if fmt == "onnx" else "NHWC",
            "mean": meta["data"]["mean"], "std": meta["data"]["std"], "class_names": meta["data"]["class_names"],
            "parent": parent, "params_hash": phash, "verification": check})
        results[name] = {**check, "size_bytes": path.stat().st_size}
        print(f"[export] {name}: max |p - p_torch| {check['max_abs_mean_prob_diff']:.2e}, "
              f"MI {check['mutual_information']:.4f} (PyTorch {check['pytorch_mutual_information']:.4f})",
              file=sys.stderr, flush=True)
    return results


def _sidecar_and_verify(path: Path, name: str, meta: dict[str, Any], cfg: CalibrationConfig, calib: np.ndarray,
                        parent: str, phash: str, x_test: np.ndarray, y_test: np.ndarray, ref: np.ndarray,
                        extra: dict[str, Any]) -> dict[str, Any]:
    precision, fmt = name.split(".")
    calibrated = name in ("int8.onnx", "int8.tflite") and "qat" not in extra
    sidecar = {"format": fmt, "precision": precision, **io_details(path),
               "mean": meta["data"]["mean"], "std": meta["data"]["std"],
               "class_names": meta["data"]["class_names"], "num_classes": len(meta["data"]["class_names"]),
               "parent": parent, "params_hash": phash,
               "calibration": None if not calibrated else {
                   "method": cfg.method, "samples": len(calib), "per_channel": cfg.per_channel,
                   "selection": cfg.selection,
                   **({"activation_observer": tflite_observer(cfg)} if fmt == "tflite" else {})}}
    if precision == "fp16":
        sidecar["weights"] = "float16"
        if fmt == "onnx":
            sidecar["keep_io_types"] = True  # float32 input/output, Cast to float16 inside the graph
        else:
            sidecar["compute"] = "float16 on GPU delegates; float32 on CPU (weights dequantized at load)"
    elif precision == "dynamic":
        sidecar.update({"weights": "int8", "per_channel": cfg.per_channel,
                        "activations": "float32 I/O; quantized to uint8 per batch at run time"})
    if "qat" in extra:
        sidecar["qat"] = {k: v for k, v in extra["qat"].items() if k != "history"}
    if "float_layers" in extra:
        sidecar["float_layers"] = extra["float_layers"]
        sidecar["accuracy_aware"] = {k: v for k, v in extra["accuracy_aware"].items() if k != "sensitivity"}
    m = verify(path, sidecar, x_test, y_test, ref)
    sidecar["verification"] = {k: m[k] for k in ("accuracy", "top1_agreement", "max_abs_logit_diff")}
    write_json(Path(str(path) + ".json"), sidecar)
    m.update(extra)
    print(f"[export] {name}: {m['size_bytes'] / 1024:.1f} KiB, accuracy {m['accuracy']:.4f}, "
          f"agreement {m['top1_agreement']:.4f}", file=sys.stderr, flush=True)
    return m
