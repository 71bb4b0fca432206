"""The int8 calibration set: which training images every static quantization observes, and how.

One calibration set (chosen once by the calibrate stage and saved) feeds both backends, so the
int8 ONNX and the int8 TFLite models are calibrated on exactly the same images. It is chosen at
random, class-balanced, or diverse (greedy k-center on the fp32 model's pooled features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path
from edgecompress.models import batched, feature_map

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
SELECTIONS = ("random", "class_balanced", "kcenter")


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
    """Pooled features of ``model`` (its last feature map, then global average pool) on normalized NCHW ``x``."""
    import torch

    if len(x) == 0:
        return np.zeros((0, 0), np.float32)
    model.eval()

    def pooled(xb: torch.Tensor) -> torch.Tensor:
        f = feature_map(model, xb)
        return f.mean(dim=tuple(range(2, f.ndim))).reshape(len(f), -1)

    return batched(pooled, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), batch_size,
                   channels_last=False).numpy()


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




# What chooses the calibration images; the other keys are how the export quantizes with them.
SELECTION_KEYS = ("samples", "selection", "seed")


def build_calibration_set(model: Any, ds: Dataset, cfg: CalibrationConfig, path: str | Path) -> dict[str, Any]:
    """Choose ``cfg.samples`` training images, save them normalized to ``path`` (npz); returns metrics."""
    emb = None
    if cfg.selection == "kcenter":
        # Diversity is measured on what the fp32 model sees: its pooled features of every training image.
        emb = embeddings(model, ds.normalize(ds.train.x))
    idx = select_calibration(ds.train.y, cfg, emb)
    x = ds.normalize(ds.train.x[idx])
    chosen_by = {k: getattr(cfg, k) for k in SELECTION_KEYS}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, x=x, y=ds.train.y[idx], indices=idx, config=np.array(str(chosen_by)))
    counts = np.bincount(ds.train.y[idx], minlength=ds.num_classes)
    return {"samples": int(len(idx)), "method": cfg.method, "per_channel": cfg.per_channel,
            "selection": cfg.selection, "per_class": counts.tolist(), "input_range": [float(x.min()), float(x.max())]}
