"""One-off experiment: slices of the elastic student briefly fine-tuned alone after extraction (or, with "-",
the slices as extracted, optionally at another elastic weight decay).

For each seed: the elastic student trained as elastic_ofa.py trains it, each width extracted and recalibrated,
then each slice fine-tuned on a fraction of one epoch by the standalone students' distillation (the same stored
logits), one-cycle at a small peak lr, BatchNorm recalibrated again; val and test of every variant.
"""

from __future__ import annotations

import copy
import sys
import dataclasses
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # benchmarks/, for harness
import harness

from edgecompress.config import read
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic import ElasticConfig, elastic_net, extract_slices, train_elastic
from edgecompress.training.elastic_net import recalibrate_bn
from edgecompress.training.ensemble import ensemble_kd_loss
from edgecompress.training.loop import crop_fill, make_optimizer, predict_logits, tensors
from edgecompress.training.soft_targets import view_images


def finetune(model, x, y, logits, st, fill, loss_fn, frac, lr, seed, cfg):
    n = len(x)
    images = view_images(x, st.seed, st.views, st.pad, st.flip, fill)
    gen = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(n, generator=gen)[: int(frac * n)]
    steps = (len(order) + cfg.batch_size - 1) // cfg.batch_size
    tc = dataclasses.replace(cfg, epochs=1, lr=lr)
    opt, sched = make_optimizer(list(model.parameters()), tc, steps)
    model.train()
    t0 = time.time()
    for i in range(0, len(order), cfg.batch_size):
        ib = order[i:i + cfg.batch_size]
        v = torch.randint(0, st.views, (len(ib),), generator=gen)
        xv = images[v * n + ib].contiguous(memory_format=torch.channels_last)
        t = logits[v, :, ib].transpose(0, 1)
        loss = loss_fn(model(xv), t, y[ib])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.time() - t0


def main() -> None:
    seeds = [int(s) for s in sys.argv[1].split(",")]
    # frac:lr pairs, or "-" for none (the slices as extracted); argv[4]: elastic.train.weight_decay instead of params'
    variants = [tuple(float(v) for v in p.split(":")) for p in sys.argv[2].split(",")] if sys.argv[2] != "-" else []
    out = sys.argv[3]
    torch.set_num_threads(2)
    params = harness.load_params()
    distill, cfg = read(params, "distill", DistillConfig), read(params, "elastic", ElasticConfig)
    widths = (0.5, 1.0, 1.5)
    cfg = dataclasses.replace(cfg, enabled=True, slices=widths)
    if len(sys.argv) > 4:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, weight_decay=float(sys.argv[4])))
    ds = harness.load_data(params)
    t = tensors(ds)
    x, y = t["train"]
    sources, st = harness.teachers_and_targets(params, "models", ds, x, None)
    logits = st.select(sources, x, "ofa_ft")
    loss_fn = ensemble_kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    fill = crop_fill(ds)
    calib = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.train.seed))[:cfg.recalibration_images]]
    acc = lambda m, s: float((predict_logits(m, t[s][0]).argmax(1) == t[s][1].numpy()).mean())  # noqa: E731
    rows = []
    for seed in seeds:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        net = elastic_net(ds, distill, c)
        t0 = time.time()
        train_elastic(net, x, y, c, logits, st, fill, distill.source == "ensemble")
        e_s = time.time() - t0
        slices = extract_slices(net, [net.spec(w) for w in widths], ds, c, t)
        row = {"seed": seed, "elastic_s": e_s, "slice": {}, "ft": {}}
        for w, s in zip(widths, slices):
            row["slice"][w] = {"val": acc(s.model, "val"), "test": acc(s.model, "test")}
        print(seed, "elastic", round(e_s), row["slice"], flush=True)
        for frac, lr in variants:
            key = f"{frac}:{lr}"
            row["ft"][key] = {}
            for w, s in zip(widths, slices):
                m = copy.deepcopy(s.model)
                ft_s = finetune(m, x, y, logits, st, fill, loss_fn, frac, lr, seed, c.train)
                recalibrate_bn(m, calib)
                row["ft"][key][w] = {"val": acc(m, "val"), "test": acc(m, "test"), "seconds": ft_s}
            print(seed, key, {w: (round(v["val"], 4), round(v["test"], 4), round(v["seconds"])) for w, v in row["ft"][key].items()}, flush=True)
        rows.append(row)
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
