"""Dataset file formats: IDX (MNIST family), image folders, CIFAR-10 python batches, npz.

Each loader returns raw uint8 NCHW train/test arrays, int64 labels and class names; splitting,
subsampling and normalisation live in ``edgecompress.data.datasets``.
"""

from __future__ import annotations

import gzip
import importlib
import itertools
import math
import pickle
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edgecompress.errors import EdgeCompressError


class Options(Protocol):
    """What the loaders read from the data config (only image folders use it)."""

    image_size: int | None
    grayscale: bool | None

DEFAULT_PATHS = {"idx": "/usr/share/datasets/fashion-mnist"}  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FORMATS = ("idx", "imagefolder", "cifar10", "npz")
Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]  # x_train, y_train, x_test, y_test, names

PATH_HINTS = {
    "idx": "For the default Fashion-MNIST install Debian's package: sudo apt-get install dataset-fashion-mnist "
           "(or set data.path in params.yaml to a folder holding the four IDX files)",
    "imagefolder": "Set data.path in params.yaml to a folder with train/<class>/*.png and test/<class>/*.png",
    "cifar10": "Set data.path in params.yaml to the CIFAR-10 'python version' folder (cifar-10-batches-py)",
    "npz": "Set data.path in params.yaml to a folder with train.npz and test.npz, or to one .npz file "
           "with x_train, y_train, x_test, y_test",
}


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


def _load_idx(root: Path, cfg: Options) -> Raw:
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


def _bomb_message(path: Path, err: Exception, limit: int) -> str:
    """One line for an image over Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)."""
    # Pillow raises before handing out the image, so its message is the only place the size is.
    m = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(m.group(1)):,} pixels" if m else f"too many pixels ({err})"
    return (f"{path} is {size}, over Pillow's decompression-bomb limit of {limit:,} pixels "
            f"(PIL.Image.MAX_IMAGE_PIXELS); resize the images, they are meant to be small classification inputs")


def _load_imagefolder(root: Path, cfg: Options) -> Raw:
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
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a classification input that
            # large is a mistake or an attack either way, so the warning stops loading like the error.
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    return im.mode, im.size, (np.asarray(im.convert(mode)) if mode else None)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise EdgeCompressError(_bomb_message(p, e, Image.MAX_IMAGE_PIXELS or 0)) from None
        # ValueError: e.g. a PNG text chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK.
        except (UnidentifiedImageError, OSError, ValueError) as e:
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

# Globals a CIFAR-10 pickle may name, as (numpy submodule, name). numpy 1.x wrote "numpy.core.*",
# numpy 2 writes "numpy._core.*"; "numeric._frombuffer" is what protocol 5 uses for arrays.
_NUMPY_GLOBALS = {("", "ndarray"), ("", "dtype"), ("multiarray", "_reconstruct"),
                  ("multiarray", "scalar"), ("numeric", "_frombuffer")}


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` limited to what Python 3 protocol 0-2 pickles use it for: bytes as latin-1 text."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not a pickled bytes object")
    return text.encode("latin1")


class _DatasetUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, dtypes and scalars plus pickle's own containers.

    ``pickle.load`` calls any importable function a file names, so a crafted batch could run code;
    dicts, lists, ints, bytes and strings have their own opcodes and never reach ``find_class``.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the CIFAR-10 keys are
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        head, _, tail = module.rpartition(".")
        sub = "" if module == "numpy" else tail if head in ("numpy.core", "numpy._core") else None
        if sub is not None and (sub, name) in _NUMPY_GLOBALS:
            if not sub:
                return getattr(np, name)
            try:  # numpy 2 (and 1.26's forwarding stubs); avoids numpy.core's deprecation warning
                return getattr(importlib.import_module(f"numpy._core.{sub}"), name)
            except ImportError:
                return getattr(importlib.import_module(f"numpy.core.{sub}"), name)
        raise EdgeCompressError(f"{self.path} refers to {module}.{name}, which a CIFAR-10 batch never contains; "
                                f"refusing to load it (only numpy arrays, lists, ints, bytes and strings may "
                                f"come out of a dataset file)")


def _unpickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise EdgeCompressError(f"missing file {path}; format cifar10 needs the CIFAR-10 'python version' "
                                f"folder: data_batch_1..5, test_batch, batches.meta")
    try:
        # CIFAR-10 is only distributed as pickles, so they are read with the restricted unpickler.
        with open(path, "rb") as f:
            d = _DatasetUnpickler(f, path).load()
    except EdgeCompressError:
        raise
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


def _load_cifar10(root: Path, cfg: Options) -> Raw:
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


def _load_npz(path: Path, cfg: Options) -> Raw:
    if path.is_dir():
        sources = [(path / "train.npz", "x", "y"), (path / "test.npz", "x", "y")]
    else:
        sources = [(path, "x_train", "y_train"), (path, "x_test", "y_test")]
    out: list[np.ndarray] = []
    names: list[str] | None = None
    for file, xk, yk in sources:
        if not file.is_file():
            raise EdgeCompressError(f"missing file {file}. {PATH_HINTS['npz']}")
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


LOADERS: dict[str, Callable[[Path, Options], Raw]] = {
    "idx": _load_idx, "imagefolder": _load_imagefolder, "cifar10": _load_cifar10, "npz": _load_npz}
