"""The once-for-all claim, measured: slices of one elastic student vs the same widths trained alone.

In ONE run, on the data of params.yaml's data section, from the teachers' stored soft targets (the distill
stage's models/soft_targets.npz; with --limit they are recomputed for the subset from models/teacher.pt and
the members, distill.views views):
  - the elastic student (params' elastic section, --epochs overriding elastic.train.epochs) trained once,
    timed, then each of --widths extracted and its BatchNorm statistics recalibrated; with progressive
    shrinking (elastic.largest_epochs > 0) its training is the largest-only phase plus the sandwich phase;
  - each of those widths trained alone, a fresh MobileNet of exactly the slice's arch, by the same
    distillation (ensemble KD from the same stored logits, elastic.temperature/alpha, elastic.train with
    the same epochs in total: largest_epochs + epochs), timed.
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

from edgecompress.config import read
from edgecompress.fileio import read_json
from edgecompress.log import get_logger
from edgecompress.models import build_model, count_macs, count_params
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic import ElasticConfig, elastic_net, extract_slices, sandwich_loss, train_elastic
from edgecompress.training.elastic_net import extract
from edgecompress.training.ensemble import ensemble_kd_loss
from edgecompress.training.loop import crop_fill, predict_logits, tensors
from edgecompress.training.soft_targets import fit_on_soft_targets, response, view_images


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t, 95% two-sided, by df


def log(msg: str) -> None:
    get_logger("elastic_ofa").info(msg)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of the per-image difference of two 0/1 correctness vectors (a - b) and its 95% normal interval."""
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half), "n": len(d)}


def paired_step_cost(net: Any, cfg: ElasticConfig, alone: list[torch.nn.Module], images: torch.Tensor,
                     y: torch.Tensor, logits: torch.Tensor, views: int, loss: Any, rounds: int,
                     steps: int) -> dict[str, Any]:
    """Training cost side by side, A B A B: each round times ``steps`` optimiser steps of the elastic recipe
    (its sandwich step) and then ``steps`` steps of each standalone network, on the same real batches (stored
    views and logits); the ratio per round is elastic / sum of the standalone ones. Step for step, so slow
    spells of a shared machine hit both sides of a round alike (whole-run seconds drift by 20% here)."""
    n, bs = len(y), cfg.train.batch_size
    sandwich = sandwich_loss(net, cfg, ensemble=True, label_smoothing=cfg.train.label_smoothing, seed=cfg.train.seed)
    alone_loss = response(loss, ensemble=True)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in [net, *alone]}
    g = torch.Generator().manual_seed(0)

    def timed(model: torch.nn.Module, fn: Any, step0: int) -> float:
        model.to(memory_format=torch.channels_last).train()  # as fit() trains it
        t0 = time.perf_counter()
        for k in range(steps):
            ib = torch.randint(0, n, (bs,), generator=g)
            v = torch.randint(0, views, (bs,), generator=g)
            xb = images[v * n + ib].contiguous(memory_format=torch.channels_last)
            value, _ = fn(model, xb, logits[v, :, ib].transpose(0, 1), y[ib], step0 + k, 0)
            opts[id(model)].zero_grad(set_to_none=True)
            value.backward()
            opts[id(model)].step()
        return time.perf_counter() - t0

    rows = []
    for r in range(rounds):
        e = timed(net, sandwich, r * steps)  # the step index drives random_every, as in training
        a = [timed(m, alone_loss, 0) for m in alone]
        rows.append({"elastic_s": e, "alone_s": a, "ratio": e / sum(a)})
        log(f"cost round {r + 1}: elastic {e:.2f} s, alone {sum(a):.2f} s ({e / sum(a):.2f}x)")
    ratios = sorted(row["ratio"] for row in rows)
    return {"rounds": rows, "steps": steps, "ratio_median": float(np.median(ratios)),
            "ratio_min": ratios[0], "ratio_max": ratios[-1]}


def arithmetic_cost(net: Any, cfg: ElasticConfig, widths: tuple[float, ...], shape: tuple[int, ...],
                    draws: int = 256) -> dict[str, Any]:
    """Forward multiply-accumulates per optimiser step, machine-independent (a backward pass costs about twice
    its forward on either side, so the ratio carries over): the recipe's largest and smallest every step plus
    random_subnets / random_every random sub-networks (their mean over ``draws`` seeded draws), against one
    step of each of ``widths`` trained alone."""
    cache: dict[Any, int] = {}

    def macs(spec: Any) -> int:
        if spec not in cache:
            cache[spec] = int(count_macs(extract(net, spec)[0], shape) or 0)
        return cache[spec]

    gen = torch.Generator().manual_seed(cfg.train.seed)
    rand = float(np.mean([macs(net.sample(gen, cfg.elastic_depth, cfg.sample == "per_stage"))
                          for _ in range(draws)])) if cfg.random_subnets else 0.0
    elastic = macs(net.largest()) + macs(net.smallest(cfg.elastic_depth)) + cfg.random_subnets / cfg.random_every * rand
    alone = sum(macs(net.spec(w)) for w in widths)
    return {"elastic_macs": elastic, "alone_macs": alone, "ratio": elastic / alone}


def _arithmetic_line(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return []
    return ["", f"Arithmetic per optimiser step (forward MACs, machine-independent): elastic recipe "
                f"{a['elastic_macs'] / 1e6:.2f} M against {a['alone_macs'] / 1e6:.2f} M for the widths alone: "
                f"**{a['ratio']:.2f}x**."]


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    harness.add_params(ap)
    ap.add_argument("--models", default="models", help="teacher.pt, members/, soft_targets.npz")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of every run (default elastic.train.epochs)")
    ap.add_argument("--widths", default="0.5,1.0,2.0", help="the slices compared with standalone training")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cost-rounds", type=int, default=5, help="paired A B rounds of the per-step cost (0: skip)")
    ap.add_argument("--whole-rounds", type=int, default=1,
                    help="train both sides this many times, alternating which goes first (whole-run seconds, A B B A)")
    ap.add_argument("--seeds", default=None,
                    help="comma-separated training seeds, one round each (overrides --whole-rounds): slice minus "
                         "alone over seeds, with training noise")
    ap.add_argument("--combine", default=None,
                    help="comma-separated results JSON files of one recipe to merge (their rounds, over all seeds); "
                         "no training")
    ap.add_argument("--cost-steps", type=int, default=60, help="optimiser steps a side per round")
    ap.add_argument("--cost-only", action="store_true",
                    help="only the paired per-step cost, on freshly initialised networks (no training)")
    ap.add_argument("--random-every", type=int, default=None,
                    help="override elastic.random_every: the random sub-network joins every Nth step")
    ap.add_argument("--name", default=None, help="results file stem (default elastic_ofa[_limitN])")
    harness.add_limit(ap, help="subsample the data (a 1/5-size run: --limit 12000); soft targets recomputed")
    harness.add_out(ap, "benchmarks/results")
    args, bench = harness.parse(ap, argv)
    if args.combine:
        combine(args.combine.split(","), bench, Path(args.out), args.name or "elastic_ofa_combined")
        return
    torch.set_num_threads(args.threads)
    params = harness.load_params(args.params)
    distill, cfg = read(params, "distill", DistillConfig), read(params, "elastic", ElasticConfig)
    widths = tuple(float(w) for w in args.widths.split(","))
    train = dataclasses.replace(cfg.train, epochs=args.epochs or cfg.train.epochs)
    cfg = dataclasses.replace(cfg, enabled=True, train=train, slices=widths,
                              random_every=args.random_every or cfg.random_every)
    ds = harness.load_data(params, limit=args.limit, where=args.params)
    t = tensors(ds)
    x, y = t["train"]
    models = Path(args.models)
    t0 = time.time()
    sources, st = harness.teachers_and_targets(params, models, ds, x, args.limit)
    logits = st.select(sources, x, "elastic_ofa")
    targets_seconds = time.time() - t0
    ensemble = distill.source == "ensemble"

    net = elastic_net(ds, distill, cfg)
    arithmetic = arithmetic_cost(net, cfg, widths, tuple(x.shape[1:]))
    if args.cost_only:  # the step cost does not depend on the weights: fresh networks, no training
        cost_only(args, bench, net, cfg, widths, x, y, logits, st, crop_fill(ds), arithmetic)
        return
    loss = ensemble_kd_loss(cfg.temperature, cfg.alpha, train.label_smoothing)
    alone_train = dataclasses.replace(train, epochs=train.epochs + cfg.largest_epochs)  # as many epochs in all
    x_test, y_test = t["test"]

    def run_elastic(seed: int) -> tuple[Any, list[Any], list[dict[str, float]], float]:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        net = elastic_net(ds, distill, c)  # fresh, seeded: a round with the same seed trains the same network
        t0 = time.time()
        history = train_elastic(net, x, y, c, logits, st, crop_fill(ds), ensemble)
        seconds = time.time() - t0
        log(f"elastic (seed {seed}): {seconds:.0f} s for {train.epochs} epochs")
        return net, extract_slices(net, [net.spec(w) for w in widths], ds, c, t), history, seconds

    def run_alone(archs: list[dict[str, Any]], seed: int) -> tuple[list[torch.nn.Module], list[float]]:
        models, seconds = [], []
        for w, arch in zip(widths, archs):
            torch.manual_seed(seed)
            alone = build_model(arch)  # a fresh network of exactly the slice's architecture
            t0 = time.time()
            fit_on_soft_targets(alone, x, y, dataclasses.replace(alone_train, seed=seed), logits, st,
                                response(loss, ensemble=True), crop_fill(ds), name=f"alone-{w}")
            models.append(alone)
            seconds.append(time.time() - t0)
            log(f"width {w} alone (seed {seed}): {seconds[-1]:.0f} s")
        return models, seconds

    # Whole-run seconds, A B B A ...: the first round trains the elastic student first, the next the widths
    # alone first, so a slow spell of a shared machine does not land on one side only. Each round has its
    # seed (--seeds): training noise (init, batch order, views) is then measured, not only test-image noise.
    archs = [extract(net, net.spec(w))[1] for w in widths]
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [train.seed] * args.whole_rounds
    whole: list[dict[str, Any]] = []

    def test_hits(model: torch.nn.Module) -> np.ndarray:
        return predict_logits(model, x_test).argmax(1) == y_test.numpy()

    for r, seed in enumerate(seeds):
        if r % 2 == 0:
            net, slices, history, e_s = run_elastic(seed)
            alone_models, a_s = run_alone(archs, seed)
        else:
            alone_models, a_s = run_alone(archs, seed)
            net, slices, history, e_s = run_elastic(seed)
        hits = [(test_hits(s.model), test_hits(m)) for s, m in zip(slices, alone_models)]
        whole.append({"seed": seed, "order": "elastic first" if r % 2 == 0 else "alone first", "elastic_s": e_s,
                      "alone_s": a_s, "ratio": e_s / sum(a_s), "epoch_seconds": [h["seconds"] for h in history],
                      "slice_test": [float(a.mean()) for a, _ in hits], "alone_test": [float(b.mean()) for _, b in hits],
                      "slice_minus_alone": [paired(a, b) for a, b in hits]})
        log(f"round {r + 1} (seed {seed}): elastic {e_s:.0f} s, alone {sum(a_s):.0f} s ({e_s / sum(a_s):.2f}x); "
            "slice - alone " + ", ".join(f"{100 * d['diff']:+.2f}" for d in whole[-1]["slice_minus_alone"]) + " pt")
    rows: list[dict[str, Any]] = []
    for i, (w, s) in enumerate(zip(widths, slices)):
        diffs = over_seeds(whole, i)["diffs"]
        rows.append({"width": w, "name": s.name, "channels": s.arch["channels"], "params": count_params(s.model),
                     "macs": s.report["macs"], "slice_test": whole[-1]["slice_test"][i],
                     "alone_test": whole[-1]["alone_test"][i], "slice_minus_alone": whole[-1]["slice_minus_alone"][i],
                     "alone_seconds": whole[-1]["alone_s"][i],
                     "over_seeds": over_seeds(whole, i)})
        log(f"width {w}: slice - alone over rounds {', '.join(f'{100 * d:+.2f}' for d in diffs)} pt")
    elastic_seconds = whole[-1]["elastic_s"]
    cost = None
    if args.cost_rounds:
        images = view_images(x, st.seed, st.views, st.pad, st.flip, crop_fill(ds))
        cost = paired_step_cost(net, cfg, alone_models, images, y, logits, st.views, loss, args.cost_rounds,
                                args.cost_steps)
    report = {"data": {"limit": args.limit, "train": len(ds.train), "test": len(ds.test)},
              "epochs": alone_train.epochs,
              "elastic": {"widths": list(cfg.widths), "random_subnets": cfg.random_subnets, "sample": cfg.sample,
                          "random_every": cfg.random_every,
                          "inplace": cfg.inplace,
                          "largest_epochs": cfg.largest_epochs, "sandwich_epochs": train.epochs,
                          "shrink_lr": cfg.shrink_lr,
                          "seconds": elastic_seconds, "epoch_seconds": [h["seconds"] for h in history]},
              "soft_targets_seconds": targets_seconds, "rows": rows,
              "alone_seconds_total": sum(r["alone_seconds"] for r in rows), "step_cost": cost,
              "whole_runs": whole,
              "arithmetic_cost": arithmetic}
    out = Path(args.out)
    name = args.name or ("elastic_ofa" if not args.limit else f"elastic_ofa_limit{args.limit}")
    harness.write_results(out / f"{name}.json", report, bench, markdown=markdown(report), md_path=out / f"{name}.md")
    print(markdown(report))


def cost_only(args: Any, bench: Any, net: Any, cfg: ElasticConfig, widths: tuple[float, ...],
              x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, st: Any, fill: torch.Tensor,
              arithmetic: dict[str, Any]) -> None:
    """The paired per-step cost alone: the elastic recipe's step against each width's own step, written to
    <name>_cost.{json,md}."""
    torch.manual_seed(cfg.train.seed)
    alone = [build_model(extract(net, net.spec(w))[1]) for w in widths]
    loss = ensemble_kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    images = view_images(x, st.seed, st.views, st.pad, st.flip, fill)
    cost = paired_step_cost(net, cfg, alone, images, y, logits, st.views, loss, args.cost_rounds,
                            args.cost_steps) if args.cost_rounds else None
    report = {"widths": list(widths), "elastic": {"widths": list(cfg.widths), "random_subnets": cfg.random_subnets,
                                                 "sample": cfg.sample, "random_every": cfg.random_every},
              "step_cost": cost, "arithmetic_cost": arithmetic, "threads": args.threads}
    md = (f"# Once-for-all training cost per step\n\nThe elastic recipe (widths {cfg.widths}, the largest and the "
          f"smallest every step, {cfg.random_subnets} random sub-network every {cfg.random_every} step(s), sample "
          f"{cfg.sample}) against widths {list(widths)} each trained alone.\n")
    if cost:
        per = ", ".join(f"{r['ratio']:.2f}" for r in cost["rounds"])
        md += (f"\nSide by side: {cost['steps']} optimiser steps a side per round, A B A B, on the same real batches "
               f"(stored views and logits), {args.threads} threads, freshly initialised networks in channels-last "
               f"as training runs them (the step cost does not depend on the weights).\n\n"
               f"| round | elastic s | alone s (per width) | elastic / alone |\n|---|---|---|---|\n"
               + "".join(f"| {i + 1} | {r['elastic_s']:.2f} | {sum(r['alone_s']):.2f} ("
                         f"{', '.join(f'{a:.2f}' for a in r['alone_s'])}) | {r['ratio']:.2f} |\n"
                         for i, r in enumerate(cost["rounds"]))
               + f"\nMedian **{cost['ratio_median']:.2f}x** ({cost['ratio_min']:.2f}-{cost['ratio_max']:.2f}; "
                 f"per round {per}).\n")
    md += "\n".join(_arithmetic_line(arithmetic)) + "\n"
    out = Path(args.out)
    name = f"{args.name or 'elastic_ofa'}_cost"
    harness.write_results(out / f"{name}.json", report, bench, markdown=md, md_path=out / f"{name}.md")
    print(md)


def _schedule(e: dict[str, Any]) -> str:
    """Progressive shrinking's phases in words ('' without them: older results files have no such keys)."""
    if not e.get("largest_epochs"):
        return ""
    return (f"progressive shrinking: the largest alone {e['largest_epochs']} epochs, channels sorted by |BN gamma|, "
            f"then {e['sandwich_epochs']} epochs (peak lr {e['shrink_lr'] or 'train.lr'}) of the ")


def _sampling(e: dict[str, Any]) -> str:
    words = [w for w, on in (("one width for the whole network, between the extremes", e.get("sample") == "uniform"),
                              (f"every {e.get('random_every')} steps", (e.get("random_every") or 1) > 1)) if on]
    return f" ({'; '.join(words)})" if words else ""


def _whole_lines(whole: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """Whole-run rounds (A B B A) as a table, with the median ratio, and slice minus alone per seed; nothing for a
    single round."""
    if len(whole) < 2:
        return []
    ratios = sorted(w["ratio"] for w in whole)
    seeds = [w.get("seed") for w in whole]
    lines = ["", "Whole-run training seconds, side by side (each round trains both sides from scratch; the order "
                 "alternates, A B B A):", "", "| round | seed | order | elastic s | alone s (per width) | elastic / alone |",
             "|---|---|---|---|---|---|"] + [
        f"| {i + 1} | {w.get('seed', '')} | {w['order']} | {w['elastic_s']:.0f} | {sum(w['alone_s']):.0f} "
        f"({', '.join(f'{a:.0f}' for a in w['alone_s'])}) | {w['ratio']:.2f} |" for i, w in enumerate(whole)] + [
        "", f"Median **{float(np.median(ratios)):.2f}x** ({ratios[0]:.2f}-{ratios[-1]:.2f})."]
    if len(set(seeds)) == 1:
        same = all(w["slice_test"] == whole[0]["slice_test"] and w["alone_test"] == whole[0]["alone_test"]
                   for w in whole)
        return lines + [f"Every round's test accuracies {'are the same to the digit (one seed)' if same else 'DIFFER'}."]
    lines += ["", "Slice minus standalone on the test images, per training seed (the first table shows the last "
                  "seed's); the spread over seeds is training noise, which one paired interval does not hold:", "",
              "| width | " + " | ".join(f"seed {sd}" for sd in seeds) + " | mean Δ (pt) | range | 95% t-interval |",
              "|---|" + "---|" * (len(seeds) + 3)]
    for row in rows:
        o = row["over_seeds"]
        half = T95.get(len(o["diffs"]) - 1, 1.96) * float(np.std(o["diffs"], ddof=1)) / math.sqrt(len(o["diffs"]))
        lines.append(f"| {row['width']} | " + " | ".join(f"{100 * d:+.2f}" for d in o["diffs"])
                     + f" | **{100 * o['mean']:+.2f}** | {100 * o['min']:+.2f} to {100 * o['max']:+.2f} | "
                       f"[{100 * (o['mean'] - half):+.2f}, {100 * (o['mean'] + half):+.2f}] |")
    return lines


def over_seeds(whole: list[dict[str, Any]], i: int) -> dict[str, Any]:
    """Slice minus alone of width ``i`` in every round: the per-round differences, their mean and range."""
    diffs = [rnd["slice_minus_alone"][i]["diff"] for rnd in whole]
    return {"seeds": [rnd.get("seed") for rnd in whole], "diffs": diffs, "mean": float(np.mean(diffs)),
            "min": float(min(diffs)), "max": float(max(diffs))}


def combine(paths: list[str], bench: Any, out: Path, name: str) -> None:
    """Several results files of the same recipe (e.g. seeds run as separate invocations) as one: their rounds
    together, each width's slice minus alone over all of them; written to <name>.{json,md}."""
    runs = [read_json(p, "elastic_ofa results") for p in paths]
    first = runs[0]
    whole = [rnd for r in runs for rnd in r["whole_runs"]]
    last = whole[-1]  # the first table shows the last round, as a run's own report does
    rows = [{**row, "slice_test": last["slice_test"][i], "alone_test": last["alone_test"][i],
             "slice_minus_alone": last["slice_minus_alone"][i], "alone_seconds": last["alone_s"][i],
             "over_seeds": over_seeds(whole, i)} for i, row in enumerate(first["rows"])]
    report = {**first, "rows": rows, "whole_runs": whole, "combined_from": paths, "step_cost": None,
              "alone_seconds_total": sum(last["alone_s"]),
              "elastic": {**first["elastic"], "seconds": last["elastic_s"], "epoch_seconds": last["epoch_seconds"]}}
    harness.write_results(out / f"{name}.json", report, bench, markdown=markdown(report), md_path=out / f"{name}.md")
    print(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    e = r["elastic"]
    lines = [f"# Once-for-all slices vs the same widths trained alone ({r['epochs']} epochs each)", "",
             f"Data: {r['data']['train']} training, {r['data']['test']} test images"
             f"{' (--limit ' + str(r['data']['limit']) + ')' if r['data']['limit'] else ''}. The elastic student "
             f"(widths {e['widths']}, {_schedule(e)}sandwich rule with {e['random_subnets']} random sub-networks{_sampling(e)}, "
             f"in-place weight {e['inplace']}) trained once; each slice's BatchNorm statistics recalibrated. Standalone: a fresh "
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
    lines += _whole_lines(r.get("whole_runs") or [], r["rows"])
    c = r.get("step_cost")
    if c:
        per = [f"{x['ratio']:.2f}" for x in c["rounds"]]
        lines += ["", f"Cost per step, side by side ({len(c['rounds'])} rounds, A B A B: {c['steps']} steps of the "
                      f"elastic recipe, then {c['steps']} of each standalone network, the same real batches): "
                      f"elastic / three alone = **{c['ratio_median']:.2f}x** median ({c['ratio_min']:.2f}-"
                      f"{c['ratio_max']:.2f}; per round {', '.join(per)}). Whole-run seconds drift between runs "
                      f"on a shared machine; the paired ratio is the cost figure."]
    lines += _arithmetic_line(r.get("arithmetic_cost"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
