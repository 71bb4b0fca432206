"""Image classification datasets (IDX, image folders, CIFAR-10, npz) as uint8 NCHW splits."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.data.formats import DEFAULT_PATHS, FORMATS, LOADERS, PATH_HINTS
from edgecompress.fileio import atomic_path, read_npz



class _FieldError(EdgeCompressError):
    """A bad DataConfig field; ``config.from_dict`` (the one params reader) re-labels it with where the value
    came from (``params.yaml:data: <problem>``)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"DataConfig: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split/subsample it (the ``data`` section of params.yaml)."""

    format: str = "idx"  # idx | imagefolder | cifar10 | npz
    path: str | None = None  # None -> DEFAULT_PATHS[format]
    val_fraction: float = 0.1  # seeded validation split carved from train, in [0, 0.5]
    limit: int | None = None  # keep at most this many train and test images (seeded); >= 10
    seed: int = 0
    image_size: int | None = None  # imagefolder only: resize to a square of this size
    grayscale: bool | None = None  # imagefolder only: None = infer from the image modes

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise _FieldError(f"format={self.format!r} is not supported; allowed: {', '.join(FORMATS)}")
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
                raise _FieldError(f"path={self.path!r} must be a non-empty string or null (default location)")
            object.__setattr__(self, "path", os.fspath(self.path))
        elif self.format not in DEFAULT_PATHS:
            raise _FieldError(f"path is required for format {self.format!r}; only "
                              f"{', '.join(DEFAULT_PATHS)} has a default location. {PATH_HINTS[self.format]}")
        v = self.val_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 0.5):
            raise _FieldError(f"val_fraction={v!r} is invalid; allowed: a number in [0, 0.5]")
        object.__setattr__(self, "val_fraction", float(v))
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 10):
            raise _FieldError(f"limit={self.limit!r} is invalid; allowed: an integer >= 10, or null for all images")
        if not _is_int(self.seed) or self.seed < 0:
            raise _FieldError(f"seed={self.seed!r} is invalid; allowed: an integer >= 0")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise _FieldError(f"image_size={self.image_size!r} is invalid; allowed: a positive integer or null")
        if self.grayscale is not None and not isinstance(self.grayscale, bool):
            raise _FieldError(f"grayscale={self.grayscale!r} is invalid; allowed: true, false or null (infer)")
        for name in ("image_size", "grayscale"):
            # Silently ignoring these for other formats would hide a misconfigured run.
            if getattr(self, name) is not None and self.format != "imagefolder":
                raise _FieldError(f"{name} only applies to format 'imagefolder' (format is {self.format!r}); "
                                  f"remove it or set it to null")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Split:
    """Images and labels of one split."""

    x: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray  # int64, (N,)

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise EdgeCompressError(f"Split.x must be uint8 (N, C, H, W), got {self.x.dtype} {self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise EdgeCompressError(f"Split.y must be int64 ({len(self.x)},), got {self.y.dtype} {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits plus the per-channel statistics every model input is normalized with."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, train split only, on the x/255 scale
    std: tuple[float, ...]
    config: DataConfig | None = None  # where it came from; recorded by meta()
    path: str | None = None  # the resolved data path

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", [str(c) for c in self.class_names])
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        shape = self.train.x.shape[1:]
        for name, s in (("val", self.val), ("test", self.test)):
            if s.x.shape[1:] != shape:
                raise EdgeCompressError(f"{name} images are {s.x.shape[1:]} but train images are {shape}")
        if not self.class_names:
            raise EdgeCompressError("a dataset needs at least one class name")
        if len(self.mean) != shape[0] or len(self.std) != shape[0] or min(self.std) <= 0:
            raise EdgeCompressError(f"mean/std need one value per channel ({shape[0]}) and std > 0, "
                                    f"got mean={self.mean} std={self.std}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        """Image height (use ``input_shape`` for non-square images)."""
        return int(self.train.x.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """uint8 (N)CHW -> float32 ((x / 255) - mean) / std."""
        if x.ndim < 3 or x.shape[-3] != self.channels:
            raise EdgeCompressError(f"expected (N, {self.channels}, H, W) images, got shape {x.shape}")
        mean = np.asarray(self.mean, np.float64).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float64).reshape(-1, 1, 1)
        # One multiply-add in float32 in place: the full train set stays a single float copy.
        out = x.astype(np.float32)
        out *= (1.0 / (255.0 * std)).astype(np.float32)
        out -= (mean / std).astype(np.float32)
        return out

    def to_tensor(self, x: np.ndarray) -> Any:
        """``normalize`` as a torch tensor (torch imported here: checks and reports read data without it)."""
        import torch

        return torch.from_numpy(self.normalize(x))

    def meta(self) -> dict[str, Any]:
        """JSON-able description stored with every artifact."""
        cfg = self.config
        return {"format": cfg.format if cfg else None, "path": self.path, "class_names": list(self.class_names),
                "mean": list(self.mean), "std": list(self.std), "input_shape": list(self.input_shape),
                "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
                "seed": cfg.seed if cfg else None, "limit": cfg.limit if cfg else None,
                "val_fraction": cfg.val_fraction if cfg else None}


def normalize_images(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NCHW -> float32 (x / 255 - mean) / std with a sidecar's or checkpoint's per-channel stats.

    The formula the on-device runner applies (``deploy.runner.preprocess``, which cannot import
    this), so a check or report computed here sees the inputs the device sees.
    """
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((x.astype(np.float32) / 255.0 - m) / s).astype(np.float32)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.format`` from ``cfg.path``, subsample to ``limit``, carve the val split, compute stats."""
    path = Path(cfg.path if cfg.path is not None else DEFAULT_PATHS[cfg.format]).expanduser()
    if not path.exists():
        raise EdgeCompressError(f"data path {path} does not exist. {PATH_HINTS[cfg.format]}")
    xtr, ytr, xte, yte, names = LOADERS[cfg.format](path, cfg)
    if xte.shape[1:] != xtr.shape[1:]:
        raise EdgeCompressError(f"{path}: test images are {xte.shape[1:]} (C, H, W) but train images are "
                                f"{xtr.shape[1:]}; both splits must have the same shape")
    for split, y in (("train", ytr), ("test", yte)):
        if len(y) == 0:
            raise EdgeCompressError(f"{path}: the {split} split has no images")
        if y.min() < 0 or y.max() >= len(names):
            raise EdgeCompressError(f"{path}: {split} labels range {y.min()}..{y.max()} but there are "
                                    f"{len(names)} classes; labels must be in 0..{len(names) - 1}")
    rng = np.random.default_rng(cfg.seed)
    tr, te = _subset(len(ytr), cfg.limit, rng), _subset(len(yte), cfg.limit, rng)
    perm = tr[rng.permutation(len(tr))]
    n_val = min(int(round(cfg.val_fraction * len(tr))), len(tr) - 1)  # keep >= 1 train image
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    # Fancy indexing copies, so every split is a writable array independent of the file buffers.
    train = Split(xtr[train_idx], ytr[train_idx])
    mean, std = _channel_stats(train.x)
    return Dataset(train=train, val=Split(xtr[val_idx], ytr[val_idx]), test=Split(xte[te], yte[te]),
                   class_names=names, mean=mean, std=std, config=cfg, path=str(path))


def save_npz_split(path: str | Path, split: Split, class_names: list[str]) -> None:
    """Write x, y and class_names to ``path`` atomically (loadable as a ``npz`` train/test file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a handle: np.savez would append .npz to a name
        np.savez(f, x=split.x, y=split.y, class_names=np.array([str(c) for c in class_names], dtype=str))


def load_npz_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a file ``save_npz_split`` wrote (the export stage's testset.npz); a missing or corrupt
    file is one clear error."""
    d = read_npz(path, ("x", "y"), "test set", "re-run the export stage (dvc repro export), which writes it")
    return d["x"], d["y"]


def _subset(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if limit is None or limit >= n else np.sort(rng.choice(n, size=limit, replace=False))


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std on the x/255 scale via a 256-bin histogram (no float copy of x)."""
    v = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        m = float(counts @ v / counts.sum())
        var = max(float(counts @ (v * v) / counts.sum()) - m * m, 0.0)
        # A constant channel would divide by zero; std 1 just centres it.
        stds.append(math.sqrt(var) if var > 1e-12 else 1.0)
        means.append(m)
    return tuple(means), tuple(stds)


