"""Rank a pool where it was seen: the standalone runner scores it on the device with an exported artifact.

The device needs nothing but numpy and the artifact's runtime: the runner (``--score``) returns each
image's predictive entropy, the guess and its confidence and, for an artifact with per-head outputs
(the multi-head student's ``heads.onnx``/``heads.tflite``), the mutual information between prediction
and heads. The ranking then happens here; the strategies that need only those numbers run on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.active.strategies import class_histogram, top_k
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.outputs import score_on_device
from edgecompress.deploy.targets import TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json

# What each strategy ranks by, from the runner's per-image numbers (higher = label sooner).
DEVICE_SCORES = {"entropy": lambda r: np.asarray(r["entropy"]),
                 "least_confidence": lambda r: 1.0 - np.asarray(r["confidence"]),
                 "bald": lambda r: np.asarray(r["mutual_information"])}


def rank_device_scores(result: dict[str, Any], strategy: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` pool indices to label first by ``strategy`` from the device's numbers."""
    if strategy not in DEVICE_SCORES:
        raise EdgeCompressError(f"strategy {strategy!r} needs the model on this machine; on a device: "
                                f"{', '.join(DEVICE_SCORES)}")
    if strategy == "bald" and result.get("mutual_information") is None:
        raise EdgeCompressError("strategy bald on a device needs an artifact with per-head outputs (heads.onnx or "
                                "heads.tflite of a multi-head student, distill.heads > 1); this one has one output")
    score = DEVICE_SCORES[strategy](result)
    if k > len(score):
        raise EdgeCompressError(f"budget {k} is larger than the pool ({len(score)} images)")
    return top_k(score, k)


def select_on_device(pool: str | Path, artifact: str | Path, profile: TargetProfile, device: DeviceSpec,
                     strategy: str, budget: int, out_csv: str | Path, sheet: str | Path | None = None,
                     columns: int = 10) -> dict[str, Any]:
    """``edgecompress select --artifact ... --device ...``: the pool scored on the device, ranked here, written
    like ``run_selection`` does (the CSV and the contact sheet)."""
    from edgecompress.active.pool import read_pool
    from edgecompress.active.select import write_selection

    side = read_json(f"{artifact}.json", "sidecar")
    chw = _sidecar_chw(side, f"{artifact}.json")
    names, x = read_pool(pool, chw)  # type: ignore[arg-type]
    if budget > len(x):
        raise EdgeCompressError(f"budget {budget} is larger than the pool ({len(x)} images in {pool})")
    if strategy not in DEVICE_SCORES:  # before the device is busy
        rank_device_scores({}, strategy, budget)
    result = score_on_device(artifact, x, profile, device)
    idx, score = rank_device_scores(result, strategy, budget)
    guess = np.asarray(result["guess"])[idx]
    classes = [str(c) for c in side.get("class_names") or range(int(side.get("num_classes", guess.max() + 1)))]
    chosen = {"indices": idx, "scores": score, "guesses": guess, "confidence": np.asarray(result["confidence"])[idx]}
    write_selection(out_csv, names, x, chosen, classes, sheet, columns)
    hist = class_histogram(guess, len(classes))
    return {"pool": str(pool), "pool_size": len(x), "strategy": strategy, "budget": budget, "artifact": str(artifact),
            "device": device.url, "runtime": result.get("runtime"), "seconds_on_device": result.get("seconds"),
            "csv": str(out_csv), "sheet": str(sheet) if sheet else None,
            "class_histogram": dict(zip(classes, hist))}


def _sidecar_chw(side: Any, sidecar: str) -> tuple[int, int, int]:
    """(C, H, W) the artifact takes, from its sidecar's ``input_shape`` (N, C, H, W) or (N, H, W, C)."""
    shape = side.get("input_shape") if isinstance(side, dict) else None
    layout = side.get("layout", "NCHW") if isinstance(side, dict) else None
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               and v > 0 for v in shape[1:])) \
            or layout not in ("NCHW", "NHWC"):
        raise EdgeCompressError(f"sidecar {sidecar} has no usable input_shape/layout (input_shape="
                                f"{shape if shape is not None else 'missing'}, layout={layout!r}; want [N, C, H, W] or "
                                f"[N, H, W, C] with layout NCHW/NHWC); re-export the artifact (dvc repro export)")
    return (shape[3], shape[1], shape[2]) if layout == "NHWC" else (shape[1], shape[2], shape[3])
