"""The GPU paths, run for real on a CUDA machine (evidence, not a test; CI has no GPU).

On the real Fashion-MNIST (--data, IDX files), with the pipeline's default recipes and ``device: auto``
(CUDA when PyTorch sees a GPU, bf16/fp16 autocast there):
  1. the teacher (ResNet, params.yaml's train_teacher) trained for --teacher-epochs, seconds per epoch;
  2. the student (MobileNet, distill section) distilled online from it for --student-epochs;
  3. the student clustered to 4 bits and KD fine-tuned on the GPU (parametrized, tied weights);
  4. the teacher exported fp32/fp16 ONNX and checked with the gpu-server profile through the pipeline's
     own check (runner subprocess, the profile's providers): which provider really ran, latency, accuracy.
Writes OUT/gpu_check.json.

    python benchmarks/gpu_check.py --data .gpu/fashion-mnist --out $OUT
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import harness
from harness import ROOT

from edgecompress.compression.cluster import ClusterConfig, compress_weights
from edgecompress.data import save_npz_split
from edgecompress.models import MobileNetStudent, ResNetTeacher, student_channels
from edgecompress.training.loop import TrainConfig, crop_fill, evaluate, fit, tensors
from edgecompress.training.losses import kd_loss


def timed_fit(name: str, model: torch.nn.Module, t: Any, cfg: TrainConfig, fill: torch.Tensor,
              **kw: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    history = fit(model, *t["train"], cfg, fill=fill, name=name, **kw)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, *t["test"])["accuracy"]
    print(f"[gpu] {name}: {cfg.epochs} epochs in {seconds:.1f} s, test {acc:.4f}", flush=True)
    return {"epochs": cfg.epochs, "seconds": seconds, "epoch_seconds": [h["seconds"] for h in history],
            "test_accuracy": acc}


def gpu_server_check(teacher: torch.nn.Module, ds: Any, out: Path) -> dict[str, Any]:
    """fp32/fp16 ONNX of ``teacher`` through the gpu-server profile's check, pinned to each precision."""
    from edgecompress.compression.export import io_details
    from edgecompress.compression.onnx import export_onnx, export_onnx_fp16
    from edgecompress.deploy.check import check_target
    from edgecompress.deploy.targets import load_target

    d = out / "gpu_server"
    d.mkdir(parents=True, exist_ok=True)
    export_onnx(teacher.eval(), tuple(ds.input_shape), d / "fp32.onnx")
    export_onnx_fp16(d / "fp32.onnx", d / "fp16.onnx")
    save_npz_split(d / "testset.npz", ds.test, ds.class_names)
    profile = load_target(ROOT / "targets" / "gpu-server.yaml")
    results = {}
    for precision in ("fp32", "fp16"):
        path = d / f"{precision}.onnx"
        sidecar = {"format": "onnx", "precision": precision, **io_details(path), "mean": ds.mean, "std": ds.std,
                   "class_names": ds.class_names, "num_classes": len(ds.class_names)}
        (d / f"{precision}.onnx.json").write_text(json.dumps(sidecar))
        r = check_target(profile.pinned("onnx", precision), d, d / "testset.npz").to_json()
        results[precision] = {k: r.get(k) for k in ("status", "hardware_match", "hardware_reasons", "latency_ms",
                                                     "accuracy", "ece", "warnings")}
        results[precision]["budgets"] = [{k: b[k] for k in ("name", "budget", "measured", "ok")} for b in r["budgets"]]
        print(f"[gpu] gpu-server {precision}.onnx: {r['status']}, p50 {(r.get('latency_ms') or {}).get('p50')} ms, "
              f"accuracy {r.get('accuracy')}, {r.get('hardware_reasons')}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--data", required=True, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--student-epochs", type=int, default=12)
    harness.add_limit(ap, help="a smaller run (smoke test)")
    harness.add_params(ap, ROOT / "params.yaml")
    harness.add_out(ap, "benchmarks/results")
    args, bench = harness.parse(ap, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import onnxruntime as ort

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    print(f"[gpu] {env}", flush=True)
    params = harness.load_params(args.params)
    ds = harness.load_data(limit=args.limit, path=args.data)  # the IDX files given, not params.yaml's data
    t, fill = tensors(ds), crop_fill(ds)
    tp, dp = params["train_teacher"], params["distill"]
    report: dict[str, Any] = {"env": env}
    teacher = ResNetTeacher(ds.input_shape[0], len(ds.class_names), tp["widths"], tp["blocks"], tp["stem"])
    tcfg = TrainConfig(**{**tp["train"], "epochs": args.teacher_epochs, "precision": "auto"})
    report["teacher"] = timed_fit("teacher", teacher, t, tcfg, fill)
    student = MobileNetStudent(ds.input_shape[0], len(ds.class_names), student_channels(dp["channels"], dp["width"]),
                               dp["strides"])
    scfg = TrainConfig(**{**dp["train"], "epochs": args.student_epochs})
    report["student"] = timed_fit("student (online KD)", student, t, scfg, fill,
                                  loss_fn=kd_loss(dp["temperature"], dp["alpha"]), teacher=teacher)
    report["cluster"] = {}
    for init in ("linear", "density"):
        t0 = time.perf_counter()
        _, rep = compress_weights(student, teacher, t["train"], t["test"], ClusterConfig(init=init), fill=fill)
        report["cluster"][init] = {k: rep[k] for k in ("accuracy_float", "accuracy_before_finetune", "accuracy")} | {
            "max_distinct_values": max(rep["distinct_values"].values()), "seconds": time.perf_counter() - t0}
    report["gpu_server"] = gpu_server_check(teacher, ds, out)
    harness.write_results(out / "gpu_check.json", report, bench, default=str)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
