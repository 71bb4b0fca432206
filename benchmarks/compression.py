"""What does each compression step buy? Teacher vs student vs pruned students vs int8 (evidence, not a test)

In ONE run, from the pipeline's checkpoints (teacher.pt, student.pt) and the data described by
params.yaml's data section:
  - teacher and student as they are;
  - the student structurally pruned at each --ratios value (from the student, one step, with the
    params' prune criterion/round_to/protect) and fine-tuned with KD for --epochs epochs;
  - int8 variants of the student and of every pruned student: int8 QDQ ONNX (onnxruntime static
    quantization) and full-integer int8 TFLite, calibrated on the params' calibrate section.
Every artifact (fp32/int8 x ONNX/TFLite) gets: parameters, MACs, file size, test accuracy and ECE
through its own runtime, batch-1 p50 latency at 1 thread and at all cores (runner library
functions, this machine, same run), and ratios to the teacher's artifact of the same format.

Writes a markdown table to stdout and OUT/compression.md, the latency-vs-accuracy points to
OUT/compression_pareto.json (for `dvc plots`), and OUT/compression_pareto.png when matplotlib exists.

Usage: python benchmarks/compression.py [--models models] [--params params.yaml] [--epochs 2]
           [--ratios 0.3,0.5,0.7] [--limit N] [--runs 200] [--out benchmarks/results]
Smoke: python benchmarks/compression.py --limit 600 --epochs 1 --ratios 0.5 --runs 50
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.export import export_onnx, export_onnx_int8, export_tflite, io_details, verify
from edgecompress.models import count_macs, count_params
from edgecompress.config import from_dict, section
from edgecompress.fileio import write_json
from edgecompress.log import get_logger
from edgecompress.compression.prune import PruneConfig, prune_and_finetune
from edgecompress.compression.calibrate import CalibrationConfig, select_calibration
from edgecompress.deploy.runner import benchmark, fingerprint, load_session

FORMATS = (("fp32", "onnx"), ("fp32", "tflite"), ("int8", "onnx"), ("int8", "tflite"))


def log(msg: str) -> None:
    get_logger("compression").info(msg)


def prune_variant(student_ckpt: Path, teacher: torch.nn.Module, ds: Any, params: dict[str, Any],
                  ratio: float, epochs: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student pruned by ``ratio`` in one step with the params' criterion, then KD fine-tuned."""
    sec = section(params, "prune")
    cfg = from_dict(PruneConfig, {**sec, "finetune": {**(sec.get("finetune") or {}), "epochs": epochs},
                                  "ratio": ratio, "steps": 1, "latency_runs": 0}, "params.yaml:prune")
    student, _ = load_checkpoint(student_ckpt)
    model, report = prune_and_finetune(student, teacher, ds, cfg)  # fine-tuned from the teacher
    return model.eval(), report


def export_variants(model: torch.nn.Module, shape: tuple[int, ...], d: Path, calib: np.ndarray | None,
                    cfg: CalibrationConfig, val: tuple[np.ndarray, np.ndarray] | None) -> dict[tuple[str, str], Path]:
    """fp32 ONNX + TFLite, and (when ``calib`` is given) int8 ONNX + TFLite, into ``d``.

    int8 ONNX is made as the export stage makes it: accuracy-aware on ``val`` where
    ``export_onnx_int8`` takes validation data, plain static QDQ otherwise.
    """
    d.mkdir(parents=True, exist_ok=True)
    out = {("fp32", "onnx"): d / "fp32.onnx", ("fp32", "tflite"): d / "fp32.tflite"}
    export_onnx(model, shape, out["fp32", "onnx"])
    export_tflite(model, shape, out["fp32", "tflite"])
    if calib is not None:
        out["int8", "onnx"], out["int8", "tflite"] = d / "int8.onnx", d / "int8.tflite"
        kw = {}
        if val is not None and len(val[0]):
            kw = {"x_val": val[0], "y_val": val[1]}
        export_onnx_int8(out["fp32", "onnx"], out["int8", "onnx"], calib, cfg, **kw)
        export_tflite(model, shape, out["int8", "tflite"], calib, cfg)
    return out


def measure(path: Path, ds: Any, x_test: np.ndarray, ref: np.ndarray, runs: int, cores: int) -> dict[str, Any]:
    """Accuracy/ECE through the artifact's runtime and batch-1 p50 at 1 thread and at ``cores`` threads."""
    sidecar = {**io_details(path), "mean": list(ds.mean), "std": list(ds.std)}
    m = verify(path, sidecar, x_test, ds.test.y, ref)
    lat = {}
    for threads in dict.fromkeys((1, cores)):
        session = load_session(path, None, threads)
        res = benchmark(session, sidecar, ds.test.x[:1], None, warmup=min(20, runs), runs=runs, max_seconds=30.0)
        lat[threads] = res["latency_ms"]["p50"]
    return {"size_bytes": m["size_bytes"], "accuracy": m["accuracy"], "ece": m["ece"],
            "top1_agreement": m["top1_agreement"], "p50_1t_ms": lat[1], "p50_all_ms": lat[cores]}


def pareto(points: list[dict[str, Any]], x: str, y: str) -> None:
    """Mark points not dominated (lower-or-equal latency and higher-or-equal accuracy, one strictly)."""
    for p in points:
        p["pareto"] = not any((q[x] <= p[x] and q[y] >= p[y]) and (q[x] < p[x] or q[y] > p[y]) for q in points)


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"


def table(rows: list[dict[str, Any]], cores: int) -> str:
    head = ["model", "artifact", "params", "MACs", "size", "test acc", "ECE",
            "ORT/LiteRT p50 1 thread (ms)", f"p50 {cores} threads (ms)",
            "params vs teacher", "size vs teacher", "speedup vs teacher (1 thread)", "acc Δ vs teacher (pts)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], f"{r['precision']} {r['format']}", f"{r['params']:,}", f"{r['macs'] / 1e6:.2f} M",
            fmt_bytes(r["size_bytes"]), f"{r['accuracy']:.4f}", f"{r['ece']:.4f}",
            f"{r['p50_1t_ms']:.3f}", f"{r['p50_all_ms']:.3f}",
            f"{r['params_vs_teacher']:.3f}x", f"{r['size_vs_teacher']:.3f}x", f"{r['speedup_vs_teacher']:.2f}x",
            f"{100 * r['acc_delta_vs_teacher']:+.2f}"]) + " |")
    return "\n".join(lines)


def plot_png(points: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fmt, marker in (("onnx", "o"), ("tflite", "s")):
        pts = [p for p in points if p["format"] == fmt]
        ax.scatter([p["p50_ms"] for p in pts], [p["accuracy"] for p in pts], marker=marker, label=fmt)
        for p in pts:
            ax.annotate(p["name"], (p["p50_ms"], p["accuracy"]), fontsize=7)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["p50_ms"])
    ax.plot([p["p50_ms"] for p in front], [p["accuracy"] for p in front], "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency, 1 thread (ms, log)")
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--models", default="models", help="folder with teacher.pt and student.pt")
    harness.add_params(p)
    p.add_argument("--epochs", type=int, default=2, help="KD fine-tune epochs after pruning")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="comma-separated structured pruning ratios")
    harness.add_limit(p, help="data subset per split (quick smoke runs)")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per artifact and thread count")
    harness.add_out(p, "benchmarks/results")
    args, bench = harness.parse(p, argv)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    t_start = time.time()

    params = harness.load_params(args.params)
    ds = harness.load_data(params, args.limit)
    shape = tuple(ds.input_shape)
    x_test = ds.normalize(ds.test.x)
    cal_cfg = from_dict(CalibrationConfig, section(params, "calibrate"), "params.yaml:calibrate")
    models_dir = Path(args.models)
    teacher, _ = load_checkpoint(models_dir / "teacher.pt")
    student, _ = load_checkpoint(models_dir / "student.pt")
    x_train = ds.normalize(ds.train.x)
    if getattr(cal_cfg, "selection", None) == "kcenter":  # diverse images in the student's feature space
        from edgecompress.compression.calibrate import embeddings

        idx = select_calibration(ds.train.y, cal_cfg, embeddings(student, x_train))
    else:
        idx = select_calibration(ds.train.y, cal_cfg)
    calib, val = x_train[idx], (ds.normalize(ds.val.x), ds.val.y)
    del x_train

    variants: list[tuple[str, torch.nn.Module, bool, dict[str, Any] | None]] = [
        ("teacher", teacher, False, None), ("student", student, True, None)]
    for r in ratios:
        log(f"pruning the student by {r:.0%} and fine-tuning {args.epochs} epoch(s) with KD ...")
        model, rep = prune_variant(models_dir / "student.pt", teacher, ds, params, r, args.epochs)
        variants.append((f"student pruned {r:.0%}", model, True, rep))

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="compression-") as tmp:
        for i, (name, model, int8, _rep) in enumerate(variants):
            log(f"{name}: exporting ...")
            with torch.no_grad():
                ref = np.concatenate([model(torch.from_numpy(x_test[j:j + 1000])).numpy()
                                      for j in range(0, len(x_test), 1000)])
            paths = export_variants(model, shape, Path(tmp) / str(i), calib if int8 else None, cal_cfg, val)
            params_n, macs = count_params(model), count_macs(model, shape)
            for key in FORMATS:
                if key not in paths:
                    continue
                log(f"{name}: measuring {key[0]} {key[1]} ...")
                rows.append({"model": name, "precision": key[0], "format": key[1], "params": params_n,
                             "macs": macs, **measure(paths[key], ds, x_test, ref, args.runs, cores)})

    base = {(r["format"]): r for r in rows if r["model"] == "teacher"}
    for r in rows:
        t = base[r["format"]]
        r["params_vs_teacher"] = r["params"] / t["params"]
        r["size_vs_teacher"] = r["size_bytes"] / t["size_bytes"]
        r["speedup_vs_teacher"] = t["p50_1t_ms"] / r["p50_1t_ms"]
        r["acc_delta_vs_teacher"] = r["accuracy"] - t["accuracy"]
    points = [{"name": f"{r['model']} {r['precision']} {r['format']}", "format": r["format"],
               "p50_ms": r["p50_1t_ms"], "accuracy": r["accuracy"]} for r in rows]
    pareto(points, "p50_ms", "accuracy")

    fp = fingerprint()
    md = "\n".join([
        "# Compression trade-offs: teacher, student, pruned students, int8",
        "",
        f"Machine: {fp['cpu_model']} ({fp['cores']} cores), {fp['os']}. Data: {ds.meta()['sizes']} "
        f"(limit {args.limit}). Pruned students: one structured step from the student "
        f"(criterion {section(params, 'prune').get('criterion', section(params, 'prune').get('method'))}), "
        f"{args.epochs} KD fine-tune epoch(s). Latency: batch 1, p50 of {args.runs} runs, fp32/int8 ONNX on "
        f"onnxruntime and TFLite on LiteRT (XNNPACK), at 1 thread and at all {cores} cores, measured in this run.",
        "Accuracy and ECE are on the test split through each artifact's own runtime. Ratios compare "
        "with the teacher's fp32 artifact of the same format.",
        "",
        table(rows, cores),
        "",
        "Pareto-optimal (latency at 1 thread vs accuracy): "
        + ", ".join(p["name"] for p in sorted(points, key=lambda p: p["p50_ms"]) if p["pareto"]) + ".",
        "",
        f"Total time of this run: {time.time() - t_start:.0f} s.",
    ])
    print(md)
    out = Path(args.out)
    # The Pareto points stay a plain list: `dvc plots` reads them; compression.json carries the provenance.
    write_json(out / "compression_pareto.json", points)
    harness.write_results(out / "compression.json", {"rows": rows, "fingerprint": fp, "ratios": ratios,
                                                     "epochs": args.epochs, "limit": args.limit,
                                                     "prune_reports": {v[0]: v[3] for v in variants if v[3]}},
                          bench, markdown=md + "\n", md_path=out / "compression.md", default=str)
    log(f"wrote {out / 'compression.md'}, {out / 'compression_pareto.json'}"
        + (f", {out / 'compression_pareto.png'}" if plot_png(points, out / "compression_pareto.png")
           else " (matplotlib missing: no PNG)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
