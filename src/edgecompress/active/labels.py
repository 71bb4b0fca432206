"""Close the loop: the labels a person wrote into ``to_label.csv`` go into an ``imagefolder`` dataset.

``merge_labels`` copies every pool image whose ``label`` column is filled in to ``<dataset>/train/<label>/``
(the class folders the dataset already has), refusing unknown class names, images that are gone and
files that would overwrite another; rows left blank stay in the pool. ``data.path`` is a dependency of
every stage that reads the images, so the next ``dvc repro`` trains on them.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError


def merge_labels(csv_path: str | Path, pool: str | Path, dataset: str | Path) -> dict[str, Any]:
    """Copy the labelled rows of ``csv_path`` from ``pool`` (a folder, or an ``.npz`` whose images are
    written as PNG) into ``dataset/train/<label>/``; returns how many per class. Checks every row first,
    so a bad row copies nothing."""
    csv_path, pool, train = Path(csv_path), Path(pool), Path(dataset) / "train"
    if not csv_path.is_file():
        raise EdgeCompressError(f"{csv_path} not found; `edgecompress select` writes it")
    if not train.is_dir():
        raise EdgeCompressError(f"{train} does not exist; merge_labels adds to an imagefolder dataset "
                                f"(data.format: imagefolder, with train/<class>/ folders)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    with csv_path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("label") or "").strip()]
    if not rows:
        raise EdgeCompressError(f"{csv_path} has no row with a label; fill in its label column first")
    plan: list[tuple[Any, Path]] = []
    npz = None
    if pool.suffix == ".npz":
        with np.load(pool, allow_pickle=False) as z:
            npz = z["x"]
    for i, r in enumerate(rows, 2):
        label, name = r["label"].strip(), r["file"]
        if label not in classes:
            raise EdgeCompressError(f"{csv_path} line {i}: label {label!r} is not a class of {train} "
                                    f"({', '.join(classes)})")
        if npz is not None:
            index = int(name.rsplit("[", 1)[1].rstrip("]"))  # "pool.npz[17]", as select writes it
            src: Any = npz[index]
            dst = train / label / f"{pool.stem}-{index}.png"
        else:
            src = pool / name
            if not src.is_file():
                raise EdgeCompressError(f"{csv_path} line {i}: {src} is gone from the pool")
            dst = train / label / name.replace("/", "_")
        if dst.exists():
            raise EdgeCompressError(f"{csv_path} line {i}: {dst} already exists (labelled twice?)")
        plan.append((src, dst))
    for src, dst in plan:
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            from PIL import Image

            a = np.asarray(src)
            Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(dst)
    counts = {c: sum(1 for _, d in plan if d.parent.name == c) for c in classes}
    return {"added": len(plan), "per_class": {c: n for c, n in counts.items() if n}, "train": str(train)}
