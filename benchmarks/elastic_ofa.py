"""The once-for-all claim, measured: slices of one elastic student vs the same widths trained alone.

In ONE run, on the data of params.yaml's data section, from the teachers' stored soft targets (the distill
stage's models/soft_targets.npz; with --limit they are recomputed for the subset from models/teacher.pt and
the members, distill.views views):
  - the elastic student (params' elastic section, --epochs overriding elastic.train.epochs) trained once,
    timed, then each of --widths extracted and its BatchNorm statistics recalibrated;
  - each of those widths trained alone, a fresh MobileNet of exactly the slice's arch, by the same
    distillation (ensemble KD from the same stored logits, elastic.temperature/alpha, elastic.train with
    the same epochs), timed.
Every network gets test accuracy on the same images; the slice minus its standalone twin is a paired
difference with a 95% normal interval over the test images. Cost: the elastic run's training seconds
against the sum of the standalone runs' (the issue's goal: slices within 0.3 pt, for less than training
the widths alone).

    python benchmarks/elastic_ofa.py [--epochs 6] [--widths 0.5,1.0,2.0] [--limit N] [--out benchmarks/results]
Smoke: python benchmarks/elastic_ofa.py --epochs 1 --limit 600 --widths 0.5,1.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import read
from edgecompress.log import get_logger
from edgecompress.models import build_model, count_params
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic import ElasticConfig, elastic_net, extract_slices, train_elastic
from edgecompress.training.ensemble import ensemble_kd_loss
from edgecompress.training.loop import crop_fill, predict_logits, tensors
from edgecompress.training.soft_targets import compute_soft_targets, fit_on_soft_targets, load_soft_targets, response
from edgecompress.training.teacher import TeacherConfig


def log(msg: str) -> None:
    get_logger("elastic_ofa").info(msg)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of the per-image difference of two 0/1 correctness vectors (a - b) and its 95% normal interval."""
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": len(d)}


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    harness.add_params(ap)
    ap.add_argument("--models", default="models", help="teacher.pt, members/, soft_targets.npz")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of every run (default elastic.train.epochs)")
    ap.add_argument("--widths", default="0.5,1.0,2.0", help="the slices compared with standalone training")
    ap.add_argument("--threads", type=int, default=2)
    harness.add_limit(ap, help="subsample the data (a 1/5-size run: --limit 12000); soft targets recomputed")
    harness.add_out(ap, "benchmarks/results")
    args, bench = harness.parse(ap, argv)
    torch.set_num_threads(args.threads)
    params = harness.load_params(args.params)
    distill, cfg = read(params, "distill", DistillConfig), read(params, "elastic", ElasticConfig)
    widths = tuple(float(w) for w in args.widths.split(","))
    train = dataclasses.replace(cfg.train, epochs=args.epochs or cfg.train.epochs)
    cfg = dataclasses.replace(cfg, enabled=True, train=train, slices=widths)
    ds = harness.load_data(params, limit=args.limit, where=args.params)
    t = tensors(ds)
    x, y = t["train"]
    models = Path(args.models)
    sources = [load_checkpoint(models / "teacher.pt")[0]]
    if distill.source == "ensemble":
        sources += [load_checkpoint(models / "members" / f"member-{i}.pt")[0]
                    for i in read(params, "train_teacher", TeacherConfig).members]
    t0 = time.time()
    st = compute_soft_targets(sources, x, crop_fill(ds), distill.views, distill.train) if args.limit \
        else load_soft_targets(models / "soft_targets.npz")
    logits = st.select(sources, x, "elastic_ofa")
    targets_seconds = time.time() - t0
    ensemble = distill.source == "ensemble"

    net = elastic_net(ds, distill, cfg)
    t0 = time.time()
    history = train_elastic(net, x, y, cfg, logits, st, crop_fill(ds), ensemble)
    elastic_seconds = time.time() - t0
    slices = extract_slices(net, [net.spec(w) for w in widths], ds, cfg, t)
    log(f"elastic: {elastic_seconds:.0f} s for {train.epochs} epochs")

    loss = ensemble_kd_loss(cfg.temperature, cfg.alpha, train.label_smoothing)
    rows: list[dict[str, Any]] = []
    x_test, y_test = t["test"]
    for w, s in zip(widths, slices):
        torch.manual_seed(train.seed)
        alone = build_model(s.arch)  # a fresh network of exactly the slice's architecture
        t0 = time.time()
        fit_on_soft_targets(alone, x, y, train, logits, st,
                            response(loss, ensemble=True), crop_fill(ds), name=f"alone-{w}")
        seconds = time.time() - t0
        hit_slice = predict_logits(s.model, x_test).argmax(1) == y_test.numpy()
        hit_alone = predict_logits(alone, x_test).argmax(1) == y_test.numpy()
        rows.append({"width": w, "name": s.name, "channels": s.arch["channels"], "params": count_params(s.model),
                     "macs": s.report["macs"], "slice_test": float(hit_slice.mean()),
                     "alone_test": float(hit_alone.mean()), "slice_minus_alone": paired(hit_slice, hit_alone),
                     "alone_seconds": seconds})
        log(f"width {w}: slice {hit_slice.mean():.4f}, alone {hit_alone.mean():.4f} ({seconds:.0f} s)")
    report = {"data": {"limit": args.limit, "train": len(ds.train), "test": len(ds.test)}, "epochs": train.epochs,
              "elastic": {"widths": list(cfg.widths), "random_subnets": cfg.random_subnets, "inplace": cfg.inplace,
                          "seconds": elastic_seconds, "epoch_seconds": [h["seconds"] for h in history]},
              "soft_targets_seconds": targets_seconds, "rows": rows,
              "alone_seconds_total": sum(r["alone_seconds"] for r in rows)}
    out = Path(args.out)
    name = "elastic_ofa" if not args.limit else f"elastic_ofa_limit{args.limit}"
    harness.write_results(out / f"{name}.json", report, bench, markdown=markdown(report), md_path=out / f"{name}.md")
    print(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    e = r["elastic"]
    lines = [f"# Once-for-all slices vs the same widths trained alone ({r['epochs']} epochs each)", "",
             f"Data: {r['data']['train']} training, {r['data']['test']} test images"
             f"{' (--limit ' + str(r['data']['limit']) + ')' if r['data']['limit'] else ''}. The elastic student "
             f"(widths {e['widths']}, sandwich rule with {e['random_subnets']} random sub-networks, in-place weight "
             f"{e['inplace']}) trained once; each slice's BatchNorm statistics recalibrated. Standalone: a fresh "
             f"network of the slice's arch, the same KD from the same stored logits, the same epochs. Δ: slice "
             f"minus standalone on the same test images, 95% paired interval.", "",
             "| width | channels | params | MACs | slice test | standalone test | Δ (pt) [95% CI] | standalone s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        d = row["slice_minus_alone"]
        lines.append(f"| {row['width']} | {row['channels']} | {row['params']:,} | {row['macs']:,} | "
                     f"{100 * row['slice_test']:.2f}% | {100 * row['alone_test']:.2f}% | {100 * d['diff']:+.2f} "
                     f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {row['alone_seconds']:.1f} |")
    lines += ["", f"Cost: the elastic student {e['seconds']:.0f} s of training (all its slices) against "
                  f"{r['alone_seconds_total']:.0f} s for the {len(r['rows'])} widths alone "
                  f"({e['seconds'] / max(r['alone_seconds_total'], 1e-9):.2f}x); the soft targets "
                  f"({r['soft_targets_seconds']:.0f} s to {'compute' if r['data']['limit'] else 'load'}) serve both."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
