"""Bring your own model through the whole pipeline: `dvc repro` with a user's trained network as the teacher.

    python benchmarks/byo_pipeline.py [--epochs 6] [--limit N] [--work DIR] [--out benchmarks/results/byo_pipeline.md]

What a user does, scripted: train a network of their own (benchmarks/user_model.py: inverted residuals,
squeeze-excite, a concatenation; width 32), keep its code and a state dict in user/, and set

    train_teacher: {source: module, model: "user/user_model.py:build_classifier", weights: user/teacher.pt,
                    ensemble_size: 1, members: []}
    distill: {source: teacher}          # our MobileNet student learns from it
    prune: {source_model: teacher}      # and the user's network is pruned itself (30/50/70%), self-distilled

then `dvc repro` in a copy of this repository (--work; nothing here changes). Every target's build then
chooses among the user's model, its pruned levels and our student, measured as always. The report
(--out) lists the models and what each target ships, from that run's metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import harness
from harness import ROOT

from edgecompress.compression.onnx import export_onnx
from edgecompress.deploy.runner import fingerprint
from edgecompress.training.loop import TrainConfig, crop_fill, fit, tensors
from edgecompress.usermodel import build_module

FACTORY = "user/user_model.py:build_classifier"


def _dvc() -> str:
    return shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") or "dvc"


def copy_repo(work: Path) -> None:
    """The pipeline's files (as in git) in ``work``, a fresh DVC project without git."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, work / name)
    for name in ("stages", "targets", "src", "user"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "models" / "members").mkdir(parents=True)
    subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=work, check=True)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")  # the plot templates dvc.yaml names


def train_user_model(work: Path, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The user's side: train their network, keep code + state dict (and a .pt2 and .onnx of it) in user/."""
    user = work / "user"
    shutil.copy(ROOT / "benchmarks" / "user_model.py", user / "user_model.py")
    ds = harness.load_data(params, where=str(work / "params.yaml"))
    t = tensors(ds)
    torch.manual_seed(0)
    net = build_module(str(user / "user_model.py") + ":build_classifier", ds.num_classes, ds.channels, ds.image_size)
    s = time.time()
    fit(net, *t["train"], TrainConfig(epochs=epochs, batch_size=128, lr=0.1, weight_decay=5e-4, crop_pad=2, flip=True),
        fill=crop_fill(ds), val=t["val"], name="user model")
    net.eval()
    torch.save(net.state_dict(), user / "teacher.pt")
    x = ds.to_tensor(ds.test.x[:4])
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(user / "teacher.pt2"))
    export_onnx(net, tuple(ds.input_shape), user / "teacher.onnx")
    return {"epochs": epochs, "seconds": round(time.time() - s)}


def run_pipeline(work: Path, log: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(work / "src"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    dvc = _dvc()
    s = time.time()
    with log.open("w") as f:
        run = subprocess.run([dvc, "repro"], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    if run.returncode:
        raise SystemExit(f"dvc repro failed (exit {run.returncode}); see {log}")
    return time.time() - s


def report(work: Path, params: dict[str, Any], trained: dict[str, Any], seconds: float, out: Path,
           bench: harness.Run) -> None:
    def load(name: str) -> Any:
        return json.loads((work / name).read_text())

    teacher, distill, prune = load("metrics/teacher.json"), load("metrics/distill.json"), load("metrics/prune.json")
    unc = load("metrics/uncertainty.json")["models"]
    index = load("models/candidates/index.json")
    models = [("the user's model, as brought", teacher["test"]["accuracy"], unc["teacher"]["ece"], teacher["params"],
               teacher["macs"], "teacher"),
              ("our student, distilled from it", distill["test"]["accuracy"], unc["student"]["ece"], distill["params"],
               distill["macs"], "student")]
    for level in [{"name": "pruned-30", **prune["after"]}, *prune["ladder"]]:
        models.append((f"the user's model, {level['name'].split('-')[1]}% of its channels pruned (self-distilled)",
                       level["test"]["accuracy"], unc["pruned"]["ece"] if level["name"] == "pruned-30" else None,
                       level["params"], level["macs"], level["name"]))
    int8 = {c["model"]: c for c in index["candidates"] if c["name"].endswith("/int8.tflite")}
    fp = fingerprint()
    lines = ["# Bring your own model through `dvc repro`", "",
             f"{time.strftime('%Y-%m-%d')}, {fp['cpu_model']}, {fp['cores']} cores; Fashion-MNIST "
             f"{'limit ' + str(params['data']['limit']) if params['data']['limit'] else 'full'}; the user's network "
             f"trained {trained['epochs']} epochs ({trained['seconds']} s) by `python benchmarks/byo_pipeline.py`, "
             f"then `dvc repro` {seconds / 60:.1f} min.", "",
             "| model | test accuracy (PyTorch) | ECE | params | MACs | int8 TFLite | its val accuracy (LiteRT) |",
             "|---|---|---|---|---|---|---|"]
    for name, acc, ece, n, macs, key in models:
        c = int8.get(key)
        lines.append(f"| {name} | {100 * acc:.2f}% | {'' if ece is None else f'{ece:.4f}'} | {n:,} | {macs:,} | "
                     f"{c['size_bytes'] / 1024:.1f} KiB | {100 * c['accuracy']:.2f}% |" if c else
                     f"| {name} | {100 * acc:.2f}% | | {n:,} | {macs:,} | | |")
    lines += ["", "| target | ships | test accuracy (its runtime) | check |", "|---|---|---|---|"]
    for target in params["check"]["targets"]:
        check = load(f"metrics/check/{target}.json")
        acc = check.get("accuracy")
        lines.append(f"| {target} | {check['artifact'].get('candidate', '')} | "
                     f"{'' if acc is None else f'{100 * acc:.2f}%'} ({check.get('accuracy_samples', 0):,} images) | "
                     f"{check['status']} |")
    harness.write_results(out.with_suffix(".json"), {"models": models, "fingerprint": fp, "seconds": seconds,
                                                     "trained": trained}, bench,
                          markdown="\n".join(lines) + "\n", md_path=out)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--epochs", type=int, default=6, help="epochs the user's network trains (the user's side)")
    harness.add_limit(p, help="training images (a quick look; the report says so)")
    p.add_argument("--work", default="/tmp/edgecompress-byo", help="where the copy of the pipeline runs")
    harness.add_out(p, ROOT / "benchmarks/results/byo_pipeline.md")
    a, bench = harness.parse(p, argv)
    work = Path(a.work)
    copy_repo(work)
    params = harness.load_params(work / "params.yaml")
    params["data"]["limit"] = a.limit
    params["train_teacher"].update(source="module", model=FACTORY, weights="user/teacher.pt", ensemble_size=1,
                                   members=[])
    params["distill"].update(source="teacher")
    params["prune"].update(source_model="teacher")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    trained = train_user_model(work, params, a.epochs)
    print(f"[byo] the user's network trained in {trained['seconds']} s; dvc repro in {work} (log: {work}/repro.log)",
          flush=True)
    seconds = run_pipeline(work, work / "repro.log")
    report(work, params, trained, seconds, Path(a.out), bench)


if __name__ == "__main__":
    main()
