"""Hostile and careless input to the labelling loop (issue #26, part C): `edgecompress add-labels` copies only
the pool's own images, refuses repeated and conflicting rows before copying anything, reads npz pools in
every layout select reads; `to_label.csv` is safe to open in a spreadsheet; `edgecompress select` names a
bad sidecar or mismatched ensemble members. Every failure: one line naming the input, exit 1, no traceback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecompress.active.tolabel import escape_cell, unescape_cell
from edgecompress.checkpoint import save_checkpoint
from edgecompress.models import MobileNetStudent

REPO = Path(__file__).resolve().parents[1]
HEADER = ["file", "rank", "score", "guess", "confidence", "label"]
INJECTION = "=2+5+cmd|' /C calc'!A0"


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def _refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The one-line error of a refused command; asserts exit 1, no traceback and that it names ``parts``."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgecompress: error: "), proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def _image(path: Path, value: int = 100, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _setup(tmp: Path) -> tuple[Path, Path]:
    """A folder pool (day1/0.png .. day1/2.png) and an imagefolder dataset with classes bag and shoe."""
    pool = tmp / "pool"
    for i in range(3):
        _image(pool / "day1" / f"{i}.png", 10 * i)
    for c in ("bag", "shoe"):
        (tmp / "ds" / "train" / c).mkdir(parents=True)
    return pool, tmp / "ds"


def _write_csv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([HEADER, *[[name, i, 0.5, "bag", 0.5, label] for i, (name, label) in
                                           enumerate(rows, 1)]])
    return path


def _dataset_files(ds: Path) -> list[str]:
    return sorted(str(p.relative_to(ds)) for p in (ds / "train").rglob("*") if not p.is_dir())


# --- security 5: rows name only the pool's own images -------------------------------------------


@pytest.mark.parametrize("case", ["etc-passwd", "dotdot", "absolute", "symlink-out", "symlink-dir-out"])
def test_add_labels_copies_nothing_from_outside_the_pool(tmp_path: Path, case: str) -> None:
    pool, ds = _setup(tmp_path)
    secret = tmp_path / "secret.png"  # a real image outside the pool: only the path check stops it
    _image(secret, 255)
    name, why = {"etc-passwd": ("/etc/passwd", "is not a path inside the pool"),
                 "dotdot": ("../secret.png", "is not a path inside the pool"),
                 "absolute": (str(secret), "is not a path inside the pool"),
                 "symlink-out": ("link.png", f"leads outside the pool {pool} (to {secret}"),
                 "symlink-dir-out": ("outside/secret.png", f"leads outside the pool {pool} (to {secret}")}[case]
    (pool / "link.png").symlink_to(secret)
    (pool / "outside").symlink_to(tmp_path, target_is_directory=True)
    # A good row first: a bad row anywhere copies nothing.
    out = _write_csv(tmp_path / "to_label.csv", [["day1/0.png", "bag"], [name, "shoe"]])
    proc = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    _refused(proc, f"{out} line 3: file {name!r} {why}")
    assert _dataset_files(ds) == [] and "added" not in proc.stdout


def test_a_symlink_inside_the_pool_to_a_pool_image_is_fine(tmp_path: Path) -> None:
    pool, ds = _setup(tmp_path)
    (pool / "alias.png").symlink_to(pool / "day1" / "2.png")
    out = _write_csv(tmp_path / "to_label.csv", [["alias.png", "bag"]])
    proc = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _dataset_files(ds) == ["train/bag/day1_2.png"]  # the image itself, named by where it is


# --- security 7: CSV injection ------------------------------------------------------------------


@pytest.mark.parametrize("text", [INJECTION, "+1", "-1.png", "@SUM(A1)", "\tx", "\rx", "'=x", "''", "'", "'a",
                                  "plain.png", "a=b.png", ""])
def test_escaping_round_trips_and_leaves_no_formula(text: str) -> None:
    cell = escape_cell(text)
    assert unescape_cell(cell) == text
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


def _student(path: Path, classes: list[str]) -> Path:
    model = MobileNetStudent(1, len(classes), [8, 8], [2])
    save_checkpoint(path, model, {"kind": "mobilenet", "in_channels": 1, "num_classes": len(classes),
                                  "channels": [8, 8], "strides": [2], "dropout": 0.0},
                    {"data": {"input_shape": [1, 12, 12], "mean": [0.5], "std": [0.25], "class_names": classes},
                     "metrics": {}})
    return path


def test_formula_names_are_written_escaped_and_found_again(tmp_path: Path) -> None:
    """A pool file named like a spreadsheet formula is written with a leading ' (as are class names), and
    add-labels finds it from the escaped name and from the name a spreadsheet saves back unescaped."""
    pool, ds = _setup(tmp_path)
    evil = f"{INJECTION}.png"  # its / makes it a folder "=2+5+cmd|' " holding "C calc'!A0.png"
    _image(pool / evil, 200)
    _image(pool / "-3.png", 201)
    model = _student(tmp_path / "student.pt", ["=HYPERLINK(\"http://x\")", "bag", "shoe", "d"])
    out = tmp_path / "to_label.csv"
    sel = _cli("select", "--pool", pool, "--budget", "5", "--model", model, "--out", out, cwd=tmp_path)
    assert sel.returncode == 0, sel.stderr
    raw = out.read_text()
    assert f"'{INJECTION}.png" in raw and "'-3.png" in raw
    rows = list(csv.DictReader(out.open(newline="")))
    for r in rows:
        assert not r["file"].startswith(("=", "+", "-", "@", "\t", "\r"))
        assert not r["guess"].startswith(("=", "+", "-", "@", "\t", "\r"))
    # The person fills in the label column and saves (the escaped cells stay as they are) ...
    for r in rows:
        r["label"] = "bag" if r["file"] == f"'{evil}" else ""
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, HEADER)
        w.writeheader()
        w.writerows(rows)
    added = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert _dataset_files(ds) == [f"train/bag/{evil.replace('/', '_')}"]
    # ... or a spreadsheet writes the value back without its ': still the same pool image.
    _write_csv(out, [["-3.png", "shoe"]])
    again = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "train/shoe/-3.png" in _dataset_files(ds)


# --- add-labels: repeated rows are refused before anything is copied ----------------------------


@pytest.mark.parametrize("rows, message", [
    ([["day1/0.png", "bag"], ["day1/1.png", ""], ["day1/0.png", "bag"]],
     "lines 2, 4 list 'day1/0.png' more than once"),
    ([["day1/0.png", "bag"], ["day1/1.png", "bag"], ["day1/0.png", "shoe"]],
     "lines 2, 4 list 'day1/0.png' under 2 labels (bag, shoe)"),
    ([["day1/1.png", "shoe"], ["day1_1.png", "shoe"]],
     "lines 2 ('day1/1.png'), 3 ('day1_1.png') would all be written to "),
])
def test_duplicate_and_conflicting_rows_copy_nothing(tmp_path: Path, rows: list, message: str) -> None:
    pool, ds = _setup(tmp_path)
    _image(pool / "day1_1.png", 77)  # flattens to the same dataset file as day1/1.png
    out = _write_csv(tmp_path / "to_label.csv", rows)
    proc = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    line = _refused(proc, f"{out}: {message}", "keep one row per image with one label (nothing was copied)")
    assert "written" not in message or f"written to {ds / 'train/shoe/day1_1.png'};" in line
    assert _dataset_files(ds) == []


def test_an_image_labelled_in_an_earlier_round_under_another_class_is_refused(tmp_path: Path) -> None:
    pool, ds = _setup(tmp_path)
    out = _write_csv(tmp_path / "to_label.csv", [["day1/0.png", "bag"]])
    assert _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path).returncode == 0
    _write_csv(out, [["day1/1.png", "bag"], ["day1/0.png", "shoe"]])
    proc = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    _refused(proc, f"{out} line 3: {ds / 'train/bag/day1_0.png'} already exists (labelled twice?)")
    assert _dataset_files(ds) == ["train/bag/day1_0.png"]


def test_a_bmp_pool_image_becomes_a_png_the_dataset_loader_reads(tmp_path: Path) -> None:
    pool, ds = _setup(tmp_path)
    Image.fromarray(np.full((12, 12), 42, np.uint8)).save(pool / "scan.bmp")
    out = _write_csv(tmp_path / "to_label.csv", [["scan.bmp", "shoe"]])
    assert _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path).returncode == 0
    assert _dataset_files(ds) == ["train/shoe/scan.png"]
    assert (np.asarray(Image.open(ds / "train/shoe/scan.png")) == 42).all()


# --- add-labels: crashes become one line ---------------------------------------------------------


def test_a_csv_without_a_file_column_or_not_text_is_named(tmp_path: Path) -> None:
    pool, ds = _setup(tmp_path)
    out = tmp_path / "to_label.csv"
    out.write_text("name,label\nday1/0.png,bag\n")
    _refused(_cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path),
             f"{out} has no 'file' column (its header: 'name', 'label'); give the list `edgecompress select` wrote")
    out.write_bytes((pool / "day1/0.png").read_bytes())  # a binary file given as the CSV
    _refused(_cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path),
             f"{out} is not UTF-8 text (", "save as CSV UTF-8")
    assert _dataset_files(ds) == []


NPZ_LAYOUTS = {"NHW": lambda a: a[:, 0], "NCHW": lambda a: a, "NHWC": lambda a: a.transpose(0, 2, 3, 1),
               "float NHWC": lambda a: (a.transpose(0, 2, 3, 1) / 255.0).astype(np.float32)}


@pytest.mark.parametrize("layout, channels", [("NHW", 1), ("NCHW", 1), ("NCHW", 3), ("NHWC", 1), ("NHWC", 3),
                                              ("float NHWC", 3)])
def test_npz_pools_in_every_layout_become_pngs(tmp_path: Path, layout: str, channels: int) -> None:
    """The image written is the one select showed: same pixels, gray or RGB, whatever the npz's layout."""
    _, ds = _setup(tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (5, channels, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "field.npz", x=NPZ_LAYOUTS[layout](x))
    out = _write_csv(tmp_path / "to_label.csv", [["field.npz[4]", "bag"], ["field.npz[0]", "shoe"]])
    proc = _cli("add-labels", "--csv", out, "--pool", tmp_path / "field.npz", "--dataset", ds, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for index, label in ((4, "bag"), (0, "shoe")):
        got = np.asarray(Image.open(ds / "train" / label / f"field-{index}.png"))
        assert np.array_equal(got, x[index, 0] if channels == 1 else x[index].transpose(1, 2, 0))


@pytest.mark.parametrize("name, why", [
    ("field.npz[5]", "is beyond the pool {pool}, which holds 5 images (indices 0..4)"),
    ("field.npz", "names no image of the .npz pool {pool}; its rows read field.npz[0], field.npz[1]"),
    ("field.npz[-1]", "names no image of the .npz pool {pool}"),
    ("day1/0.png", "names no image of the .npz pool {pool}"),
    ("other.npz[1]", "is an image of other.npz, not of the pool {pool}; give the --pool it was chosen from"),
])
def test_a_row_that_is_no_image_of_the_npz_pool_is_named(tmp_path: Path, name: str, why: str) -> None:
    _, ds = _setup(tmp_path)
    pool = tmp_path / "field.npz"
    np.savez(pool, x=np.zeros((5, 12, 12), np.uint8))
    out = _write_csv(tmp_path / "to_label.csv", [["field.npz[1]", "bag"], [name, "shoe"]])
    proc = _cli("add-labels", "--csv", out, "--pool", pool, "--dataset", ds, cwd=tmp_path)
    _refused(proc, f"{out} line 3: file {name!r} {why.format(pool=pool)}")
    assert _dataset_files(ds) == []


# --- select: a bad sidecar, mismatched ensemble members ------------------------------------------


def test_select_names_a_sidecar_without_input_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "pool.npz", x=np.zeros((3, 12, 12), np.uint8))
    (tmp_path / "m.onnx").write_bytes(b"not used: the sidecar is read first")
    (tmp_path / "m.onnx.json").write_text(json.dumps({"format": "onnx", "layout": "NCHW"}))
    proc = _cli("select", "--pool", "pool.npz", "--budget", "1", "--artifact", "m.onnx", "--target",
                REPO / "targets/host.yaml", "--device", "local", "--out", "out.csv", cwd=tmp_path)
    _refused(proc, "sidecar m.onnx.json has no usable input_shape/layout (input_shape=missing",
             "re-export the artifact (dvc repro export)")
    assert not (tmp_path / "out.csv").exists()


def test_select_names_ensemble_members_with_other_classes(tmp_path: Path) -> None:
    pool, _ = _setup(tmp_path)
    a = _student(tmp_path / "a.pt", ["w", "x", "y", "z"])
    b = _student(tmp_path / "b.pt", ["w", "x", "y"])
    proc = _cli("select", "--pool", pool, "--budget", "2", "--strategy", "bald", "--model", a, "--model", b,
                "--out", "out.csv", cwd=tmp_path)
    _refused(proc, f"--model {b} predicts 3 classes ['w', 'x', 'y'], but {a} predicts 4",
             "an ensemble's members must be trained on the same classes")
    assert not (tmp_path / "out.csv").exists()


def test_score_pool_refuses_members_with_other_classes_without_metadata() -> None:
    """The library call (benchmarks use it without checkpoints) names the mismatch instead of np.stack's."""
    import torch

    from edgecompress.active.select import SelectConfig, score_pool
    from edgecompress.errors import EdgeCompressError

    members = [MobileNetStudent(1, 4, [8, 8], [2]), MobileNetStudent(1, 3, [8, 8], [2])]
    with pytest.raises(EdgeCompressError, match=r"^the ensemble's members predict different numbers of classes "
                                                r"\(\[4, 3\], in the order given\)"):
        score_pool(members, torch.zeros(2, 1, 12, 12), SelectConfig(strategy="bald"))
