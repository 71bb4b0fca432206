"""Do early exits (BranchyNet) pay on this machine? Cascade vs the same network without exits (evidence, not a test)

In ONE run, from the pipeline's checkpoints (student.pt, teacher.pt) and params.yaml's data section:
  1. the student gets exit heads (default after blocks 1 and 3) and is fine-tuned jointly, every exit
     distilled from the teacher, on a seeded training subset; the number of epochs is sized from a timed
     probe epoch so the fine-tune fits --budget-min;
  2. thresholds are chosen on the VALIDATION split for each --drops value (max accuracy points below the
     final exit), then the cascade is exported (fp32 ONNX and fp32 TFLite segments + manifests) and
     checked against PyTorch;
  3. the standalone runner (library functions, 1 thread, batch 1, this machine) measures, interleaved over
     --rounds rounds: the plain network exported the same way, the fine-tuned network without its exits,
     the cascade with every exit disabled (pure segment-call overhead), and the cascade at each setting;
  4. with --teacher, the same for a teacher-sized backbone (ResNetTeacher; frozen backbone, heads only,
     self-distilled from its own final exit, so its final exit IS the teacher).
Accuracy and exit fractions are on the whole test split through the runner; latency is the mean over
--runs calls cycling over the test images (an image's exit decides its cost).

Writes OUT/early_exit.json and OUT/early_exit.md.

Usage: python benchmarks/early_exit.py [--models models] [--params params.yaml] [--budget-min 6]
           [--train-samples 20000] [--drops 0,0.1,0.3,0.5,1.0] [--rounds 3] [--runs 3000] [--no-teacher]
Smoke: python benchmarks/early_exit.py --limit 600 --budget-min 0.3 --rounds 1 --runs 200 --out /tmp/ee
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.cascade import export_segments, verify_cascade, write_manifest
from edgecompress.compression.export import io_details
from edgecompress.compression.onnx import export_onnx
from edgecompress.compression.tflite import export_tflite
from edgecompress.deploy import runner
from edgecompress.fileio import write_json
from edgecompress.training.early_exit import (EarlyExitConfig, EarlyExitNet, ThresholdChoice, exit_probabilities,
                                              cascade_predict, thresholds_on_val, train_early_exit)
from edgecompress.training.loop import TrainConfig

ARTIFACTS = ("fp32.onnx", "fp32.tflite")
T0 = time.time()


def log(msg: str) -> None:
    print(f"[early-exit {time.time() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def fine_tune(backbone: torch.nn.Module, teacher: torch.nn.Module | None, ds: Any, exits: tuple[int, ...],
              train_samples: int, budget_s: float, max_epochs: int, freeze: bool, lr: float,
              name: str, head_conv: int = 0) -> tuple[EarlyExitNet, dict[str, Any]]:
    """Time a probe epoch on a small subset, then fine-tune for as many epochs as fit ``budget_s``."""
    n = min(train_samples, len(ds.train))
    probe_n = min(n, 2000)
    base = dict(batch_size=128, lr=lr, weight_decay=1e-4, crop_pad=2, flip=True, seed=0)
    _, probe = train_early_exit(backbone, teacher, ds, EarlyExitConfig(
        exits=exits, head_conv=head_conv, freeze_backbone=freeze, train_samples=probe_n,
        train=TrainConfig(epochs=1, **base)),
        name=f"{name}-probe")
    per_sample = probe["history"][0]["seconds"] / probe_n  # the epoch alone, not the evaluation after it
    epochs = int(max(1, min(max_epochs, budget_s // max(per_sample * n, 1e-9))))
    log(f"{name}: probe {probe_n} images in {per_sample * probe_n:.1f} s -> ~{per_sample * n:.0f} s per epoch "
        f"of {n}; fine-tuning {epochs} epoch(s)")
    cfg = EarlyExitConfig(exits=exits, head_conv=head_conv, freeze_backbone=freeze, train_samples=n,
                          train=TrainConfig(epochs=epochs, **base))
    net, report = train_early_exit(backbone, teacher, ds, cfg, name=name)
    report.update({"epochs": epochs, "frozen": freeze})
    log(f"{name}: per-exit val accuracy {[round(a, 4) for a in report['val_accuracy']]}, test "
        f"{[round(a, 4) for a in report['test_accuracy']]} ({report['seconds']:.0f} s)")
    return net, report


def plain_artifact(model: torch.nn.Module, data_meta: dict[str, Any], path: Path) -> Path:
    """The network without exits, exported the way the export stage does, with its sidecar."""
    shape = tuple(data_meta["input_shape"])
    (export_onnx if path.suffix == ".onnx" else export_tflite)(model, shape, path)
    write_json(Path(f"{path}.json"), {
        "format": path.suffix.lstrip("."), "precision": "fp32", **io_details(path), "mean": data_meta["mean"],
        "std": data_meta["std"], "class_names": data_meta["class_names"],
        "num_classes": len(data_meta["class_names"])})
    return path


def build_variants(label: str, plain: torch.nn.Module, net: EarlyExitNet, choices: dict[float, ThresholdChoice],
                   data_meta: dict[str, Any], work: Path, x_check: np.ndarray,
                   final_only: bool) -> dict[str, dict[str, Path]]:
    """{artifact: {variant name: model path}}: plain, final-only, never-exit cascade, cascade per drop."""
    out: dict[str, dict[str, Path]] = {}
    d = work / label
    d.mkdir(parents=True, exist_ok=True)
    for artifact in ARTIFACTS:
        suffix = "." + artifact.split(".")[1]
        v: dict[str, Path] = {"plain": plain_artifact(plain, data_meta, d / f"plain{suffix}")}
        if final_only:  # a jointly fine-tuned backbone differs from the plain network
            v["fine-tuned, no exits"] = plain_artifact(net.backbone, data_meta, d / f"final_only{suffix}")
        segments = export_segments(net, data_meta["input_shape"], d, artifact)
        never = d / f"{artifact}.never.cascade.json"
        write_manifest(never, segments, [None] * len(net.exits), data_meta, net)
        check = verify_cascade(never, net, x_check)
        log(f"{label} {artifact}: cascade per-exit max |logit diff| vs PyTorch "
            f"{[f'{x:.1e}' for x in check['max_abs_logit_diff']]}")
        v["cascade, exits off"] = never
        for drop, choice in choices.items():
            path = d / f"{artifact}.drop{drop:g}.cascade.json"
            write_manifest(path, segments, choice, data_meta, net, extra={"verification": check})
            v[f"cascade max_drop {drop:g}"] = path
        out[artifact] = v
    return out


def measure(variants: dict[str, dict[str, Path]], testset: Path, rounds: int, runs: int) -> dict[str, Any]:
    """Runner results per artifact and variant; latency statistics are medians over interleaved rounds."""
    results: dict[str, Any] = {}
    for artifact, v in variants.items():
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in v}
        for r in range(rounds):  # alternate variants so drift and other load hit all alike
            for name, path in v.items():
                # Accuracy and exit fractions over the whole test split once; later rounds time only.
                res = runner.run(path, data=testset, threads=1, warmup=200, runs=runs, max_seconds=120,
                                 accuracy_samples=None if r == 0 else 1)
                per[name].append(res)
            log(f"{artifact} round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {per[n][-1]['latency_ms']['mean']:.4f}" for n in v))
        results[artifact] = {}
        for name, rs in per.items():
            lat = {k: statistics.median(x["latency_ms"][k] for x in rs) for k in ("mean", "p50", "p90", "p99")}
            first = rs[0]
            results[artifact][name] = {
                "accuracy": first["accuracy"], "exit_fractions": first.get("exit_fractions"),
                "thresholds": first.get("thresholds"), "latency_ms": lat,
                "latency_mean_per_round": [x["latency_ms"]["mean"] for x in rs],
                "model_size_bytes": first["model_size_bytes"], "runtime": first["runtime"]["name"],
                "xnnpack": first["runtime"]["xnnpack"]}
    return results


def run_size(label: str, plain: torch.nn.Module, net: EarlyExitNet, report: dict[str, Any], ds: Any,
             data_meta: dict[str, Any], drops: list[float], work: Path, testset: Path, a: argparse.Namespace
             ) -> dict[str, Any]:
    choices = {d: thresholds_on_val(net, ds, d) for d in drops}
    xt = torch.from_numpy(ds.normalize(ds.test.x))
    test_probs = exit_probabilities(net, xt)
    predicted = {}
    for d, c in choices.items():
        pred, ex = cascade_predict(test_probs, c.thresholds)
        predicted[d] = {"test_accuracy": float((pred == ds.test.y).mean()),
                        "test_exit_fractions": (np.bincount(ex, minlength=net.num_segments) / len(ex)).tolist()}
        log(f"{label} max_drop {d:g}: thresholds {[round(t, 4) for t in c.thresholds]}, val exits "
            f"{[round(f, 3) for f in c.exit_fractions]}, val acc {c.accuracy:.4f} (final {c.final_accuracy:.4f}); "
            f"PyTorch test acc {predicted[d]['test_accuracy']:.4f}")
    variants = build_variants(label, plain, net, choices, data_meta, work, ds.normalize(ds.test.x[:500]),
                              final_only=not report.get("frozen", False))
    measured = measure(variants, testset, a.rounds, a.runs)
    return {"exits": list(net.exits), "fine_tune": {k: v for k, v in report.items() if k != "history"},
            "history": report["history"], "choices": {f"{d:g}": {**c.as_dict(), **predicted[d]} for d, c in choices.items()},
            "measured": measured}


def table(label: str, res: dict[str, Any]) -> list[str]:
    lines = []
    for artifact, rows in res["measured"].items():
        base = rows["plain"]
        lines += [f"\n### {label}, {artifact} ({base['runtime']}{', XNNPACK' if base['xnnpack'] else ''}, 1 thread)\n",
                  "| variant | thresholds | test exit fractions | test acc | Δ acc vs plain (pts) | mean (ms) | p50 | p90 "
                  "| p99 | speedup (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            thr = "" if r["thresholds"] is None else ", ".join("off" if t is None else f"{t:.3f}" for t in r["thresholds"])
            fr = "" if r["exit_fractions"] is None else " / ".join(f"{f:.2f}" for f in r["exit_fractions"])
            lat = r["latency_ms"]
            lines.append(f"| {name} | {thr} | {fr} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.2f} "
                         f"| {lat['mean']:.4f} | {lat['p50']:.4f} | {lat['p90']:.4f} | {lat['p99']:.4f} "
                         f"| {base['latency_ms']['mean'] / lat['mean']:.2f}x |")
        ok = [(base["latency_ms"]["mean"] / r["latency_ms"]["mean"], n) for n, r in rows.items()
              if n.startswith("cascade max") and 100 * (r["accuracy"] - base["accuracy"]) >= -0.3]
        best = max(ok, default=None)
        verdict = (f"best cascade within 0.3 pts of plain: {best[1]} at {best[0]:.2f}x "
                   f"({'meets' if best[0] >= 1.5 else 'misses'} the 1.5x goal)") if best else \
            "no cascade setting stays within 0.3 pts of plain on test"
        lines.append(f"\n{verdict}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--models", default="models")
    harness.add_params(p)
    harness.add_limit(p, help="data.limit override (smoke runs)")
    p.add_argument("--budget-min", type=float, default=6.0, help="fine-tune budget for the student (minutes)")
    p.add_argument("--teacher-budget-min", type=float, default=3.0)
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--teacher-train-samples", type=int, default=10000)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--student-exits", default="1,3")
    p.add_argument("--student-freeze", action="store_true",
                   help="train only the student's heads (its final exit stays the plain student)")
    p.add_argument("--student-lr", type=float, default=0.01, help="0.01 suits a joint fine-tune; heads alone take more")
    p.add_argument("--head-conv", type=int, default=0, help="1x1 conv width in every exit head (0: pool + Linear)")
    p.add_argument("--teacher-exits", default="0,1")
    p.add_argument("--drops", default="0,0.1,0.3,0.5,1.0")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3000)
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher-sized backbone")
    p.add_argument("--work", help="artifact directory (default: a temp dir)")
    harness.add_out(p, "benchmarks/results")
    a, bench = harness.parse(p, argv)
    torch.set_num_threads(1)  # 2 shared cores: training and timing on one thread, as the runner measures
    params = harness.load_params(a.params)
    ds = harness.load_data(params, a.limit, where=a.params)
    log(f"data: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test")
    models = Path(a.models)
    student, smeta = load_checkpoint(models / "student.pt")
    teacher, _ = load_checkpoint(models / "teacher.pt")
    data_meta = {**smeta["data"], "input_shape": list(ds.input_shape)}
    drops = [float(v) for v in a.drops.split(",")]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="edgecompress-early-exit."))
    testset = work / "testset.npz"
    work.mkdir(parents=True, exist_ok=True)
    np.savez(testset, x=ds.test.x, y=ds.test.y)
    result: dict[str, Any] = {"fingerprint": runner.fingerprint(), "data": {k: len(getattr(ds, k)) for k in
                                                                           ("train", "val", "test")},
                              "drops_points": drops, "rounds": a.rounds, "runs": a.runs, "work": str(work),
                              "args": vars(a)}
    exits = tuple(int(v) for v in a.student_exits.split(","))
    net, rep = fine_tune(student, teacher, ds, exits, a.train_samples, 60 * a.budget_min, a.max_epochs,
                         freeze=a.student_freeze, lr=a.student_lr, name="student", head_conv=a.head_conv)
    result["student"] = run_size("student", student, net, rep, ds, data_meta, drops, work, testset, a)
    if not a.no_teacher:
        t_exits = tuple(int(v) for v in a.teacher_exits.split(","))
        # Frozen backbone, self-distilled heads: cheap, and the final exit is the teacher itself.
        tnet, trep = fine_tune(copy.deepcopy(teacher), None, ds, t_exits, a.teacher_train_samples,
                               60 * a.teacher_budget_min, a.max_epochs, freeze=True, lr=0.05, name="teacher",
                               head_conv=a.head_conv)
        result["teacher"] = run_size("teacher", teacher, tnet, trep, ds, data_meta, drops, work, testset, a)
    result["seconds"] = time.time() - T0
    out = Path(a.out)
    fp = result["fingerprint"]
    md = ["# Early exits (BranchyNet) as a cascade on the standalone runner", "",
          f"Machine: {fp['cpu_model']} ({fp['cores']} cores, shared), {fp['os']}. Data: {result['data']}. "
          f"Runner at 1 thread, batch 1; latency = median over {a.rounds} interleaved rounds of the mean over "
          f"{a.runs} calls cycling the test images; accuracy and exit fractions over the whole test split. "
          f"Thresholds chosen on the validation split (max_drop = points below the final exit on val). "
          f"Total time {result['seconds']:.0f} s."]
    for label in ("student", "teacher"):
        if label in result:
            r = result[label]
            ft = r["fine_tune"]
            how = "heads only (backbone frozen)" if ft["frozen"] else "joint (heads and backbone)"
            md += [f"\n## {label} (exits after blocks {r['exits']})", "",
                   f"Fine-tune, {how}: {ft['epochs']} epoch(s) on {ft['train_samples']} images, {ft['seconds']:.0f} s. "
                   f"Per-exit test accuracy (PyTorch) {[round(x, 4) for x in ft['test_accuracy']]}; MACs to each exit "
                   f"{ft['macs_to_exit']}."]
            md += table(label, r)
    harness.write_results(out / "early_exit.json", result, bench, markdown="\n".join(md) + "\n",
                          md_path=out / "early_exit.md")
    print("\n".join(md))


if __name__ == "__main__":
    main()
