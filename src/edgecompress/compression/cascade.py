"""An early-exit net as a cascade of exported segments that the standalone runner chains on the device.

Segment k runs the backbone blocks between exit k-1 and exit k and has two outputs: exit k's logits
(N, C) and the feature map that segment k+1 takes; the last segment has only the final logits. A
manifest (``<artifact>.cascade.json``) lists the segment files in order, the exit thresholds and the
first segment's input sidecar fields (the keys the export stage's sidecars carry), so a client needs
nothing of ours: run segment 0 on the image, stop when max softmax >= thresholds[0], else feed its
feature output to segment 1, and so on.

Feature maps between segments travel in the artifact's own layout: NCHW for ONNX, NHWC for TFLite
(each TFLite segment permutes at its edges, as ``NHWCWrapper`` does for the image, so no transposes
run between invokes). Outputs are told apart by rank: logits are 2-D, feature maps 4-D.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgecompress.artifacts import CASCADE_SUFFIX
from edgecompress.compression.export import io_details
from edgecompress.compression.onnx import ort_session, quiet, run_onnx
from edgecompress.compression.tflite import tflite_interpreter
from edgecompress.compression.tflite_names import strip_tensor_names
from edgecompress.deploy.runner import RunnerError, read_cascade
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path, write_json
from edgecompress.log import get_logger
from edgecompress.training.early_exit import EarlyExitNet, ThresholdChoice

ARTIFACTS = ("fp32.onnx", "fp32.tflite")
LAYOUT = {"onnx": "NCHW", "tflite": "NHWC"}
log = get_logger("cascade")


class CascadeSegment(nn.Module):
    """Segment ``k`` of ``net`` for export: ``(logits, features)``, or ``logits`` for the last one;
    with ``layout`` NHWC its input and feature output are NHWC."""

    def __init__(self, net: EarlyExitNet, k: int, layout: str = "NCHW") -> None:
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise EdgeCompressError(f"invalid value layout={layout!r}: allowed NCHW, NHWC")
        self.net, self.k, self.nhwc = net, k, layout == "NHWC"

    def forward(self, h: torch.Tensor) -> Any:
        if self.nhwc:
            h = h.permute(0, 3, 1, 2)
        logits, feat = self.net.segment_forward(self.k, h)
        if feat is None:
            return logits
        return logits, (feat.permute(0, 2, 3, 1) if self.nhwc else feat)


def _segment_inputs(net: EarlyExitNet, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """NCHW per-sample input shape of every segment (the image, then each feature map)."""
    shapes, h = [tuple(input_shape)], torch.zeros(1, *input_shape)
    with torch.no_grad():
        for k in range(net.num_segments - 1):
            _, h = net.segment_forward(k, h)  # type: ignore[assignment]
            shapes.append(tuple(h.shape[1:]))
    return shapes


def export_segments(net: EarlyExitNet, input_shape: Sequence[int], out_dir: Path, artifact: str) -> list[dict[str, Any]]:
    """Write every segment of ``net`` as ``segment{k}.<artifact>`` into ``out_dir``; returns their
    manifest entries (file name relative to ``out_dir``, input shape in the artifact's layout, outputs)."""
    if artifact not in ARTIFACTS:
        raise EdgeCompressError(f"invalid value artifact={artifact!r}: cascades export {list(ARTIFACTS)}")
    fmt = artifact.split(".")[1]
    layout = LAYOUT[fmt]
    net = net.eval().to(memory_format=torch.contiguous_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, shape in enumerate(_segment_inputs(net, input_shape)):
        c, h, w = shape
        example = torch.zeros(1, c, h, w) if layout == "NCHW" else torch.zeros(1, h, w, c)
        seg = CascadeSegment(net, k, layout).eval()
        last = k == net.num_segments - 1
        path = out_dir / f"segment{k}.{artifact}"
        outputs = ["logits"] if last else ["logits", "features"]
        input_name = "input" if k == 0 else "features_in"
        try:
            if fmt == "onnx":
                with atomic_path(path) as tmp, quiet():
                    torch.onnx.export(seg, (example,), str(tmp), input_names=[input_name], output_names=outputs,
                                      dynamic_axes={n: {0: "batch"} for n in [input_name, *outputs]},
                                      opset_version=17, dynamo=False)
            else:
                import litert_torch

                with quiet():
                    edge = litert_torch.convert(seg, (example,))
                    with atomic_path(path) as tmp:
                        edge.export(str(tmp))
                        strip_tensor_names(tmp, str(path))  # as export_tflite: no debug names in the file
        except Exception as e:
            raise EdgeCompressError(f"exporting cascade segment {k} to {path} failed: {type(e).__name__}: {e}") from e
        names = _output_names(path) if fmt == "tflite" else {"logits": "logits", **({} if last else {"features": "features"})}
        entries.append({"file": path.name, "input_name": _input_name(path), "input_shape": list(example.shape),
                        "outputs": names, "exit": k, "size_bytes": path.stat().st_size})
    return entries


def _input_name(path: Path) -> str:
    if path.suffix == ".onnx":
        return str(ort_session(path).get_inputs()[0].name)
    return str(tflite_interpreter(path).get_input_details()[0]["name"])


def _output_names(path: Path) -> dict[str, str]:
    """{"logits": name, "features": name} of a TFLite segment, told apart by rank (converters rename outputs)."""
    names: dict[str, str] = {}
    for d in tflite_interpreter(path).get_output_details():
        names["logits" if len(d["shape"]) == 2 else "features"] = str(d["name"])
    return names


def write_manifest(path: Path, segments: list[dict[str, Any]], choice: ThresholdChoice | Sequence[float | None],
                   data_meta: dict[str, Any], net: EarlyExitNet, parent: str = "", phash: str = "",
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the cascade manifest ``path`` (segments in ``path``'s directory) and return it.

    ``choice`` is a ThresholdChoice (its validation numbers are recorded) or plain thresholds (None or
    a value above 1: never exit there). ``data_meta`` is a checkpoint's ``data`` entry (mean, std,
    class names). The first segment's input fields are read from its file, as the export sidecars are.
    """
    if len(segments) != net.num_segments:
        raise EdgeCompressError(f"{len(segments)} segments for a net with {net.num_segments} exits")
    if isinstance(choice, ThresholdChoice):
        thresholds, chosen = choice.as_dict()["thresholds"], choice.as_dict()
    else:
        thresholds, chosen = [None if t is None or t > 1 else float(t) for t in choice], None
    if len(thresholds) != net.num_segments - 1:
        raise EdgeCompressError(f"{net.num_segments - 1} early exits need as many thresholds, got {thresholds}")
    first = path.parent / segments[0]["file"]
    fmt = first.suffix.lstrip(".")
    io = io_details(first)
    manifest = {
        "kind": "cascade", "format": fmt, "precision": "fp32", **io,
        "output_name": segments[0]["outputs"]["logits"], "output_dtype": "float32",
        "mean": data_meta["mean"], "std": data_meta["std"], "class_names": data_meta["class_names"],
        "num_classes": len(data_meta["class_names"]), "parent": parent, "params_hash": phash,
        "feature_layout": LAYOUT[fmt], "exit_blocks": list(net.exits), "segments": segments,
        "thresholds": thresholds, "threshold_choice": chosen,
        "rule": "exit k when max softmax(logits_k) >= thresholds[k] (null: never); the last segment always exits",
        **(extra or {})}
    write_json(path, manifest)
    return manifest


def run_segments(manifest_path: Path, x: np.ndarray) -> list[np.ndarray]:
    """Every exit's logits on normalized NCHW ``x``, every image through every segment (no early stop),
    with each artifact's own runtime: what verification compares with PyTorch's ``forward_exits``."""
    try:  # the runner's reading: a JSON object whose segments lie inside the manifest's folder
        manifest = read_cascade(manifest_path)
    except RunnerError as e:
        raise EdgeCompressError(str(e)) from None
    base = Path(manifest_path).parent
    h = x if manifest["layout"] == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    outs = []
    for seg in manifest["segments"]:
        path = base / seg["file"]
        if path.suffix == ".onnx":
            sess = ort_session(path)
            res = dict(zip((o.name for o in sess.get_outputs()), run_onnx(sess, h, seg["input_name"])))
            logits, feat = res["logits"], res.get("features")
        else:
            interp = tflite_interpreter(path)
            i_d, o_ds = interp.get_input_details()[0], interp.get_output_details()
            rows: dict[int, list[np.ndarray]] = {2: [], 4: []}
            for i in range(len(h)):
                interp.set_tensor(i_d["index"], np.ascontiguousarray(h[i:i + 1]))
                interp.invoke()
                for d in o_ds:
                    rows[len(d["shape"])].append(interp.get_tensor(d["index"]))
            logits, feat = np.concatenate(rows[2]), (np.concatenate(rows[4]) if rows[4] else None)
        outs.append(logits.astype(np.float32))
        h = feat if feat is not None else h
    return outs


def verify_cascade(manifest_path: Path, net: EarlyExitNet, x: np.ndarray, tol: float = 1e-3) -> dict[str, Any]:
    """The cascade's per-exit logits against PyTorch's ``forward_exits`` on normalized ``x``; raises when an
    exit differs by more than ``tol`` (absolute, on logits)."""
    net.eval()
    with torch.no_grad():
        want = [o.numpy() for o in net.to(memory_format=torch.contiguous_format).forward_exits(torch.from_numpy(x))]
    got = run_segments(manifest_path, x)
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    agree = [float((g.argmax(1) == w.argmax(1)).mean()) for g, w in zip(got, want)]
    report = {"samples": int(len(x)), "max_abs_logit_diff": diffs, "top1_agreement": agree, "tolerance": tol}
    if max(diffs) > tol:
        raise EdgeCompressError(f"cascade {manifest_path} disagrees with PyTorch: per-exit max |logit diff| "
                                f"{[f'{d:.2e}' for d in diffs]} > {tol}")
    return report


def export_cascade(net: EarlyExitNet, data_meta: dict[str, Any], out_dir: Path,
                   choice: ThresholdChoice | Sequence[float | None], x_check: np.ndarray,
                   artifacts: Sequence[str] = ARTIFACTS, parent: str = "", phash: str = "") -> dict[str, Any]:
    """Segments and a verified ``<artifact>.cascade.json`` manifest in ``out_dir`` per artifact;
    returns {artifact: {"manifest": path, "segments": [...], "verification": {...}}}."""
    results: dict[str, Any] = {}
    for artifact in artifacts:
        log.info(f"{artifact}: {net.num_segments} segments ...")
        segments = export_segments(net, data_meta["input_shape"], out_dir, artifact)
        path = out_dir / f"{artifact}{CASCADE_SUFFIX}"
        manifest = write_manifest(path, segments, choice, data_meta, net, parent, phash)
        check = verify_cascade(path, net, x_check)
        manifest["verification"] = check
        write_json(path, manifest)
        results[artifact] = {"manifest": str(path), "segments": segments, "verification": check}
        log.info(f"{artifact}: per-exit max |logit diff| {[f'{d:.1e}' for d in check['max_abs_logit_diff']]}")
    return results
