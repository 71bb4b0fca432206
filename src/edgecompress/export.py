"""Export to ONNX (fp32, int8 QDQ) and TFLite (fp32, full-integer int8), each verified.

Every artifact gets a sidecar JSON a client can use without our code (input name, shape, layout,
dtype, int8 I/O scale/zero point, normalization, class names, parent, params hash), and is
evaluated on the test set with its own runtime against the PyTorch model it came from.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path, write_json
from edgecompress.metrics import classification_metrics, softmax
from edgecompress.quantize import CalibrationConfig, quantize_onnx, quantize_pt2e, tflite_observer

ARTIFACTS = ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite")


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


def export_onnx_int8(fp32_path: Path, path: Path, calib: np.ndarray, cfg: CalibrationConfig) -> None:
    """int8 QDQ ONNX from the fp32 ONNX, calibrated on ``calib`` (normalized NCHW)."""
    with atomic_path(path) as tmp:
        quantize_onnx(fp32_path, tmp, calib, cfg)


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
               parent: str, phash: str) -> dict[str, Any]:
    """Write all four artifacts with sidecars into ``out_dir``; returns verification metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    input_shape = tuple(meta["data"]["input_shape"])
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(x_test[i:i + 1000])).numpy() for i in range(0, len(x_test), 1000)])
    ref_metrics = classification_metrics(softmax(ref.astype(np.float64)), y_test)
    steps = [
        ("fp32.onnx", lambda p: export_onnx(model, input_shape, p)),
        ("int8.onnx", lambda p: export_onnx_int8(out_dir / "fp32.onnx", p, calib, cfg)),
        ("fp32.tflite", lambda p: export_tflite(model, input_shape, p)),
        ("int8.tflite", lambda p: export_tflite(model, input_shape, p, calib, cfg)),
    ]
    results: dict[str, Any] = {"pytorch": ref_metrics}
    for name, fn in steps:
        path = out_dir / name
        print(f"[export] {name} ...", file=sys.stderr, flush=True)
        fn(path)
        precision, fmt = name.split(".")
        sidecar = {"format": fmt, "precision": precision, **io_details(path),
                   "mean": meta["data"]["mean"], "std": meta["data"]["std"],
                   "class_names": meta["data"]["class_names"], "num_classes": len(meta["data"]["class_names"]),
                   "parent": parent, "params_hash": phash,
                   "calibration": None if precision == "fp32" else {
                       "method": cfg.method, "samples": len(calib), "per_channel": cfg.per_channel,
                       "selection": cfg.selection,
                       **({"activation_observer": tflite_observer(cfg)} if fmt == "tflite" else {})}}
        m = verify(path, sidecar, x_test, y_test, ref)
        sidecar["verification"] = {k: m[k] for k in ("accuracy", "top1_agreement", "max_abs_logit_diff")}
        write_json(Path(str(path) + ".json"), sidecar)
        results[name] = m
        print(f"[export] {name}: {m['size_bytes'] / 1024:.1f} KiB, accuracy {m['accuracy']:.4f}, "
              f"agreement {m['top1_agreement']:.4f}", file=sys.stderr, flush=True)
    return results
