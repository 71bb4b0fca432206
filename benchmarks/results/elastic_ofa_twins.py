"""One-off: the standalone twins (widths 0.5, 1.0, 1.5 of the elastic arch) at a given weight decay, as
benchmarks/elastic_ofa.py's run_alone trains them; val and test accuracy per seed."""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # benchmarks/, for harness
import harness  # noqa: E402

from edgecompress.config import read  # noqa: E402
from edgecompress.models import build_model  # noqa: E402
from edgecompress.training.distill import DistillConfig  # noqa: E402
from edgecompress.training.elastic import ElasticConfig, elastic_net  # noqa: E402
from edgecompress.training.elastic_net import extract  # noqa: E402
from edgecompress.training.ensemble import ensemble_kd_loss  # noqa: E402
from edgecompress.training.loop import crop_fill, predict_logits, tensors  # noqa: E402
from edgecompress.training.soft_targets import fit_on_soft_targets, response  # noqa: E402


def main() -> None:
    seeds = [int(s) for s in sys.argv[1].split(",")]
    wd, out = float(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(2)
    params = harness.load_params()
    distill, cfg = read(params, "distill", DistillConfig), read(params, "elastic", ElasticConfig)
    widths = (0.5, 1.0, 1.5)
    train = dataclasses.replace(cfg.train, weight_decay=wd)
    cfg = dataclasses.replace(cfg, enabled=True, slices=widths, train=train)
    ds = harness.load_data(params)
    t = tensors(ds)
    x, y = t["train"]
    sources, st = harness.teachers_and_targets(params, "models", ds, x, None)
    logits = st.select(sources, x, "twins")
    loss = ensemble_kd_loss(cfg.temperature, cfg.alpha, train.label_smoothing)
    net = elastic_net(ds, distill, cfg)
    archs = [extract(net, net.spec(w))[1] for w in widths]
    acc = lambda m, s: float((predict_logits(m, t[s][0]).argmax(1) == t[s][1].numpy()).mean())  # noqa: E731
    rows = []
    for seed in seeds:
        row = {"seed": seed, "wd": wd, "alone": {}}
        for w, arch in zip(widths, archs):
            torch.manual_seed(seed)
            alone = build_model(arch)
            t0 = time.time()
            fit_on_soft_targets(alone, x, y, dataclasses.replace(train, seed=seed), logits, st,
                                response(loss, ensemble=True), crop_fill(ds), name=f"alone-{w}")
            row["alone"][w] = {"val": acc(alone, "val"), "test": acc(alone, "test"), "seconds": time.time() - t0}
        print(seed, {w: (round(v["val"], 4), round(v["test"], 4), round(v["seconds"])) for w, v in row["alone"].items()},
              flush=True)
        rows.append(row)
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
