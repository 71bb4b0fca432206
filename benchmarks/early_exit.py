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

The headline setting of each network is chosen on VALIDATION only (:func:`choose_on_validation`): among
the --drops settings whose validation accuracy stays within --choose-within points of the plain network's,
the one whose validation images cost the fewest MACs (their exit fractions times the MACs to each exit).
Its test speed-up and test accuracy change are then reported; the per-setting test tables stay, for
reference, and decide nothing.

Writes OUT/early_exit.json and OUT/early_exit.md.

Usage: python benchmarks/early_exit.py [--models models] [--params params.yaml] [--budget-min 6]
           [--train-samples 20000] [--drops 0,0.1,0.3,0.5,1.0] [--rounds 3] [--runs 3000] [--no-teacher]
           [--choose-within 0.3]
Smoke: python benchmarks/early_exit.py --limit 600 --budget-min 0.3 --rounds 1 --runs 200 --out /tmp/ee
Re-render a finished run (the choice and the report again, no training or timing):
       python benchmarks/early_exit.py --from-json benchmarks/results/early_exit.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import harness

from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.cascade import export_segments, verify_cascade, write_manifest
from edgecompress.compression.export import io_details
from edgecompress.compression.onnx import export_onnx
from edgecompress.compression.tflite import export_tflite
from edgecompress.deploy import runner
from edgecompress.errors import EdgeCompressError
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
    xv = torch.from_numpy(ds.normalize(ds.val.x))
    with torch.no_grad():  # the plain network's validation accuracy: what the choice compares against
        plain.eval()
        val_pred = torch.cat([plain(xv[i:i + 1000]).argmax(1) for i in range(0, len(xv), 1000)]).numpy()
    variants = build_variants(label, plain, net, choices, data_meta, work, ds.normalize(ds.test.x[:500]),
                              final_only=not report.get("frozen", False))
    measured = measure(variants, testset, a.rounds, a.runs)
    return {"exits": list(net.exits), "fine_tune": {k: v for k, v in report.items() if k != "history"},
            "history": report["history"], "val_plain_accuracy": float((val_pred == ds.val.y).mean()),
            "choices": {f"{d:g}": {**c.as_dict(), **predicted[d]} for d, c in choices.items()},
            "measured": measured}


# ------------------------------------------------------------------------------ the choice, on validation

TOL_POINTS = 1e-9  # a drop of exactly the bound counts: 100 * (0.93833 - 0.93533) is 0.30000000000000027


@dataclass(frozen=True)
class ValSetting:
    """One cascade setting as the validation images see it: the only figures a choice may use."""

    name: str  # the variant's name in the measured tables ("cascade max_drop 0.3")
    val_drop_points: float  # plain network's validation accuracy minus the cascade's, in points
    val_macs: float  # mean MACs per validation image: exit fractions x MACs to reach each exit


def choose_on_validation(settings: Sequence[ValSetting], within_points: float) -> ValSetting | None:
    """The setting that costs the fewest MACs on validation among those whose validation accuracy stays
    within ``within_points`` of the plain network's (ties: the smaller drop, then the name); None when
    none does. Test figures never enter: they report the choice afterwards."""
    if not within_points >= 0:
        raise EdgeCompressError(f"--choose-within {within_points!r}: must be >= 0 accuracy points")
    ok = [s for s in settings if s.val_drop_points <= within_points + TOL_POINTS]
    return min(ok, key=lambda s: (s.val_macs, s.val_drop_points, s.name), default=None)


def val_settings(res: dict[str, Any]) -> list[ValSetting]:
    """Every cascade setting of one network's results, with its validation drop and validation MACs."""
    plain = res.get("val_plain_accuracy")
    if plain is None:  # results written before the plain network's val accuracy was recorded
        if not res["fine_tune"].get("frozen"):
            raise EdgeCompressError("results: no 'val_plain_accuracy' and the backbone was fine-tuned, so the "
                                    "final exit is not the plain network; re-run benchmarks/early_exit.py")
        plain = next(iter(res["choices"].values()))["val_final_accuracy"]  # frozen: the final exit IS plain
    macs = res["fine_tune"]["macs_to_exit"]
    return [ValSetting(f"cascade max_drop {k}", 100 * (plain - c["val_accuracy"]),
                       float(sum(f * m for f, m in zip(c["val_exit_fractions"], macs))))
            for k, c in res["choices"].items()]


def chosen_on_validation(res: dict[str, Any], within_points: float) -> dict[str, Any]:
    """The validation choice for one network and what it costs on test, per artifact."""
    settings = val_settings(res)
    pick = choose_on_validation(settings, within_points)
    test: dict[str, Any] = {}
    for artifact, rows in res["measured"].items() if pick else ():
        base, row = rows["plain"], rows[pick.name]
        test[artifact] = {"speedup_mean": base["latency_ms"]["mean"] / row["latency_ms"]["mean"],
                          "test_accuracy": row["accuracy"], "plain_test_accuracy": base["accuracy"],
                          "test_change_points": 100 * (row["accuracy"] - base["accuracy"])}
    return {"within_points": within_points, "settings": [asdict(s) for s in settings],
            "macs_all_segments": res["fine_tune"]["macs_to_exit"][-1],
            "chosen": pick.name if pick else None, "test": test}


# ---------------------------------------------------------------------------------------------- report

def chosen_lines(label: str, res: dict[str, Any], n_val: int, n_test: int) -> list[str]:
    ch = res["chosen_on_validation"]
    w = ch["within_points"]
    lines = [f"\n### {label}: the setting chosen on validation ({n_val} images)\n",
             f"Rule: among the settings within {w:g} pts of the plain network's validation accuracy, the one whose "
             f"validation images cost the fewest MACs. Nothing measured on test enters the choice.", "",
             f"| setting | val Δ acc vs plain (pts) | val MACs / image (share of all segments) | within {w:g} pts |",
             "|---|---|---|---|"]
    for s in ch["settings"]:
        mark = "**chosen**" if s["name"] == ch["chosen"] else ("yes" if s["val_drop_points"] <= w + TOL_POINTS
                                                                else "no")
        lines.append(f"| {s['name']} | {0.0 - s['val_drop_points']:+.2f} | {s['val_macs'] / 1e6:.2f} M "
                     f"({s['val_macs'] / ch['macs_all_segments']:.0%}) | {mark} |")
    if ch["chosen"] is None:
        return lines + [f"\nNo setting stays within {w:g} pts on validation: the plain network is the choice."]
    lines += ["", f"Its cost on test ({n_test} images, runner):", ""]
    for artifact, t in ch["test"].items():
        goal = "meets" if t["speedup_mean"] >= 1.5 and t["test_change_points"] >= -0.3 - TOL_POINTS else "misses"
        lines.append(f"- {artifact}: **{t['speedup_mean']:.2f}x** mean speed-up, test accuracy "
                     f"{t['test_accuracy']:.4f} vs plain {t['plain_test_accuracy']:.4f} "
                     f"(**{t['test_change_points']:+.2f} pts**; {goal} the goal of 1.5x at <= 0.3 pts)")
    return lines


def table(label: str, res: dict[str, Any]) -> list[str]:
    lines = []
    for artifact, rows in res["measured"].items():
        base = rows["plain"]
        lines += [f"\n### {label}, {artifact} ({base['runtime']}{', XNNPACK' if base['xnnpack'] else ''}, 1 thread): "
                  f"every setting on test, for reference, not used for the choice\n",
                  "| variant | thresholds | test exit fractions | test acc | Δ acc vs plain (pts) | mean (ms) | p50 | p90 "
                  "| p99 | speedup (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            thr = "" if r["thresholds"] is None else ", ".join("off" if t is None else f"{t:.3f}" for t in r["thresholds"])
            fr = "" if r["exit_fractions"] is None else " / ".join(f"{f:.2f}" for f in r["exit_fractions"])
            lat = r["latency_ms"]
            lines.append(f"| {name} | {thr} | {fr} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.2f} "
                         f"| {lat['mean']:.4f} | {lat['p50']:.4f} | {lat['p90']:.4f} | {lat['p99']:.4f} "
                         f"| {base['latency_ms']['mean'] / lat['mean']:.2f}x |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    fp, runs, rounds = result["fingerprint"], result["runs"], result["rounds"]
    md = ["# Early exits (BranchyNet) as a cascade on the standalone runner", "",
          f"Machine: {fp['cpu_model']} ({fp['cores']} cores, shared), {fp['os']}. Data: {result['data']}. "
          f"Runner at 1 thread, batch 1; latency = median over {rounds} interleaved rounds of the mean over "
          f"{runs} calls cycling the test images; accuracy and exit fractions over the whole test split. "
          f"Thresholds chosen on the validation split (max_drop = points below the final exit on val); the "
          f"headline setting chosen on validation too. Total time {result['seconds']:.0f} s."]
    if "rendered" in result:
        md += ["", f"Re-rendered from `{result['rendered']['from_json']}`: {result['rendered']['note']}"]
    for label in ("student", "teacher"):
        if label in result:
            r = result[label]
            ft = r["fine_tune"]
            how = "heads only (backbone frozen)" if ft["frozen"] else "joint (heads and backbone)"
            md += [f"\n## {label} (exits after blocks {r['exits']})", "",
                   f"Fine-tune, {how}: {ft['epochs']} epoch(s) on {ft['train_samples']} images, {ft['seconds']:.0f} s. "
                   f"Per-exit test accuracy (PyTorch) {[round(x, 4) for x in ft['test_accuracy']]}; MACs to each exit "
                   f"{ft['macs_to_exit']}."]
            md += chosen_lines(label, r, result["data"]["val"], result["data"]["test"])
            md += table(label, r)
    return "\n".join(md) + "\n"


def rerender(path: Path, within: float) -> dict[str, Any]:
    """A finished run's results with the validation choice made (again) from the figures it holds."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgeCompressError(f"--from-json {path}: cannot read it as a results file ({e})") from e
    if "rendered" not in result:  # a re-render of a re-render keeps the first one's account of the figures
        note = "the choice on validation was made from the per-setting figures that run wrote (no training or timing)"
        if "provenance" not in result:
            note += ("; that run predates recorded provenance (its command line and commit are unknown, its options "
                     "are 'args')")
        result["rendered"] = {"from_json": str(path), "note": note + "."}
    for label in ("student", "teacher"):
        if label in result:
            result[label]["chosen_on_validation"] = chosen_on_validation(result[label], within)
    result["choose_within_points"] = within
    return result


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
    p.add_argument("--choose-within", type=float, default=0.3,
                   help="the headline setting stays within this many points of plain on VALIDATION")
    p.add_argument("--from-json", help="re-render a finished run's results (its .json): the choice and the report")
    harness.add_out(p, "benchmarks/results")
    a, bench = harness.parse(p, argv)
    out = Path(a.out)
    if a.from_json:
        result = rerender(Path(a.from_json), a.choose_within)
        harness.write_results(out / "early_exit.json", result, bench, markdown=markdown(result),
                              md_path=out / "early_exit.md")
        print(markdown(result))
        return
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
    for label in ("student", "teacher"):
        if label in result:
            result[label]["chosen_on_validation"] = chosen_on_validation(result[label], a.choose_within)
    result["choose_within_points"] = a.choose_within
    harness.write_results(out / "early_exit.json", result, bench, markdown=markdown(result),
                          md_path=out / "early_exit.md")
    print(markdown(result))


if __name__ == "__main__":
    main()
