"""Bring your own model, measured: a user-style network trained by this script, brought in as `module`
(code + weights), then compressed two ways: pruned itself (self-distillation from its unpruned self) and
distilled into edgecompress's MobileNet student. Accuracies, params, MACs and int8 TFLite sizes side by side.

    python benchmarks/byo_model.py [--limit N] [--epochs 6] [--out benchmarks/results/byo_model.md]

The user's architecture is benchmarks/user_model.py (inverted residuals, squeeze-excite, a
concatenation); its weights go to a temporary state dict and come back through
edgecompress.usermodel exactly as a user's would. Everything runs on the real Fashion-MNIST
(`--limit` for a smaller run, which the report says).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness
from harness import ROOT

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import run_artifact
from edgecompress.compression.prune import PruneConfig, prune_and_finetune
from edgecompress.compression.tflite import export_tflite
from edgecompress.deploy.runner import fingerprint
from edgecompress.metrics import classification_metrics, softmax
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.loop import TrainConfig, crop_fill, fit, model_report, tensors
from edgecompress.usermodel import UserModelSpec, build_module, load_user_model

FACTORY = "benchmarks/user_model.py:build_classifier"


def int8_tflite(model: torch.nn.Module, ds: Any, d: Path, name: str) -> dict[str, Any]:
    """Full-integer TFLite of ``model``: size, and accuracy on the test set with LiteRT."""
    from edgecompress.compression.export import io_details

    calib = ds.normalize(ds.train.x[:256])
    path = d / f"{name}.int8.tflite"
    export_tflite(model.eval(), tuple(ds.input_shape), path, calib, CalibrationConfig())
    sidecar = io_details(path)
    logits = run_artifact(path, sidecar, ds.normalize(ds.test.x))
    m = classification_metrics(softmax(logits.astype(np.float64)), ds.test.y)
    return {"size_kib": path.stat().st_size / 1024, "accuracy": m["accuracy"]}


def row(name: str, model: torch.nn.Module, ds: Any, t: Any, d: Path, seconds: float) -> dict[str, Any]:
    rep = model_report(model.eval(), ds, t)
    return {"model": name, "test_accuracy": rep["test"]["accuracy"], "ece": rep["test"]["ece"],
            "params": rep["params"], "macs": rep["macs"], "int8_tflite": int8_tflite(model, ds, d, name),
            "seconds": round(seconds)}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    harness.add_limit(p)
    p.add_argument("--epochs", type=int, default=6, help="epochs for the user's training and the distillation")
    harness.add_out(p, ROOT / "benchmarks/results/byo_model.md")
    a, bench = harness.parse(p, argv)
    t0 = time.time()
    ds = harness.load_data(limit=a.limit)  # the library's default data (Fashion-MNIST), not params.yaml's
    t = tensors(ds)
    train = TrainConfig(epochs=a.epochs, batch_size=128, lr=0.1, weight_decay=5e-4, crop_pad=2, flip=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="byo-") as tmp:
        d = Path(tmp)
        # 1. The user trains their network, elsewhere, and keeps a state dict.
        torch.manual_seed(0)
        s = time.time()
        net = build_module(str(ROOT / FACTORY), ds.num_classes, ds.channels, ds.image_size)
        fit(net, *t["train"], train, fill=crop_fill(ds), val=t["val"], name="user model")
        torch.save(net.state_dict(), d / "user_weights.pt")
        # 2. It comes back as a user's model: code + weights, checked on a batch.
        user = load_user_model(UserModelSpec("module", str(ROOT / FACTORY), str(d / "user_weights.pt")),
                               ds.input_shape, ds.num_classes)
        rows.append(row("user model (as brought)", user, ds, t, d, time.time() - s))
        # 3a. Pruned itself: half its channels, each step fine-tuned from its unpruned self.
        s = time.time()
        cfg = PruneConfig(method="channel", ratio=0.5, steps=2, round_to=4, latency_runs=0,
                          finetune=TrainConfig(epochs=2, batch_size=128, lr=0.02, weight_decay=1e-4, crop_pad=2,
                                               flip=True, seed=1))
        pruned, _ = prune_and_finetune(copy.deepcopy(user), user, ds, cfg)
        rows.append(row("user model, 50% channels pruned (self-distilled)", pruned, ds, t, d, time.time() - s))
        # 3b. Distilled into edgecompress's MobileNet student (params.yaml's architecture).
        s = time.time()
        kd = DistillConfig(channels=(16, 32, 32, 64, 64, 128, 128), strides=(2, 1, 2, 1, 2, 1), width=1.25,
                           baseline=False, train=TrainConfig(epochs=a.epochs, batch_size=128, lr=0.1,
                                                             weight_decay=1e-4, crop_pad=2, flip=True))
        student, _, _ = distill(user, ds, kd)
        rows.append(row("edgecompress student, KD from the user model", student, ds, t, d, time.time() - s))
    fp = fingerprint()
    lines = ["# Bring your own model: prune it, or distill it into our student", "",
             f"{time.strftime('%Y-%m-%d')}, {fp['cpu_model']}, {fp['cores']} cores; Fashion-MNIST "
             f"{'limit ' + str(a.limit) if a.limit else 'full'} ({len(ds.train.y):,} train / {len(ds.test.y):,} test); "
             f"`python benchmarks/byo_model.py --epochs {a.epochs}`; {time.time() - t0:.0f} s in all.", "",
             "| model | test accuracy | ECE | params | MACs | int8 TFLite | its accuracy (LiteRT) | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {100 * r['test_accuracy']:.2f}% | {r['ece']:.4f} | {r['params']:,} | "
                     f"{r['macs']:,} | {r['int8_tflite']['size_kib']:.1f} KiB | "
                     f"{100 * r['int8_tflite']['accuracy']:.2f}% | {r['seconds']} |")
    harness.write_results(Path(a.out).with_suffix(".json"), {"rows": rows, "fingerprint": fp}, bench,
                          markdown="\n".join(lines) + "\n", md_path=a.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
