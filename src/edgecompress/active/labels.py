"""Close the loop: the labels a person wrote into ``to_label.csv`` go into an ``imagefolder`` dataset.

``merge_labels`` copies every pool image whose ``label`` column is filled in to ``<dataset>/train/<label>/``
(the class folders the dataset already has); rows left blank stay in the pool. Every row is checked
before anything is copied, and a bad one copies nothing: an unknown class name, an image gone from the
pool, a name that leads outside the pool (``/etc/passwd``, ``../x``, a symlink out of it: the list is
a file anyone can edit, the dataset is what the models learn from), one image listed twice or under two
labels, two names that would land on the same file, or an image labelled in an earlier round.
``data.path`` is a dependency of every stage that reads the images, so the next ``dvc repro`` trains on them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.active.pool import npz_index, read_npz_pool
from edgecompress.active.tolabel import LabelledRow, read_labelled
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path

# What the imagefolder loader reads (data/formats.py); other pool images (.bmp) are written as PNG.
LOADER_EXTS = (".png", ".jpg", ".jpeg")
POOL_EXTS = (*LOADER_EXTS, ".bmp")


@dataclass(frozen=True)
class _Copy:
    """One planned copy: the row it comes from, the pool image (a file, or an .npz index) and where it goes."""

    row: LabelledRow
    source: Path | int
    dst: Path


def merge_labels(csv_path: str | Path, pool: str | Path, dataset: str | Path) -> dict[str, Any]:
    """Copy the labelled rows of ``csv_path`` from ``pool`` (a folder, or an ``.npz`` whose images are
    written as PNG) into ``dataset/train/<label>/``; returns how many per class. Checks every row first,
    so a bad row copies nothing."""
    csv_path, pool, train = Path(csv_path), Path(pool), Path(dataset) / "train"
    if not train.is_dir():
        raise EdgeCompressError(f"{train} does not exist; merge_labels adds to an imagefolder dataset "
                                f"(data.format: imagefolder, with train/<class>/ folders)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = read_labelled(csv_path)
    if not rows:
        raise EdgeCompressError(f"{csv_path} has no row with a label; fill in its label column first")
    npz = read_npz_pool(pool) if pool.suffix == ".npz" else None
    if npz is None and not pool.is_dir():
        raise EdgeCompressError(f"pool {pool} is neither a folder of images nor an .npz file; give the --pool "
                                f"the list was chosen from")
    plan: list[_Copy] = []
    for r in rows:
        where = f"{csv_path} line {r.line}"
        if r.label not in classes:
            raise EdgeCompressError(f"{where}: label {r.label!r} is not a class of {train} ({', '.join(classes)})")
        try:
            source, name = _npz_source(r.file, pool, npz) if npz is not None else _folder_source(r.file, pool)
        except EdgeCompressError as e:
            raise EdgeCompressError(f"{where}: file {r.file!r} {e}") from None
        plan.append(_Copy(r, source, train / r.label / name))
    _refuse_repeats(plan, csv_path)
    for c in plan:
        earlier = [train / k / c.dst.name for k in classes if os.path.lexists(train / k / c.dst.name)]
        if earlier:
            raise EdgeCompressError(f"{csv_path} line {c.row.line}: {earlier[0]} already exists (labelled twice?); "
                                    f"clear the label of {c.row.file!r} or remove that file first")
    for c in plan:
        _copy(c, pool, npz)
    counts = {k: sum(1 for c in plan if c.dst.parent.name == k) for k in classes}
    return {"added": len(plan), "per_class": {k: n for k, n in counts.items() if n}, "train": str(train)}


def _npz_source(name: str, pool: Path, x: np.ndarray) -> tuple[int, str]:
    index = npz_index(name, pool, len(x))
    c = x.shape[1]
    if c not in (1, 3):
        raise EdgeCompressError(f"is an image of {c} channels; an imagefolder dataset takes gray (1) or RGB (3)")
    return index, f"{pool.stem}-{index}.png"


def _folder_source(name: str, pool: Path) -> tuple[Path, str]:
    """The pool image ``name`` (relative to ``pool``, as select writes it) and its file name in the dataset.
    The name must stay inside the pool after resolving ``..`` and symlinks: the list is only a text file."""
    rel = Path(name)
    if "\0" in name or rel.is_absolute() or ".." in rel.parts:
        raise EdgeCompressError(f"is not a path inside the pool {pool}; rows name pool images relative to the "
                                f"pool, as `edgecompress select` writes them")
    root = pool.resolve()
    src = (root / rel).resolve()
    if not src.is_relative_to(root):
        raise EdgeCompressError(f"leads outside the pool {pool} (to {src}, through a link); add-labels copies "
                                f"only the pool's own images: replace the link by the image")
    if not src.is_file():
        raise EdgeCompressError(f"is gone from the pool ({pool / rel} is not a file)")
    if src.suffix.lower() not in POOL_EXTS:
        raise EdgeCompressError(f"is not a pool image ({', '.join(POOL_EXTS)})")
    flat = "_".join(src.relative_to(root).parts)
    if src.suffix.lower() in LOADER_EXTS:
        return src, flat
    from PIL import Image

    try:  # decoded now, so a broken one stops the merge before anything is copied
        with Image.open(src) as im:
            im.load()
    except Exception as e:
        raise EdgeCompressError(f"cannot be read as an image ({e})") from None
    return src, f"{Path(flat).stem}.png"


def _refuse_repeats(plan: list[_Copy], csv_path: Path) -> None:
    """One row per image and one image per dataset file, all named at once, before anything is copied."""
    problems = []
    by_source: dict[Path | int, list[_Copy]] = {}
    by_dst: dict[Path, list[_Copy]] = {}
    for c in plan:
        by_source.setdefault(c.source, []).append(c)
        by_dst.setdefault(c.dst, []).append(c)
    for same in by_source.values():
        if len(same) > 1:
            lines = ", ".join(str(c.row.line) for c in same)
            labels = sorted({c.row.label for c in same})
            kind = f"under {len(labels)} labels ({', '.join(labels)})" if len(labels) > 1 else "more than once"
            problems.append(f"lines {lines} list {same[0].row.file!r} {kind}")
    for dst, same in by_dst.items():
        if len({c.source for c in same}) > 1:
            lines = ", ".join(f"{c.row.line} ({c.row.file!r})" for c in same)
            problems.append(f"lines {lines} would all be written to {dst}")
    if problems:
        raise EdgeCompressError(f"{csv_path}: {'; '.join(problems)}; keep one row per image with one label "
                                f"(nothing was copied)")


def _copy(c: _Copy, pool: Path, npz: np.ndarray | None) -> None:
    # Through a temp file and a rename: a dataset file is whole or absent, and a symlink planted at the
    # destination is replaced, never written through.
    with atomic_path(c.dst) as tmp:
        if isinstance(c.source, int):
            assert npz is not None
            _save_png(npz[c.source], tmp)
        elif c.source.suffix.lower() in LOADER_EXTS:
            shutil.copyfile(c.source, tmp)
        else:
            from PIL import Image

            with Image.open(c.source) as im:
                im.save(tmp, format="PNG")


def _save_png(chw: np.ndarray, path: Path) -> None:
    """A uint8 (C, H, W) pool image (C 1 or 3) as a PNG."""
    from PIL import Image

    Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(path, format="PNG")
