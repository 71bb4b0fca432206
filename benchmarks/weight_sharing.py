"""Deep Compression's last two steps, measured: weight clustering and the Huffman-coded package.

For the pipeline's student (models/student.pt), pruned student (models/pruned.pt) and the teacher itself
pruned by --teacher-prune of its channels here (self-distilled from its unpruned self, the stored logits),
in ONE run:
  - fp32 ONNX and static int8 ONNX (the pipeline's calibration set);
  - uniform 4-bit weights (symmetric, per output channel, straight-through KD fine-tune) and weights
    clustered to 4 bits (per-layer k-means, tied KD fine-tune), both from the same BN-folded network
    with the same fine-tune, exported as fp32 ONNX (and the clustered one as fp32 TFLite);
  - for every file: test accuracy through its own runtime (onnxruntime / LiteRT), its size, gzip -9,
    zstd -19 and the edgecompress package (edgecompress.deploy.pack), which is checked to unpack
    to the same file bit for bit.
The reference is the fp32 teacher's ONNX file (models/teacher.pt exported here) and its accuracy. Every
package is set against three others, each made the same way: the same network's unclustered fp32 file
packed (what clustering and Huffman coding buy), the teacher's file packed (package against package)
and the teacher's file itself.

    python benchmarks/weight_sharing.py [--epochs 2] [--bits 4] [--limit N] [--out benchmarks/results]
    python benchmarks/weight_sharing.py --from-json benchmarks/results/weight_sharing.json  # re-render only
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.cluster import ClusterConfig, compress_weights
from edgecompress.compression.export import io_details, load_calibration, run_artifact
from edgecompress.compression.onnx import export_onnx, export_onnx_int8
from edgecompress.compression.prune import PruneConfig, prune_and_finetune
from edgecompress.compression.tflite import export_tflite
from edgecompress.deploy import pack, package
from edgecompress.deploy.runner import fingerprint
from edgecompress.errors import EdgeCompressError
from edgecompress.training.loop import TrainConfig, crop_fill, tensors
from edgecompress.training.soft_targets import load_soft_targets


def measure(path: Path, ds: Any, x_test: np.ndarray) -> dict[str, Any]:
    """Accuracy through the file's own runtime and its sizes: raw, gzip, zstd, package (round-tripped)."""
    logits = run_artifact(path, io_details(path), x_test)
    data = path.read_bytes()
    sizes = pack.sizes(data, path.suffix)
    restored, _ = package.unpack(pack.pack_file(path))
    assert restored == data, f"{path}: the package did not restore the file bit for bit"
    return {"accuracy": float((logits.argmax(1) == ds.test.y).mean()), **sizes}


def pruned_teacher(teacher: torch.nn.Module, ds: Any, ratio: float, epochs: int, targets: Any) -> torch.nn.Module:
    """Deep Compression's first step on the big network: the teacher's channels pruned, self-distilled."""
    cfg = PruneConfig(ratio=ratio, steps=2, source="teacher", latency_runs=0, protect=("last",),
                      finetune=TrainConfig(epochs=epochs, lr=0.02, weight_decay=1e-4, seed=1))
    model, report = prune_and_finetune(copy.deepcopy(teacher), teacher, ds, cfg, targets=targets)
    print(f"[bench] teacher pruned {ratio:.0%}: {report['after']['params']} params, test "
          f"{report['after']['test']['accuracy']:.4f}", flush=True)
    return model


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--models", default="models")
    ap.add_argument("--epochs", type=int, default=2, help="KD fine-tune epochs after clustering / uniform quantization")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--teacher-prune", type=float, default=0.5, help="also prune the teacher's channels by this "
                    "fraction (two steps, each with a KD fine-tune of --epochs) and compress it like the students (0: skip)")
    ap.add_argument("--teacher-only", action="store_true", help="only the pruned teacher (beside the reference)")
    ap.add_argument("--name", default="weight_sharing", help="output file stem under --out")
    harness.add_limit(ap, help="subsample the data (a smaller run, said in the report)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--from-json", help="re-render a finished run's results (its .json) without measuring")
    harness.add_out(ap, "benchmarks/results")
    args, bench = harness.parse(ap, argv)
    out = Path(args.out)
    if args.from_json:
        report = rerender(Path(args.from_json))
        harness.write_results(out / f"{args.name}.json", report, bench, markdown=markdown(report),
                              md_path=out / f"{args.name}.md")
        print(markdown(report))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = harness.load_data(limit=args.limit)  # the library's default data (Fashion-MNIST), not params.yaml's
    t = tensors(ds)
    x_test = ds.normalize(ds.test.x)
    calib = load_calibration(Path(args.models) / "calibration.npz")
    teacher, _ = load_checkpoint(Path(args.models) / "teacher.pt")
    teacher.eval()
    # The distill stage's stored teacher logits: the fine-tunes replay them instead of running the teacher.
    targets = None if args.limit else load_soft_targets(Path(args.models) / "soft_targets.npz")
    shape = tuple(ds.input_shape)
    rows: list[dict[str, Any]] = []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        export_onnx(teacher, shape, d / "teacher.fp32.onnx")
        ref = {"model": "teacher", "artifact": "fp32.onnx", **measure(d / "teacher.fp32.onnx", ds, x_test)}
        rows.append(ref)
        print(f"[bench] teacher fp32.onnx {ref['accuracy']:.4f} {ref['file']} B", flush=True)
        subjects = [("student", lambda: load_checkpoint(Path(args.models) / "student.pt")[0]),
                    ("pruned student", lambda: load_checkpoint(Path(args.models) / "pruned.pt")[0])]
        subjects = subjects if not args.teacher_only else []
        if args.teacher_prune:
            subjects.append((f"teacher pruned {round(100 * args.teacher_prune)}%",
                             lambda: pruned_teacher(teacher, ds, args.teacher_prune, args.epochs, targets)))
        for name, make in subjects:
            model = make().eval()
            tag = name.replace(" ", "-")
            export_onnx(model, shape, d / f"{tag}.fp32.onnx")
            rows.append({"model": name, "artifact": "fp32.onnx", **measure(d / f"{tag}.fp32.onnx", ds, x_test)})
            export_onnx_int8(d / f"{tag}.fp32.onnx", d / f"{tag}.int8.onnx", calib, CalibrationConfig())
            rows.append({"model": name, "artifact": "int8.onnx", **measure(d / f"{tag}.int8.onnx", ds, x_test)})
            # lr 0.003: chosen on the validation split (0.003 vs 0.01, 1 vs 2 epochs; docs/results.md), for both methods.
            cfg = ClusterConfig(bits=args.bits, finetune=TrainConfig(epochs=args.epochs, lr=0.003, weight_decay=0.0,
                                                                     seed=2))
            for method in ("uniform", "cluster"):
                tuned, rep = compress_weights(model, teacher, t["train"], t["test"], cfg, method, fill=crop_fill(ds),
                                              targets=targets)
                label = f"{'int' if method == 'uniform' else 'cluster'}{args.bits}"
                path = d / f"{tag}.{label}.onnx"
                export_onnx(tuned, shape, path)
                extra = {k: rep[k] for k in ("accuracy_float", "accuracy_before_finetune", "accuracy")}
                extra["max_distinct_values"] = max(rep["distinct_values"].values())
                rows.append({"model": name, "artifact": f"{label} fp32.onnx", **measure(path, ds, x_test),
                             "pytorch": extra})
                if method == "cluster":
                    tfl = d / f"{tag}.{label}.tflite"
                    export_tflite(tuned, shape, tfl)
                    rows.append({"model": name, "artifact": f"{label} fp32.tflite", **measure(tfl, ds, x_test)})
                print(f"[bench] {name} {label}: {rows[-1]['accuracy']:.4f} ({time.time() - start:.0f} s)", flush=True)
    report = {"machine": fingerprint(), "data": {"limit": args.limit, "sizes": {"train": len(ds.train),
              "test": len(ds.test)}}, "epochs": args.epochs, "bits": args.bits, "rows": rows,
              "seconds": time.time() - start}
    report["package_ratios"] = package_ratios(rows)
    harness.write_results(out / f"{args.name}.json", report, bench, markdown=markdown(report),
                          md_path=out / f"{args.name}.md")
    print(markdown(report))


def _kib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f} KiB"


def package_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every non-reference row's package against the same network's fp32 package, the teacher's package
    and the teacher's file (each a ratio: how many times smaller this package is)."""
    ref = next((r for r in rows if r["model"] == "teacher" and r["artifact"] == "fp32.onnx"), None)
    if ref is None:
        raise EdgeCompressError("weight sharing results: no 'teacher' 'fp32.onnx' row, the reference every "
                                "ratio needs; re-run benchmarks/weight_sharing.py")
    own = {r["model"]: r["package"] for r in rows if r["artifact"] == "fp32.onnx"}
    return [{"model": r["model"], "artifact": r["artifact"], "package": r["package"],
             "own_fp32_package": own[r["model"]], "vs_own_fp32_package": own[r["model"]] / r["package"],
             "vs_teacher_package": ref["package"] / r["package"], "vs_teacher_file": ref["file"] / r["package"]}
            for r in rows if r is not ref]


def rerender(path: Path) -> dict[str, Any]:
    """A finished run's results with the package ratios derived (again) from the sizes it wrote."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgeCompressError(f"--from-json {path}: cannot read it as a results file ({e})") from e
    if "rendered" not in report:  # a re-render of a re-render keeps the first one's account of the figures
        note = "the ratios were derived from the sizes that run wrote (no training or measuring)"
        if "provenance" not in report:
            note += "; that run predates recorded provenance (its command line and commit are unknown)"
        report["rendered"] = {"from_json": str(path), "note": note + "."}
    report["package_ratios"] = package_ratios(report["rows"])
    return report


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    ref = rows[0]
    lines = [f"# Weight sharing and the Huffman-coded package ({report['bits']}-bit, {report['epochs']} KD fine-tune "
             f"epochs)", "",
             f"Data: {report['data']}. Machine: {report['machine'].get('cpu_model')}. Accuracy: the test split "
             "through each file's own runtime. The ratios say how many times smaller than the fp32 teacher this "
             "file ('file vs teacher') or its package is: against the teacher's file, and against the teacher's "
             "own package (package against package, the same packer). Every package unpacked to its file bit "
             "for bit."]
    if "rendered" in report:
        lines += ["", f"Re-rendered from `{report['rendered']['from_json']}`: {report['rendered']['note']}"]
    lines += ["", "| model | artifact | test acc | Δ vs teacher (pts) | file | gzip -9 | zstd -19 | package | "
              "file vs teacher | package vs teacher's file | package vs teacher's package |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['artifact']} | {r['accuracy']:.4f} | "
                     f"{100 * (r['accuracy'] - ref['accuracy']):+.2f} | {_kib(r['file'])} | {_kib(r['gzip'])} | "
                     f"{_kib(r['zstd'])} | {_kib(r['package'])} | {ref['file'] / r['file']:.1f}x | "
                     f"{ref['file'] / r['package']:.1f}x | {ref['package'] / r['package']:.1f}x |")
    lines += ["", f"Package against package, for the clustered networks (teacher's package {_kib(ref['package'])}, "
                  f"its file {_kib(ref['file'])}):", "",
              "| model | artifact | package | vs the same network's unclustered fp32.onnx package "
              "| vs teacher's package | vs teacher's file |", "|---|---|---|---|---|---|"]
    for q in report["package_ratios"]:
        if q["artifact"].startswith("cluster"):
            lines.append(f"| {q['model']} | {q['artifact']} | {_kib(q['package'])} | "
                         f"{q['vs_own_fp32_package']:.1f}x ({_kib(q['own_fp32_package'])}) | "
                         f"{q['vs_teacher_package']:.1f}x | {q['vs_teacher_file']:.1f}x |")
    lines += ["", "PyTorch accuracies of the fine-tuned rows (float -> after quantizing -> after the fine-tune):", ""]
    for r in rows:
        if "pytorch" in r:
            p = r["pytorch"]
            lines.append(f"- {r['model']} {r['artifact']}: {p['accuracy_float']:.4f} -> "
                         f"{p['accuracy_before_finetune']:.4f} -> {p['accuracy']:.4f} (at most "
                         f"{p['max_distinct_values']} distinct values in a layer)")
    lines.append(f"\n{report['seconds'] / 60:.1f} minutes.")
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
