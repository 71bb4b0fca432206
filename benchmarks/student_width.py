"""How wide a student fits a target, and how accurate it gets: standalone KD students of several widths and epochs.

In ONE run, on the data of params.yaml's data section, from the teachers' stored soft targets (the distill
stage's models/soft_targets.npz; with --limit they are recomputed for the subset from models/teacher.pt and
the members): for every width in --widths (distill.width's meaning: a multiplier of distill.channels) and
every count in --epochs, a fresh MobileNet student trained exactly as the distill stage trains one (ensemble
KD from the same stored logits, distill.temperature/alpha, distill.train with those epochs), then
  - validation and test accuracy, each with its 95% Wilson interval;
  - its full-integer int8 TFLite file (calibrated on models/calibration.npz as the pool's int8 files are):
    its bytes, the Huffman-coded package a device downloads, and its own validation and test accuracy run
    through LiteRT (the figure a target's check would give on the whole test set);
  - for every --targets profile: whether that file fits the profile's size_mb and the package its
    download_mb (the budgets the tight targets ship under).
It answers "what would the target need" with measurements instead of an estimate from parameter counts.
``--channels``/``--strides`` try other MobileNet shapes; ``--resnet`` tries ResNets of the teacher's kind.
``--seeds`` trains each one once per training seed; ``--pairs`` then also measures every two of them averaged as
one network (the log of their mean softmax, one graph, as the pool's ``ensemble`` is): two small students in the
bytes of one wide one.

    python benchmarks/student_width.py --widths 1.25,1.875 --epochs 12 [--targets mobile-cpu,iot-camera]
    python benchmarks/student_width.py --resnet '16,20,40,80' --epochs 12   # the teacher's kind, narrow
    python benchmarks/student_width.py --widths 1.2 --epochs 24 --seeds 0,1 --pairs   # two averaged
Smoke: python benchmarks/student_width.py --widths 0.5 --epochs 1 --limit 600 --out /tmp/sw
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

from edgecompress.checkpoint import save_checkpoint
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.ensemble_graph import EnsembleGraph
from edgecompress.compression.export import io_details, run_artifact
from edgecompress.compression.tflite import export_tflite
from edgecompress.config import read
from edgecompress.deploy.pack import pack_file
from edgecompress.deploy.stats import wilson
from edgecompress.deploy.targets import load_target
from edgecompress.log import get_logger
from edgecompress.models import build_model, count_macs, count_params, student_channels
from edgecompress.training.distill import DistillConfig
from edgecompress.training.ensemble import ensemble_kd_loss
from edgecompress.training.loop import crop_fill, predict_logits, tensors
from edgecompress.training.soft_targets import fit_on_soft_targets, response

log = get_logger("bench.student_width")
MIB = 1024 * 1024


def accuracy(logits: np.ndarray, y: torch.Tensor) -> dict[str, Any]:
    """Top-1 accuracy of ``logits`` on labels ``y`` with its 95% Wilson interval."""
    acc = float((logits.argmax(1) == y.numpy()).mean())
    ci = wilson(acc, len(y))
    return {"accuracy": acc, "ci": [ci.lo, ci.hi], "n": len(y)}


def fits(target: Any, file_bytes: int, package_bytes: int) -> dict[str, Any]:
    """Which of the profile's size budgets the int8 file and its package meet (None: the profile sets none)."""
    b = target.budgets
    return {"size_mb": None if b.size_mb is None else file_bytes <= b.size_mb * MIB,
            "download_mb": None if b.download_mb is None else package_bytes <= b.download_mb * MIB}


def architectures(args: Any, base: list[int]) -> list[tuple[str, list[int]]]:
    """(label, channels) per run: each --resnet or --channels list as given, else each --widths multiplier of
    ``base``."""
    if args.resnet:
        specs = [spec for spec in args.resnet.split(";") if spec]
        return [(f"resnet{i}", [int(c) for c in spec.split(",")]) for i, spec in enumerate(specs)]
    if args.channels:
        specs = [spec for spec in args.channels.split(";") if spec]
        return [(f"arch{i}", [int(c) for c in spec.split(",")]) for i, spec in enumerate(specs)]
    return [(str(float(w)), student_channels(base, float(w))) for w in args.widths.split(",")]


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    harness.add_params(ap)
    ap.add_argument("--models", default="models", help="teacher.pt, members/, soft_targets.npz, calibration.npz")
    ap.add_argument("--widths", default="1.25,1.875", help="width multipliers of distill.channels")
    ap.add_argument("--epochs", default="12", help="training epochs, one run per entry (comma-separated)")
    ap.add_argument("--channels", default=None,
                    help="explicit architectures instead of --widths: channel lists separated by ';', each "
                         "[stem, block outs...] as comma-separated ints, e.g. '32,64,64,128,128,192,192'")
    ap.add_argument("--strides", default=None,
                    help="block strides (comma-separated; default distill.strides); with several --channels, one "
                         "list per architecture separated by ';', or one list for all")
    ap.add_argument("--resnet", default=None,
                    help="ResNet students (the teacher's kind, one basic block per stride-2 stage) instead of "
                         "MobileNets: channel lists separated by ';', each [stem, stage outs...], e.g. '16,20,40,80'")
    ap.add_argument("--seeds", default=None, help="training seeds, one run per entry (default: distill.train.seed)")
    ap.add_argument("--pairs", action="store_true",
                    help="also measure every two trained students averaged as one network (log mean softmax)")
    ap.add_argument("--targets", default="mobile-cpu,iot-camera", help="profiles under targets/ to check against")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep each student's checkpoint and int8 file beside the results")
    ap.add_argument("--name", default=None, help="results file stem (default student_width[_limitN])")
    harness.add_limit(ap, help="subsample the data (a quick look); soft targets recomputed")
    harness.add_out(ap, "benchmarks/results")
    args, bench = harness.parse(ap, argv)
    torch.set_num_threads(args.threads)
    params = harness.load_params(args.params)
    distill, calib_cfg = read(params, "distill", DistillConfig), read(params, "calibrate", CalibrationConfig)
    targets = [load_target(harness.ROOT / "targets" / f"{t}.yaml") for t in args.targets.split(",") if t]
    ds = harness.load_data(params, limit=args.limit, where=args.params)
    t = tensors(ds)
    x, y = t["train"]
    models = Path(args.models)
    sources, st = harness.teachers_and_targets(params, models, ds, x, args.limit)
    logits = st.select(sources, x, "student_width")
    calib = np.load(models / "calibration.npz")["x"] if not args.limit else x[:calib_cfg.samples].numpy()
    loss = response(ensemble_kd_loss(distill.temperature, distill.alpha, distill.train.label_smoothing),
                    ensemble=True)
    out = Path(args.out)
    name = args.name or ("student_width" if not args.limit else f"student_width_limit{args.limit}")
    rows: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    trained: list[tuple[str, torch.nn.Module, dict[str, Any]]] = []
    seeds = [int(sd) for sd in args.seeds.split(",")] if args.seeds else [distill.train.seed]
    archs = architectures(args, distill.channels)

    def measure(model: torch.nn.Module, tfl: Path) -> dict[str, Any]:
        """PyTorch and int8 LiteRT accuracy on val and test, the int8 file's and package's bytes, the fits."""
        model.eval()
        export_tflite(model, tuple(x.shape[1:]), tfl, calib=calib, cfg=calib_cfg)
        file_bytes, package_bytes = tfl.stat().st_size, len(pack_file(tfl))
        side = io_details(tfl)
        row = {**{split: accuracy(predict_logits(model, t[split][0]), t[split][1]) for split in ("val", "test")},
               **{f"int8_{split}": accuracy(run_artifact(tfl, side, t[split][0].numpy()), t[split][1])
                  for split in ("val", "test")},
               "int8_bytes": file_bytes, "package_bytes": package_bytes,
               "fits": {p.name: fits(p, file_bytes, package_bytes) for p in targets}}
        if not args.keep:
            tfl.unlink()  # the numbers are the result; re-running rebuilds the file
        return row
    stride_specs = [s for s in (args.strides or "").split(";") if s]
    if len(stride_specs) not in (0, 1, len(archs)):
        raise SystemExit(f"--strides: {len(stride_specs)} lists for {len(archs)} architectures; give one or one each")
    for i, (width, channels) in enumerate(archs):
        spec = stride_specs[i if len(stride_specs) > 1 else 0] if stride_specs else None
        if args.resnet:  # one stride-2 basic block per stage (the teacher's kind); --strides do not apply
            strides = [2] * (len(channels) - 1)
            arch = {"kind": "resnet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                    "stem": channels[0], "widths": channels[1:], "blocks": [1] * len(strides), "dropout": 0.0}
        else:
            strides = [int(s) for s in spec.split(",")] if spec else list(distill.strides)
            arch = {"kind": "mobilenet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                    "channels": channels, "strides": strides, "dropout": 0.0}
        for epochs, seed in ((int(e), int(sd)) for e in args.epochs.split(",") for sd in seeds):
            torch.manual_seed(seed)
            model = build_model(arch)
            t0 = time.time()
            fit_on_soft_targets(model, x, y, dataclasses.replace(distill.train, epochs=epochs, seed=seed), logits, st,
                                loss, crop_fill(ds), name=f"w{width}-e{epochs}-s{seed}")
            seconds = time.time() - t0
            stem = f"{name}_w{width}_e{epochs}" + (f"_s{seed}" if len(seeds) > 1 else "")
            row = {"width": width, "epochs": epochs, "seed": seed, "channels": channels, "strides": strides,
                   "params": count_params(model), "macs": count_macs(model, tuple(x.shape[1:])),
                   "train_seconds": seconds, **measure(model, out / f"{stem}.int8.tflite")}
            if args.keep:
                save_checkpoint(out / f"{stem}.pt", model, arch, {"epochs": epochs, "width": width, "seed": seed})
            rows.append(row)
            if args.pairs:  # kept in memory only when they are to be averaged
                trained.append((f"w{width}-e{epochs}-s{seed}", model, row))
            log.info("width %s, %d epochs, seed %d: val %.4f test %.4f (int8 LiteRT %.4f / %.4f), int8 %d B, "
                     "package %d B (%.0f s)", width, epochs, seed, row["val"]["accuracy"], row["test"]["accuracy"],
                     row["int8_val"]["accuracy"], row["int8_test"]["accuracy"], row["int8_bytes"],
                     row["package_bytes"], seconds)
    for (na, a, ra), (nb, b, rb) in itertools.combinations(trained, 2):
        pair = {"pair": [na, nb], "params": ra["params"] + rb["params"],
                "train_seconds": ra["train_seconds"] + rb["train_seconds"],
                **measure(EnsembleGraph([a, b]).eval(), out / f"{name}_pair_{na}_{nb}.int8.tflite")}
        pairs.append(pair)
        log.info("%s + %s averaged: val %.4f test %.4f (int8 LiteRT %.4f / %.4f), package %d B", na, nb,
                 pair["val"]["accuracy"], pair["test"]["accuracy"], pair["int8_val"]["accuracy"],
                 pair["int8_test"]["accuracy"], pair["package_bytes"])
    report = {"data": {"limit": args.limit, "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
              "targets": {p.name: {"size_mb": p.budgets.size_mb, "download_mb": p.budgets.download_mb}
                          for p in targets},
              "rows": rows, "pairs": pairs}
    md = markdown(report)
    harness.write_results(out / f"{name}.json", report, bench, markdown=md, md_path=out / f"{name}.md")
    print(md)


def _fit_cell(f: dict[str, Any]) -> str:
    marks = [f"{k.replace('_mb', '')} {'yes' if v else 'NO'}" for k, v in f.items() if v is not None]
    return ", ".join(marks) or "-"


def markdown(r: dict[str, Any]) -> str:
    budgets = "; ".join(f"{n}: " + ", ".join(f"{k.replace('_mb', '')} {v * 1024:.0f} KiB" for k, v in b.items()
                                            if v is not None) for n, b in r["targets"].items())
    names = list(r["targets"])
    head = ("| width | epochs | seed | channels | strides | params | val [95%] | test [95%] | int8 LiteRT val [95%] | int8 LiteRT test [95%] | "
            "int8 B | package B | " + " | ".join(f"fits {n}" for n in names) + " | train s |\n|"
            + "---|" * (13 + len(names)) + "\n")

    def pct(a: dict[str, Any] | None) -> str:
        if a is None:
            return "n/a"
        return f"{a['accuracy']:.2%} [{a['ci'][0]:.2%}, {a['ci'][1]:.2%}]".replace("%", "") + "%"

    body = "".join(f"| {w['width']} | {w['epochs']} | {w.get('seed', '-')} | {w['channels']} | {w.get('strides', '-')} | {w['params']:,} | {pct(w['val'])} | "
                   f"{pct(w['test'])} | {pct(w.get('int8_val'))} | {pct(w.get('int8_test'))} | "
                   f"{w['int8_bytes']:,} | {w['package_bytes']:,} | "
                   + " | ".join(_fit_cell(w["fits"][n]) for n in names) + f" | {w['train_seconds']:.0f} |\n"
                   for w in r["rows"])
    d = r["data"]
    pairs = ""
    if r.get("pairs"):
        pairs = ("\n## Two students averaged (log of the mean softmax, one graph)\n\n| pair | params | val [95%] | "
                 "test [95%] | int8 LiteRT val [95%] | int8 LiteRT test [95%] | int8 B | package B | "
                 + " | ".join(f"fits {n}" for n in names) + " | train s (both) |\n|" + "---|" * (9 + len(names)) + "\n"
                 + "".join(f"| {' + '.join(p['pair'])} | {p['params']:,} | {pct(p['val'])} | {pct(p['test'])} | "
                           f"{pct(p['int8_val'])} | {pct(p['int8_test'])} | {p['int8_bytes']:,} | "
                           f"{p['package_bytes']:,} | " + " | ".join(_fit_cell(p["fits"][n]) for n in names)
                           + f" | {p['train_seconds']:.0f} |\n" for p in r["pairs"]))
    return (f"# Standalone students by width: accuracy and the bytes a target holds\n\nData: {d['train']} training, "
            f"{d['val']} validation, {d['test']} test images. Each student trained as the distill stage trains one "
            f"(ensemble KD from the stored soft targets); int8: full-integer TFLite (names stripped), package: "
            f"the Huffman-coded file a device downloads. Budgets: {budgets}.\n\n" + head + body + pairs)


if __name__ == "__main__":
    main()
