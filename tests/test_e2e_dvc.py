"""End to end: `dvc repro` on a tiny subset in a temporary copy of the repository."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

TINY_HOST = """\
name: tiny-host
description: this machine, budgets loose enough for a one-epoch model
hardware: {arch: any}
build: {models: all, precisions: [int8, fp32], engines: [onnxruntime]}
runtime: {threads: 1, providers: [CPUExecutionProvider]}
device: local
bench: {warmup: 2, runs: 20, batch: 1, max_seconds: 10}
budgets:
  latency_ms: {p50: 1000.0}
  min_accuracy: 0.0
"""
# A small ARM device (a proxy here): 300 KB leaves the teacher and the ensemble out.
TINY_SMALL = """\
name: tiny-small
hardware: {arch: aarch64}
build: {models: all, precisions: [int8], engines: [litert]}
runtime: {threads: 1}
bench: {warmup: 2, runs: 20, batch: 1, max_seconds: 10}
budgets:
  latency_ms: {p50: 1000.0}
  size_mb: 0.3
  download_mb: 0.2
"""


def _write_idx(folder: Path, n_train: int = 300, n_test: int = 100) -> None:
    """Tiny learnable 10-class IDX dataset: each class lights one horizontal band."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * c:4 + 2 * c, :] = 250
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + y.tobytes())


def _dvc(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # dvc.yaml runs `python`: make it this interpreter (the venv's).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = shutil.which("dvc", path=env["PATH"]) or "dvc"
    return subprocess.run([dvc, *args], cwd=work, env=env, capture_output=True, text=True, timeout=900)


def _tiny_repo(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the repository (code, stages, targets + tiny-host) and one-epoch params on a tiny subset."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    for name in ("stages", "targets", "src", "user"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    # Not a mkdir: it hid that models/members/.gitkeep was never committed (#26); tests/test_e2e_clone.py clones.
    shutil.copytree(REPO / "models" / "members", work / "models" / "members", ignore=lambda d, names: [
        n for n in names if n != ".gitkeep"])
    (work / "targets" / "tiny-host.yaml").write_text(TINY_HOST)
    (work / "targets" / "tiny-small.yaml").write_text(TINY_SMALL)

    params = yaml.safe_load((work / "params.yaml").read_text())
    if FMNIST.exists():
        params["data"].update(limit=300)
    else:
        data = tmp_path / "idx"
        data.mkdir()
        _write_idx(data)
        params["data"].update(path=str(data))
    for stage in ("train_teacher", "distill"):
        params[stage]["train"]["epochs"] = 1
    params["distill"]["baseline"] = False
    params["prune"].update(steps=1, ladder=[0.5])
    params["export"]["formats"] = ["fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite"]
    params["prune"]["finetune"]["epochs"] = 1
    params["students"]["epochs"] = 1
    params["calibrate"]["samples"] = 32
    return work, params


@pytest.mark.slow
def test_dvc_repro_multihead_student(tmp_path: Path) -> None:
    """distill.source: ensemble + heads: the multi-head student goes through prune, export and check."""
    work, params = _tiny_repo(tmp_path)
    params["train_teacher"].update(ensemble_size=2, members=[1])
    params["distill"].update(source="ensemble", heads=2)
    params["export"]["formats"] = ["fp32.onnx", "int8.onnx", "fp32.tflite"]
    params["check"]["targets"] = ["tiny-host"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0
    run = _dvc(work, "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pruned = json.loads((work / "models/pruned.pt.json").read_text())["arch"]
    assert pruned["kind"] == "multihead" and pruned["heads"] == 2
    # prune.source: auto (the default) keeps fine-tuning each head on its member.
    assert json.loads((work / "metrics/prune.json").read_text())["finetune_teacher"] == "multi-head ensemble of 2, stored logits"
    export = json.loads((work / "metrics/export.json").read_text())
    assert export["int8.onnx"]["top1_agreement"] > 0.9
    for name in ("heads.onnx", "heads.tflite"):
        assert export[name]["max_abs_mean_prob_diff"] < 1e-4 and export[name]["max_abs_head_prob_diff"] < 1e-4
    unc = json.loads((work / "metrics/uncertainty.json").read_text())["models"]
    assert unc["student"]["mutual_information"] >= 0 and unc["pruned"]["mutual_information"] >= 0
    assert json.loads((work / "metrics/check/tiny-host.json").read_text())["status"] == "pass"


@pytest.mark.slow
def test_dvc_repro_tiny(tmp_path: Path) -> None:
    work, params = _tiny_repo(tmp_path)
    params["check"]["targets"] = ["tiny-host", "tiny-small"]
    params["train_teacher"].update(ensemble_size=3, members=[1, 2])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0

    first = _dvc(work, "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    export = work / "models" / "export"
    for name in ("fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite"):
        assert (export / name).stat().st_size > 0
        assert json.loads((export / f"{name}.json").read_text())["parent"] == "models/pruned.pt"
    host = json.loads((work / "metrics/check/tiny-host.json").read_text())
    assert host["status"] == "pass"
    assert host["latency_ms"]["p50"] > 0
    small = json.loads((work / "metrics/check/tiny-small.json").read_text())
    if os.uname().machine != "aarch64":
        assert small["status"].startswith("proxy")
    # Two targets, two choices: their budgets and engines decide, from one pool of every model and level.
    index = json.loads((work / "models/candidates/index.json").read_text())
    assert {c["model"] for c in index["candidates"]} == {"teacher", "ensemble", "student", "pruned-30", "pruned-50",
                                                         "student-c4", "pruned-30-c4", "pruned-50-c4", "teacher-ee",
                                                         "student-w175"}
    # The teacher with early exits is offered as cascades, which targets on percentiles never consider.
    assert len(json.loads((work / "metrics/early_exit.json").read_text())["teacher-ee"]["cascade"]["thresholds"]) == 2
    # Weight sharing: the clustered copies keep at most 16 values per layer, and ship as smaller packages.
    clustered = json.loads((work / "metrics/cluster.json").read_text())
    assert set(clustered) == {"student-c4", "pruned-30-c4", "pruned-50-c4"}
    assert all(0 < n <= 16 for r in clustered.values() for n in r["distinct_values"].values())
    by = {c["name"]: c for c in index["candidates"]}
    assert by["student-c4/fp32.onnx"]["package_bytes"] < 0.5 * by["student/fp32.onnx"]["package_bytes"]
    built = {t: json.loads((work / f"models/targets/{t}/build.json").read_text()) for t in ("tiny-host", "tiny-small")}
    assert built["tiny-host"]["chosen"]["engine"] == "onnxruntime" and built["tiny-small"]["chosen"]["engine"] == "litert"
    assert built["tiny-small"]["chosen"]["size_bytes"] <= 0.3 * 2**20
    assert built["tiny-small"]["chosen"]["download_bytes"] <= 0.2 * 2**20
    file = built["tiny-small"]["chosen"]["file"]
    shipped = (work / f"models/targets/tiny-small/{file}.ecpk").stat().st_size
    assert {r["name"]: r for r in small["budgets"]}["download"]["measured"] == shipped / 2**20
    assert host["artifact"]["candidate"] == built["tiny-host"]["chosen"]["name"]
    why = {c["name"]: c["why"] for c in built["tiny-small"]["candidates"]}
    assert any(w.startswith("size ") for w in why["teacher/int8.tflite"])
    assert by["teacher-ee/fp32.tflite"]["segments"] and any("mean-latency" in w for w in why["teacher-ee/fp32.tflite"])
    assert "Why nothing more accurate ships" in (work / "reports/build/tiny-small.md").read_text() or \
        built["tiny-small"]["chosen"]["val_accuracy"] >= max(c["accuracy"] for c in index["candidates"])
    assert (work / "reports/check/tiny-host.md").read_text().strip()
    rows = [r for r in json.loads((work / "reports/reliability_artifacts.json").read_text())
            if r["artifact"] == "int8.tflite"]
    assert 0 < sum(r["count"] for r in rows) <= (300 if FMNIST.exists() else 100)  # tiny bins are left out
    points = json.loads((work / "reports/latency_accuracy.json").read_text())
    assert {p["artifact"] for p in points} >= {"fp32.onnx", "int8.onnx", "fp32.tflite", "int8.tflite"}
    pruned = json.loads((work / "metrics/prune.json").read_text())
    assert pruned["after"]["params"] < pruned["before"]["params"]
    assert pruned["finetune_teacher"] == "teacher, stored logits"  # prune.source auto, single-head student; distill.views replayed
    # The deep ensemble: member stages, and every PyTorch model's uncertainty with MI for the ensemble.
    members = params["train_teacher"]["members"]
    unc = json.loads((work / "metrics/uncertainty.json").read_text())["models"]
    assert set(unc) == {"teacher", "ensemble", "student", "pruned", *(f"member-{i}" for i in members)}
    assert unc["ensemble"]["mutual_information"] >= 0 and "mutual_information" not in unc["teacher"]
    assert unc["ensemble"]["params"] == (1 + len(members)) * unc["teacher"]["params"]
    assert any(r["model"] == "ensemble" for r in json.loads((work / "reports/reliability_models.json").read_text()))
    assert "## Models" in (work / "reports/summary.md").read_text()

    # Nothing changed: nothing runs.
    again = _dvc(work, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

    # Change one target's budget: the (cheap) validation, that target's build and check and the report
    # re-run, nothing else, and the build re-chooses from cached measurements (no device run).
    text = (work / "targets/tiny-host.yaml").read_text()
    (work / "targets/tiny-host.yaml").write_text(text.replace("p50: 1000.0", "p50: 999.0"))
    moved = _dvc(work, "repro")
    assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
    ran = [line for line in moved.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'validate':", "Running stage 'build@tiny-host':", "Running stage 'check@tiny-host':",
                   "Running stage 'report':"], moved.stdout
    assert "(0 measured, " in moved.stderr + moved.stdout, moved.stderr[-2000:]
    # A budget nothing meets, on matching hardware: the build fails and names the nearest candidates.
    (work / "targets/tiny-host.yaml").write_text(text.replace("p50: 1000.0", "p50: 0.000001"))
    tight = _dvc(work, "repro")
    assert tight.returncode != 0
    assert "target tiny-host: no candidate meets every budget" in tight.stderr + tight.stdout
    assert "latency p50" in (work / "reports/build/tiny-host.md").read_text()

    shown = _dvc(work, "metrics", "show")
    assert shown.returncode == 0 and "metrics/export.json" in shown.stdout


@pytest.mark.slow
def test_labelled_images_make_dvc_repro_retrain(tmp_path: Path) -> None:
    """select -> a person labels -> add-labels -> plain `dvc repro` retrains on the new images."""
    from PIL import Image

    work, params = _tiny_repo(tmp_path)
    ds, pool = tmp_path / "shapes", tmp_path / "unlabeled"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("bar", "dot")):
            (ds / split / name).mkdir(parents=True)
            for i in range(n):
                x = rng.integers(0, 40, (12, 12)).astype(np.uint8)
                x[2 + 6 * c:4 + 6 * c] = 250
                Image.fromarray(x).save(ds / split / name / f"{i}.png")
    pool.mkdir()
    Image.fromarray(np.full((12, 12), 250, np.uint8)).save(pool / "new.png")
    params["data"].update(format="imagefolder", path=str(ds), limit=None)
    params["train_teacher"].update(ensemble_size=1, members=[])
    params["distill"]["source"] = "teacher"
    params["check"]["targets"] = ["tiny-host"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0
    first = _dvc(work, "repro", "train_teacher")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "train_teacher" not in _dvc(work, "status", "train_teacher").stdout

    (work / "to_label.csv").write_text("file,rank,score,guess,confidence,label\nnew.png,1,0.9,bar,0.5,dot\n")
    added = subprocess.run([sys.executable, "-m", "edgecompress.cli", "add-labels", "--csv", "to_label.csv",
                            "--pool", str(pool), "--dataset", str(ds)], cwd=work, capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    assert f"modified:           {ds}" in _dvc(work, "status", "train_teacher").stdout
    again = _dvc(work, "repro", "train_teacher")
    assert again.returncode == 0 and "Running stage 'train_teacher'" in again.stdout, again.stderr[-3000:]
    sizes = json.loads((work / "models/teacher.pt.json").read_text())["data"]["sizes"]
    assert sizes["train"] + sizes["val"] == 2 * 12 + 1


@pytest.mark.slow
def test_a_rerun_that_changes_nothing_leaves_dvc_status_clean(tmp_path: Path) -> None:
    """#26 item 13: checkpoints are byte-reproducible, so forcing the teacher to train again writes the same
    bytes, dvc.lock keeps its hashes and nothing after the teacher (here: its validate-gated members) is stale."""
    work, params = _tiny_repo(tmp_path)
    params["train_teacher"].update(ensemble_size=2, members=[1])
    params["check"]["targets"] = ["tiny-host"]
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0
    first = _dvc(work, "repro", "train_member@1")  # the teacher, then a member that depends on its checkpoint
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    def checkpoint_md5() -> str:
        outs = yaml.safe_load((work / "dvc.lock").read_text())["stages"]["train_teacher"]["outs"]
        return next(o["md5"] for o in outs if o["path"] == "models/teacher.pt")

    before = checkpoint_md5()
    again = _dvc(work, "repro", "--force", "--single-item", "train_teacher")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert checkpoint_md5() == before  # the same checkpoint bytes (its metrics file holds epoch times: they differ)
    status = _dvc(work, "status", "train_member@1")
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
