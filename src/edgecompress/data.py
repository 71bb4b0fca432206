"""Image classification datasets (IDX, image folders, CIFAR-10, npz) as uint8 NCHW splits."""

from __future__ import annotations

import difflib
import gzip
import itertools
import math
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path

DEFAULT_PATHS = {"idx": "/usr/share/datasets/fashion-mnist"}  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FORMATS = ("idx", "imagefolder", "cifar10", "npz")
_Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]  # x_train, y_train, x_test, y_test, names

_PATH_HINTS = {
    "idx": "For the default Fashion-MNIST install Debian's package: sudo apt-get install dataset-fashion-mnist "
           "(or set data.path in params.yaml to a folder holding the four IDX files)",
    "imagefolder": "Set data.path in params.yaml to a folder with train/<class>/*.png and test/<class>/*.png",
    "cifar10": "Set data.path in params.yaml to the CIFAR-10 'python version' folder (cifar-10-batches-py)",
    "npz": "Set data.path in params.yaml to a folder with train.npz and test.npz, or to one .npz file "
           "with x_train, y_train, x_test, y_test",
}


class _FieldError(EdgeCompressError):
    """A bad DataConfig field; ``from_dict`` re-labels it with where the value came from."""

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
                              f"{', '.join(DEFAULT_PATHS)} has a default location. {_PATH_HINTS[self.format]}")
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

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "params.yaml:data") -> "DataConfig":
        """Build from a params section; unknown keys and bad values name ``where``."""
        d = {} if d is None else d  # an empty YAML section parses as None
        if not isinstance(d, dict):
            raise EdgeCompressError(f"{where} must be a mapping of data options, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in d:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise EdgeCompressError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
        try:
            return cls(**d)
        except _FieldError as e:
            raise EdgeCompressError(f"{where}: {e.problem}") from None


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

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.normalize(x))

    def meta(self) -> dict[str, Any]:
        """JSON-able description stored with every artifact."""
        cfg = self.config
        return {"format": cfg.format if cfg else None, "path": self.path, "class_names": list(self.class_names),
                "mean": list(self.mean), "std": list(self.std), "input_shape": list(self.input_shape),
                "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
                "seed": cfg.seed if cfg else None, "limit": cfg.limit if cfg else None,
                "val_fraction": cfg.val_fraction if cfg else None}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.format`` from ``cfg.path``, subsample to ``limit``, carve the val split, compute stats."""
    path = Path(cfg.path if cfg.path is not None else DEFAULT_PATHS[cfg.format]).expanduser()
    if not path.exists():
        raise EdgeCompressError(f"data path {path} does not exist. {_PATH_HINTS[cfg.format]}")
    loader = {"idx": _load_idx, "imagefolder": _load_imagefolder, "cifar10": _load_cifar10, "npz": _load_npz}
    xtr, ytr, xte, yte, names = loader[cfg.format](path, cfg)
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


def _default_names(n: int, path: Path) -> list[str]:
    fashion = n == 10 and "fashion" in str(path).lower()
    return list(FASHION_MNIST_CLASSES) if fashion else [str(i) for i in range(n)]


# ---- idx

_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def _find_idx(root: Path, stem: str) -> Path:
    # The MNIST site names files "train-images-idx3-ubyte"; some mirrors use "train-images.idx3-ubyte".
    for name in (stem, stem.replace("-idx", ".idx")):
        for cand in (root / name, root / f"{name}.gz"):
            if cand.is_file():
                return cand
    raise EdgeCompressError(f"missing file {root / stem}[.gz]; format idx needs train-images-idx3-ubyte, "
                            f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
                            f"(plain or .gz) in {root}")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking the magic number and the byte count."""
    kind = "image" if magic == _IDX_IMAGES else "label"
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise EdgeCompressError(f"cannot read {path}: {e}; the file is corrupt, re-download it") from None
    if len(raw) < 4:
        raise EdgeCompressError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header")
    (got,) = struct.unpack(">I", raw[:4])
    if got != magic:
        other = {_IDX_IMAGES: " (that is an IDX image file: are the files swapped?)",
                 _IDX_LABELS: " (that is an IDX label file: are the files swapped?)"}.get(got, "")
        raise EdgeCompressError(f"{path} is not an IDX {kind} file: magic number 0x{got:08x}, "
                                f"expected 0x{magic:08x}{other}")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise EdgeCompressError(f"{path} is truncated inside its {head}-byte header")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    want, have = math.prod(dims), len(raw) - head
    if have != want:
        what = "truncated" if have < want else "longer than its header says"
        raise EdgeCompressError(f"{path} is {what}: header says {' x '.join(map(str, dims))} = {want} bytes "
                                f"of data, the file has {have}; re-download it")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(dims)


def _load_idx(root: Path, cfg: DataConfig) -> _Raw:
    out = []
    for prefix in ("train", "t10k"):
        ipath, lpath = _find_idx(root, f"{prefix}-images-idx3-ubyte"), _find_idx(root, f"{prefix}-labels-idx1-ubyte")
        x, y = _read_idx(ipath, _IDX_IMAGES), _read_idx(lpath, _IDX_LABELS)
        if len(x) != len(y):
            raise EdgeCompressError(f"{lpath} has {len(y)} labels but {ipath} has {len(x)} images; "
                                    f"the files do not belong together")
        out += [x[:, None], y.astype(np.int64)]
    n = int(max(out[1].max(initial=0), out[3].max(initial=0))) + 1
    names = _default_names(n, root)
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        names = [ln.strip() for ln in classes_txt.read_text().splitlines() if ln.strip()]
        if n > len(names):
            raise EdgeCompressError(f"labels go up to {n - 1} but {classes_txt} names only {len(names)} classes")
    return out[0], out[1], out[2], out[3], names


# ---- imagefolder

_IMAGE_EXTS = {".png", ".jpg", ".jpeg"}
_GRAY_MODES = {"1", "L", "LA"}


def _load_imagefolder(root: Path, cfg: DataConfig) -> _Raw:
    from PIL import Image, UnidentifiedImageError

    layout = f"format imagefolder expects {root}/train/<class>/*.png|jpg|jpeg and {root}/test/<class>/..."
    dirs = {s: root / s for s in ("train", "test")}
    for d in dirs.values():
        if not d.is_dir():
            raise EdgeCompressError(f"{d} does not exist; {layout}")
    classes = {s: sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
               for s, d in dirs.items()}
    names = classes["train"]
    if not names:
        raise EdgeCompressError(f"{dirs['train']} has no class sub-folders; {layout}")
    if classes["test"] != names:
        missing, extra = sorted(set(names) - set(classes["test"])), sorted(set(classes["test"]) - set(names))
        raise EdgeCompressError(f"{dirs['test']} must have the same class folders as {dirs['train']}; "
                                f"missing: {missing}, extra: {extra}")
    files: dict[str, list[tuple[Path, int]]] = {s: [] for s in dirs}
    for (s, d), (label, name) in itertools.product(dirs.items(), enumerate(names)):
        imgs = sorted(p for p in (d / name).iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)
        if not imgs:
            raise EdgeCompressError(f"image folder {d / name} has no images (*.png, *.jpg, *.jpeg)")
        files[s] += [(p, label) for p in imgs]

    def read(p: Path, mode: str | None = None) -> tuple[str, tuple[int, int], np.ndarray | None]:
        """(mode, size, pixels); without ``mode`` only the header is read (Image.open is lazy)."""
        try:
            with Image.open(p) as im:
                return im.mode, im.size, (np.asarray(im.convert(mode)) if mode else None)
        except (UnidentifiedImageError, OSError) as e:
            raise EdgeCompressError(f"cannot read image {p}: {e}") from None

    gray = cfg.grayscale
    if gray is None:
        gray = all(read(p)[0] in _GRAY_MODES for p, _ in files["train"] + files["test"])
    mode, first = ("L" if gray else "RGB"), files["train"][0][0]
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else read(first)[1]
    out = []
    for s in ("train", "test"):
        x = np.empty((len(files[s]), 1 if gray else 3, size[1], size[0]), np.uint8)
        for i, (p, _) in enumerate(files[s]):
            _, got, a = read(p, mode)
            if got != size:
                if cfg.image_size is None:
                    raise EdgeCompressError(f"{p} is {got[0]}x{got[1]} but {first} is {size[0]}x{size[1]}; all "
                                            f"images must be the same size, or set data.image_size to resize them")
                # Resize after converting: palette/bilevel images cannot be resized bilinearly.
                a = np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR))
            x[i] = a[None] if gray else a.transpose(2, 0, 1)
        out += [x, np.array([lab for _, lab in files[s]], np.int64)]
    return out[0], out[1], out[2], out[3], names


# ---- cifar10

def _unpickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise EdgeCompressError(f"missing file {path}; format cifar10 needs the CIFAR-10 'python version' "
                                f"folder: data_batch_1..5, test_batch, batches.meta")
    try:
        # CIFAR-10 is only distributed as pickles; this reads the user's own dataset files.
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise EdgeCompressError(f"{path} is not a CIFAR-10 python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise EdgeCompressError(f"{path} holds a {type(d).__name__}, expected a CIFAR-10 batch dict")
    return d


def _entry(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise EdgeCompressError(f"{path} has no {key!r} entry; expected the CIFAR-10 'python version' "
                            f"(CIFAR-100 uses other keys)")


def _load_cifar10(root: Path, cfg: DataConfig) -> _Raw:
    if not (root / "data_batch_1").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"  # pointed at the folder the tarball extracts into

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        p = root / name
        d = _unpickle(p)
        x, y = np.asarray(_entry(d, "data", p)), np.asarray(_entry(d, "labels", p), np.int64)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise EdgeCompressError(f"{p}: 'data' is {x.dtype} {x.shape}, expected uint8 (N, 3072)")
        if y.shape != (len(x),):
            raise EdgeCompressError(f"{p} has {y.size} labels for {len(x)} images")
        return x.reshape(-1, 3, 32, 32), y

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = batch("test_batch")
    meta_path = root / "batches.meta"
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _entry(_unpickle(meta_path), "label_names", meta_path)]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), xte, yte, names)


# ---- npz

def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 NCHW from (N,H,W), NHWC or NCHW; float [0, 1] and small-int inputs are converted."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise EdgeCompressError(f"{where} has shape {x.shape}; allowed: (N, H, W), (N, H, W, C) or "
                                f"(N, C, H, W) with C in {{1, 3}}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.size and np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise EdgeCompressError(f"{where} is float but not in [0, 1]; store uint8 0..255 or floats in [0, 1]")
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    if x.size and np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        return np.ascontiguousarray(x.astype(np.uint8))
    raise EdgeCompressError(f"{where} has dtype {x.dtype}; allowed: uint8 0..255 or float in [0, 1]")


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # Keras-style (N, 1) labels
        y = y[:, 0]
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise EdgeCompressError(f"{where} is {y.dtype} {y.shape}; expected integer labels of shape ({n},)")
    return y.astype(np.int64)


def _load_npz(path: Path, cfg: DataConfig) -> _Raw:
    if path.is_dir():
        sources = [(path / "train.npz", "x", "y"), (path / "test.npz", "x", "y")]
    else:
        sources = [(path, "x_train", "y_train"), (path, "x_test", "y_test")]
    out: list[np.ndarray] = []
    names: list[str] | None = None
    for file, xk, yk in sources:
        if not file.is_file():
            raise EdgeCompressError(f"missing file {file}. {_PATH_HINTS['npz']}")
        try:
            # Our own handle: np.load leaks its file when the zip turns out to be corrupt.
            with open(file, "rb") as fh:
                z = np.load(fh, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise EdgeCompressError(f"{file} is a single .npy array, expected an .npz archive")
                missing = [k for k in (xk, yk) if k not in z.files]
                if missing:
                    raise EdgeCompressError(f"{file} lacks arrays {missing}; it has {sorted(z.files)}")
                x = _npz_images(z[xk], f"{file}:{xk}")
                out += [x, _npz_labels(z[yk], len(x), f"{file}:{yk}")]
                if names is None and "class_names" in z.files:
                    names = [str(c) for c in z["class_names"].ravel()]
        except EdgeCompressError:
            raise
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise EdgeCompressError(f"cannot read {file} as npz ({e})") from None
    if names is None:
        names = _default_names(int(max(out[1].max(initial=0), out[3].max(initial=0))) + 1, path)
    return out[0], out[1], out[2], out[3], names
