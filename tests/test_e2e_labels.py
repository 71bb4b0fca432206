"""End to end, from an .npz pool: select -> a person labels -> add-labels -> plain `dvc repro` retrains.

The npz counterpart of tests/test_e2e_dvc.py::test_labelled_images_make_dvc_repro_retrain (a folder pool):
the pool is (N, H, W) uint8, the layout most .npz datasets use, which add-labels could not write before."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_e2e_dvc import _dvc, _tiny_repo


@pytest.mark.slow
def test_labels_from_an_npz_pool_make_dvc_repro_retrain(tmp_path: Path) -> None:
    from PIL import Image

    work, params = _tiny_repo(tmp_path)
    ds, pool = tmp_path / "shapes", tmp_path / "field.npz"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("bar", "dot")):
            (ds / split / name).mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 40, (12, 12)).astype(np.uint8)
                x[2 + 6 * c:4 + 6 * c] = 250
                Image.fromarray(x).save(ds / split / name / f"{i}.png")
    unlabeled = rng.integers(0, 256, (5, 12, 12)).astype(np.uint8)
    np.savez(pool, x=unlabeled)
    params["data"].update(format="imagefolder", path=str(ds), limit=None)
    params["train_teacher"].update(ensemble_size=1, members=[])
    params["distill"]["source"] = "teacher"
    params["check"]["targets"] = ["tiny-host"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0
    first = _dvc(work, "repro", "train_teacher")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "train_teacher" not in _dvc(work, "status", "train_teacher").stdout

    # select ranks the npz pool with the teacher; its list names the images field.npz[<index>].
    chosen = subprocess.run([sys.executable, "-m", "edgecompress.cli", "select", "--pool", str(pool), "--budget", "2",
                             "--model", "models/teacher.pt", "--out", "to_label.csv"], cwd=work, capture_output=True,
                            text=True, timeout=300)
    assert chosen.returncode == 0, chosen.stderr
    rows = list(csv.DictReader((work / "to_label.csv").open(newline="")))
    assert len(rows) == 2 and all(r["file"].startswith("field.npz[") for r in rows)
    # The person labels the first image and leaves the second in the pool.
    rows[0]["label"] = "dot"
    with (work / "to_label.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    added = subprocess.run([sys.executable, "-m", "edgecompress.cli", "add-labels", "--csv", "to_label.csv",
                            "--pool", str(pool), "--dataset", str(ds)], cwd=work, capture_output=True, text=True,
                           timeout=300)
    assert added.returncode == 0, added.stderr
    index = int(rows[0]["file"][len("field.npz["):-1])
    written = ds / "train" / "dot" / f"field-{index}.png"
    assert np.array_equal(np.asarray(Image.open(written)), unlabeled[index])  # the image select ranked
    assert len(list((ds / "train").rglob("field-*.png"))) == 1

    assert f"modified:           {ds}" in _dvc(work, "status", "train_teacher").stdout
    again = _dvc(work, "repro", "train_teacher")
    assert again.returncode == 0 and "Running stage 'train_teacher'" in again.stdout, again.stderr[-3000:]
    sizes = json.loads((work / "models/teacher.pt.json").read_text())["data"]["sizes"]
    assert sizes["train"] + sizes["val"] == 2 * 12 + 1
