"""Export to ONNX (fp32, int8 QDQ, fp16, dynamic int8) and TFLite (fp32, full-integer int8, fp16), each verified.

``export.formats`` chooses the artifacts. int8.onnx is accuracy-aware (see
:func:`edgecompress.compression.onnx.quantize_onnx_accuracy_aware`); int8.tflite is post-training
quantized, or quantization-aware trained with ``export.qat.enabled``; fp16 artifacts (float16
weights, float32 I/O) target GPUs; dynamic.onnx has int8 weights and run-time activation scales.

Every artifact gets a sidecar JSON a client can use without our code (input name, shape, layout,
dtype, int8 I/O scale/zero point, normalization, class names, parent, params hash), and is
evaluated on the test set with its own runtime against the PyTorch model it came from.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.artifacts import DEFAULT_FORMATS, HEAD_ARTIFACTS, REGISTRY
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.onnx import (export_onnx, export_onnx_dynamic, export_onnx_fp16, export_onnx_int8,
                                           ort_session, quiet, run_onnx)
from edgecompress.compression.qat import QATConfig
from edgecompress.compression.tflite import export_tflite, export_tflite_fp16, tflite_interpreter, tflite_observer
from edgecompress.data import Dataset, save_npz_split
from edgecompress.dirs import replace_dir, whole_dir
from edgecompress.fileio import atomic_path, read_npz, write_json
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.metrics import classification_metrics, softmax, uncertainty_decomposition
from edgecompress.models import MultiHeadStudent, PerHeadOutputs, batched

log = get_logger("export")



@dataclass(frozen=True)
class ExportConfig:
    """``export`` in params.yaml: which artifacts to write and the optional quantization variants."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    dynamic: bool = False  # also write dynamic.onnx (int8 weights, activations quantized at run time)
    qat: QATConfig = field(default_factory=QATConfig)  # quantization-aware training for int8.tflite

    def __post_init__(self) -> None:
        formats = self.formats
        if isinstance(formats, str) or not isinstance(formats, (list, tuple)) or not formats:
            raise EdgeCompressError(f"invalid value formats={formats!r}: must be a non-empty list of "
                                    f"{list(REGISTRY)}")
        bad = [f for f in formats if f not in REGISTRY]
        if bad:
            raise EdgeCompressError(f"invalid value formats: unknown artifact(s) {bad}; allowed {list(REGISTRY)}")
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
        return tuple(a for a in REGISTRY if a in wanted)


def io_details(path: Path) -> dict[str, Any]:
    """Input/output name, shape, dtype and int8 quantization of an artifact, read from the file."""
    if path.suffix == ".onnx":
        sess = ort_session(path)
        i, o = sess.get_inputs()[0], sess.get_outputs()[0]
        dt = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
        # input_shape is one example batch; ONNX exports take any batch size (a dynamic first axis).
        return {"input_name": i.name, "output_name": o.name, "input_shape": [1, *i.shape[1:]],
                "dynamic_batch": True, "layout": "NCHW", "input_dtype": dt.get(i.type, i.type), "output_dtype": dt.get(o.type, o.type),
                "input_quant": None, "output_quant": None}
    interp = tflite_interpreter(path)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]

    def quant(d: dict[str, Any]) -> dict[str, float] | None:
        scale, zp = d["quantization"]
        return {"scale": float(scale), "zero_point": int(zp)} if d["dtype"] in (np.int8, np.uint8) else None

    return {"input_name": i["name"], "output_name": o["name"], "input_shape": [int(v) for v in i["shape"]],
            "dynamic_batch": False, "layout": "NHWC", "input_dtype": np.dtype(i["dtype"]).name,
            "output_dtype": np.dtype(o["dtype"]).name, "input_quant": quant(i), "output_quant": quant(o)}


def run_artifact(path: Path, sidecar: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Logits (float) of an artifact on normalized NCHW float ``x``, through its own runtime."""
    if path.suffix == ".onnx":
        return run_onnx(ort_session(path), x, sidecar["input_name"])[0]
    interp = tflite_interpreter(path)
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
    ref = batched(model, torch.from_numpy(x_test), 1000, channels_last=False).numpy()
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
            from edgecompress.compression.qat import export_tflite_qat

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
            log.info(f"{name} ...")
            steps[name](path)
            results[name] = _sidecar_and_verify(path, name, meta, cfg, calib, parent, phash, x_test, y_test, ref,
                                                extra.get(name, {}))
        if isinstance(model, MultiHeadStudent):
            results.update(export_heads(model, meta, out_dir, x_test, parent, phash))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _run_heads(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean probabilities (N, C), per-head probabilities (N, M, C)) of a heads artifact, told apart by rank."""
    if path.suffix == ".onnx":
        both = run_onnx(ort_session(path), x, "input")
    else:
        interp = tflite_interpreter(path)
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
    input_shape = tuple(meta["data"]["input_shape"])
    wrapper = PerHeadOutputs(model.eval().to(memory_format=torch.contiguous_format)).eval()  # type: ignore[arg-type]
    x = x_test[:samples]
    with torch.no_grad():
        want_mean, want_heads = (t.numpy() for t in wrapper(torch.from_numpy(x)))
    results: dict[str, Any] = {}
    for name in HEAD_ARTIFACTS:
        path = out_dir / name
        log.info(f"{name} (mean and per-head probabilities) ...")
        if name.endswith(".onnx"):
            with atomic_path(path) as tmp, quiet():
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
        log.info(f"{name}: max |p - p_torch| {check['max_abs_mean_prob_diff']:.2e}, "
                 f"MI {check['mutual_information']:.4f} (PyTorch {check['pytorch_mutual_information']:.4f})")
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
    log.info(f"{name}: {m['size_bytes'] / 1024:.1f} KiB, accuracy {m['accuracy']:.4f}, "
             f"agreement {m['top1_agreement']:.4f}")
    return m


def load_calibration(path: str | Path) -> np.ndarray:
    """The normalized calibration images the calibrate stage saved."""
    return read_npz(path, ("x",), "calibration set", "re-run the calibrate stage (dvc repro -f calibrate)")["x"]


def export_directory(model: nn.Module, meta: dict[str, Any], parent: str, ds: Dataset, calib: np.ndarray,
                     cfg: CalibrationConfig, export_cfg: ExportConfig, out: str | Path) -> dict[str, Any]:
    """The export stage: every configured artifact plus the raw test set, swapped into ``out`` whole.

    Everything is built in a scratch dir beside ``out`` and moved onto it at the end (``dirs.whole_dir``),
    so a failed export leaves ``out`` as it was and no half-written artifact directory. The accuracy-aware
    int8 ONNX check runs on the validation split (``cfg.val_samples`` images), never on the test set.
    """
    x_val, y_val = ds.normalize(ds.val.x[:cfg.val_samples]), ds.val.y[:cfg.val_samples]
    train = (ds.normalize(ds.train.x), ds.train.y) if export_cfg.qat.enabled else None
    with whole_dir(out) as scratch:
        results = export_all(model, meta, scratch, calib, cfg, ds.normalize(ds.test.x), ds.test.y, parent,
                             meta["params_hash"], export_cfg=export_cfg, x_val=x_val, y_val=y_val, train=train)
        save_npz_split(scratch / "testset.npz", ds.test, ds.class_names)  # raw uint8 images for on-device checks
    return results


def swap_in(src: Path, out: Path) -> None:
    """Replace directory ``out`` by the complete directory ``src`` (see ``dirs.replace_dir``); new writers use
    ``dirs.whole_dir``, which wraps this with the scratch directory's making and removal."""
    replace_dir(src, out)
