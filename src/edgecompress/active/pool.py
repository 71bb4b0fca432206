"""The unlabeled pool: its images as uint8 (N, C, H, W) and the names the to-label list gives them.

``select`` reads a pool to score it and ``add-labels`` reads the same pool to copy what a person labelled,
so both go through here: an ``.npz`` pool is turned into (N, C, H, W) the same way for both (the image a
person saw on the contact sheet is the one that lands in the dataset), and an ``.npz`` image is named
``<pool file>[<index>]`` by ``npz_entry`` and found again by ``npz_index``. Numpy and Pillow only: no torch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgecompress.errors import EdgeCompressError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
NPZ_KEYS = ("x", "images", "x_pool")


def npz_entry(pool: Path, index: int) -> str:
    """The name the to-label list gives image ``index`` of the ``.npz`` pool ``pool``: ``field.npz[17]``."""
    return f"{pool.name}[{index}]"


def npz_index(name: str, pool: Path, size: int) -> int:
    """The index of ``name`` (as ``npz_entry`` writes it) in the ``.npz`` pool ``pool`` of ``size`` images;
    an EdgeCompressError (the sentence after ``file ...:``) when ``name`` is another pool's or out of range."""
    m = re.fullmatch(r"(.*)\[(\d+)\]", name)
    if m is None:
        raise EdgeCompressError(f"names no image of the .npz pool {pool}; its rows read "
                                f"{npz_entry(pool, 0)}, {npz_entry(pool, 1)}, ... as `edgecompress select` writes them")
    if m.group(1) != pool.name:
        raise EdgeCompressError(f"is an image of {m.group(1)}, not of the pool {pool}; give the --pool it was "
                                f"chosen from")
    index = int(m.group(2))
    if index >= size:
        raise EdgeCompressError(f"is beyond the pool {pool}, which holds {size} images (indices 0..{size - 1}); "
                                f"give the --pool it was chosen from")
    return index


def read_npz_pool(path: Path) -> np.ndarray:
    """The images of an ``.npz`` pool as uint8 (N, C, H, W): its ``x`` (or ``images``, ``x_pool``) may be
    (N, H, W), (N, H, W, C) or (N, C, H, W), uint8 0..255 or floats in [0, 1]."""
    if not path.is_file():
        raise EdgeCompressError(f"pool {path} not found")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            key = next((k for k in NPZ_KEYS if k in z.files), None)
            if key is None:
                raise EdgeCompressError(f"pool {path} has no array x (it has {sorted(z.files)})")
            x = z[key]
    except EdgeCompressError:
        raise
    except Exception as e:
        raise EdgeCompressError(f"cannot read pool {path} as npz ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise EdgeCompressError(f"pool {path} holds an array of shape {x.shape}; store images as (N, H, W), "
                                f"(N, H, W, C) or (N, C, H, W)")
    if len(x) == 0:
        raise EdgeCompressError(f"pool {path} is empty: nothing to choose from")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.min() >= 0 and x.max() <= 1:
            x = np.rint(x * 255).astype(np.uint8)
        else:
            raise EdgeCompressError(f"pool {path} is {x.dtype}; store uint8 0..255 or floats in [0, 1]")
    return np.ascontiguousarray(x)


def read_pool(path: str | Path, input_shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray]:
    """(names, uint8 (N, C, H, W)) of the unlabeled pool: a folder of images (searched recursively) or an
    ``.npz`` with ``x`` (N, H, W[, C]) or (N, C, H, W); every image must have the model's size and channels."""
    path = Path(path)
    c, h, w = input_shape
    if path.suffix == ".npz":
        x = read_npz_pool(path)
        names = [npz_entry(path, i) for i in range(len(x))]
    elif path.is_dir():
        x, names = _read_folder(path, input_shape)
    else:
        raise EdgeCompressError(f"pool {path} is neither a folder of images nor an .npz file")
    if x.shape[1:] != (c, h, w):
        raise EdgeCompressError(f"pool {path} holds images of shape {tuple(x.shape[1:])} (C, H, W); the model "
                                f"takes {(c, h, w)}: same size and channels as its training images")
    return names, np.ascontiguousarray(x)


def _read_folder(path: Path, input_shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    c, h, w = input_shape
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise EdgeCompressError(f"pool {path} holds no images ({', '.join(IMAGE_EXTS)})")
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert("L" if c == 1 else "RGB"))
        except Exception as e:
            raise EdgeCompressError(f"cannot read image {p}: {e}") from None
        if a.shape[:2] != (h, w):
            raise EdgeCompressError(f"pool image {p} is {a.shape[1]}x{a.shape[0]}, the model takes {w}x{h}; "
                                    f"resize the pool's images to the training images' size")
        arrays.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    return np.stack(arrays), [str(p.relative_to(path)) for p in files]
