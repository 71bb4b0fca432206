"""Active learning on Fashion-MNIST: how many labels each strategy needs to reach random sampling's accuracy.

    python benchmarks/active_learning.py [--seeds 3] [--pool 10000] [--steps 300] [--out benchmarks/results/active_learning.md]

Each run starts from 200 class-balanced random labels out of an unlabeled pool (a seeded subset of the
training split), then adds labels in rounds up to 3,000; every round a small CNN (two convolutions,
dropout before its classifier) is trained from scratch on the labels so far and scored on the whole
test set, and the strategy (``edgecompress.active.strategies``, the code ``edgecompress select`` runs)
picks the next images from what that network says about the pool:

* random; entropy of the prediction; BALD with MC dropout (10 passes); BALD with a deep ensemble of
  3 networks trained on the same labels (the accuracy reported is member 0's, one network like every
  other row, so the curves compare what the labels are worth, not ensembling); k-center (core-set) on
  the network's pooled features; BADGE (k-means++ on gradient embeddings).

Writes the table (accuracy at every label count, mean and spread over seeds; labels needed to reach
fixed accuracies, both interpolated between rounds and as the first round whose measured accuracy gets
there), the learning-curve plot (SVG: mean, band = min..max over seeds) and a JSON of
every run.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import harness
from harness import ROOT

from edgecompress.active.select import SelectConfig, score_pool
from edgecompress.active.strategies import choose
from edgecompress.deploy.runner import fingerprint
from edgecompress.fileio import write_text

SCHEDULE = (200, 400, 700, 1000, 1500, 2000, 3000)
STRATEGIES = {  # benchmark name -> (library strategy, ensemble size)
    "random": ("random", 1), "entropy": ("entropy", 1), "bald-mc-dropout": ("bald", 1),
    "bald-ensemble": ("bald", 3), "kcenter": ("kcenter", 1), "badge": ("badge", 1)}


class SmallCNN(nn.Module):
    """conv16-pool-conv32-pool-fc64-dropout-fc10 (1.1M MACs): trains in seconds on a few thousand images."""

    def __init__(self, classes: int = 10, channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """A fresh SmallCNN trained ``steps`` Adam steps of 64 images (fixed work per round, whatever the labels)."""
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.cat([model(x[i:i + 2000]).argmax(1) for i in range(0, len(x), 2000)]) == y).float().mean())


def run(name: str, seed: int, ds: Any, pool_size: int, steps: int) -> dict[str, Any]:
    strategy, members = STRATEGIES[name]
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(ds.train.y))[:pool_size]
    x_pool = torch.from_numpy(ds.normalize(ds.train.x[pool]))
    y_pool = torch.from_numpy(ds.train.y[pool]).long()
    x_test, y_test = torch.from_numpy(ds.normalize(ds.test.x)), torch.from_numpy(ds.test.y).long()
    per_class = SCHEDULE[0] // ds.num_classes  # class-balanced start, as a person labelling a first batch would
    labeled = np.concatenate([rng.choice(np.flatnonzero(ds.train.y[pool] == c), per_class, replace=False)
                              for c in range(ds.num_classes)])
    curve, t0 = [], time.time()
    cfg = SelectConfig(strategy=strategy, budget=1, mc_samples=10, seed=seed)
    for r, n in enumerate(SCHEDULE):
        nets = [train(x_pool[labeled], y_pool[labeled], steps, seed * 1000 + r * 10 + m) for m in range(members)]
        curve.append({"labels": int(len(labeled)), "accuracy": accuracy(nets[0], x_test, y_test)})
        if r + 1 == len(SCHEDULE):
            break
        rest = np.setdiff1d(np.arange(pool_size), labeled)
        k = SCHEDULE[r + 1] - n
        scored = score_pool(nets, x_pool[rest], replace(cfg, budget=k), labeled=x_pool[labeled])
        picked, _ = choose(strategy, scored, k, seed * 100 + r)
        labeled = np.concatenate([labeled, rest[picked]])
    print(f"[active-learning] {name} seed {seed}: " + ", ".join(f"{c['labels']}:{100 * c['accuracy']:.1f}"
                                                              for c in curve) + f" ({time.time() - t0:.0f} s)",
          flush=True)
    return {"strategy": name, "seed": seed, "curve": curve, "seconds": round(time.time() - t0, 1)}


def labels_to_reach(curve: list[dict[str, Any]], acc: float) -> float | None:
    """Labels at which the curve first reaches ``acc`` (linear between rounds); None if it never does."""
    prev = None
    for c in curve:
        if c["accuracy"] >= acc:
            if prev is None:
                return float(c["labels"])
            f = (acc - prev["accuracy"]) / (c["accuracy"] - prev["accuracy"])
            return prev["labels"] + f * (c["labels"] - prev["labels"])
        prev = c
    return None


def first_round_reaching(curve: list[dict[str, Any]], acc: float) -> int | None:
    """Labels of the first round whose measured accuracy reaches ``acc`` (no interpolation); None if none does."""
    return next((int(c["labels"]) for c in curve if c["accuracy"] >= acc), None)


def svg_plot(stats: dict[str, Any], path: Path) -> None:
    """Accuracy vs labels, one line per strategy (mean over seeds) and a band from min to max."""
    w, h, ml, mr, mt, mb = 720, 440, 60, 150, 20, 45
    accs = [a for s in stats.values() for a in s["min"] + s["max"]]
    lo, hi = np.floor(min(accs) * 50) / 50, np.ceil(max(accs) * 50) / 50
    sx = lambda v: ml + (v - SCHEDULE[0]) / (SCHEDULE[-1] - SCHEDULE[0]) * (w - ml - mr)  # noqa: E731
    sy = lambda v: mt + (hi - v) / (hi - lo) * (h - mt - mb)  # noqa: E731
    colours = ["#444444", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for a in np.arange(lo, hi + 1e-9, 0.02):
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{sy(a):.1f}" y2="{sy(a):.1f}" stroke="#ddd"/>'
                   f'<text x="{ml - 6}" y="{sy(a) + 4:.1f}" text-anchor="end">{100 * a:.0f}%</text>')
    for n in (200, 1000, 2000, 3000):
        out.append(f'<text x="{sx(n):.1f}" y="{h - mb + 16}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 8}" text-anchor="middle">labels</text>')
    out.append(f'<text x="14" y="{(mt + h - mb) / 2}" transform="rotate(-90 14 {(mt + h - mb) / 2})" '
               f'text-anchor="middle">test accuracy (10,000 images)</text>')
    for i, (name, s) in enumerate(stats.items()):
        col = colours[i % len(colours)]
        band = [(sx(n), sy(a)) for n, a in zip(SCHEDULE, s["max"])] + \
               [(sx(n), sy(a)) for n, a in zip(reversed(SCHEDULE), reversed(s["min"]))]
        out.append(f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in band)}" fill="{col}" opacity="0.12"/>')
        line = " ".join(f"{sx(n):.1f},{sy(a):.1f}" for n, a in zip(SCHEDULE, s["mean"]))
        out.append(f'<polyline points="{line}" fill="none" stroke="{col}" stroke-width="2"/>')
        out.append(f'<line x1="{w - mr + 10}" x2="{w - mr + 30}" y1="{mt + 10 + 18 * i}" y2="{mt + 10 + 18 * i}" '
                   f'stroke="{col}" stroke-width="3"/><text x="{w - mr + 36}" y="{mt + 14 + 18 * i}">{name}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pool", type=int, default=10000, help="unlabeled pool size (a seeded subset of the train split)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of 64 images per training")
    p.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    harness.add_limit(p, help="data.limit (a quick look; the report says so)")
    harness.add_out(p, ROOT / "benchmarks/results/active_learning.md")
    p.add_argument("--from-json", help="re-render the report of a finished run (its .json) without training")
    a, bench = harness.parse(p, argv)
    torch.set_num_threads(2)
    t0 = time.time()
    ds = harness.load_data(limit=a.limit)  # the library's default data (Fashion-MNIST), not params.yaml's
    pool = min(a.pool, len(ds.train.y))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # the plot is written before the results
    runs: list[dict[str, Any]] = []
    prior = None
    if a.from_json:  # re-render a finished run's report (its curves), no training
        saved = json.loads(Path(a.from_json).read_text())
        prior = saved.get("provenance")
        runs, minutes = saved["runs"], saved.get("minutes", 0.0)
        pool, steps = saved.get("pool", pool), saved.get("steps", a.steps)  # older files lack them: the defaults
    else:
        steps = a.steps
    for seed in range(0 if a.from_json else a.seeds):
        for s in a.strategies:
            runs.append(run(s, seed, ds, pool, a.steps))
            write_text(out.with_suffix(".partial.json"), json.dumps(runs) + "\n")  # a stopped run keeps its curves
    if not a.from_json:
        minutes = (time.time() - t0) / 60
    seeds = len({r["seed"] for r in runs})
    stats: dict[str, Any] = {}
    for s in a.strategies:
        accs = np.array([[c["accuracy"] for c in r["curve"]] for r in runs if r["strategy"] == s])
        stats[s] = {"mean": accs.mean(0).tolist(), "min": accs.min(0).tolist(), "max": accs.max(0).tolist(),
                    "std": accs.std(0).tolist()}
    svg_plot(stats, out.with_suffix(".svg"))
    random_final = stats["random"]["mean"][-1] if "random" in stats else None
    targets = [0.80, 0.82, 0.84] + ([random_final] if random_final else [])
    fp = (saved.get("fingerprint") or fingerprint()) if a.from_json else fingerprint()  # the curves' machine
    rendered = saved.get("rendered") if a.from_json else None  # a re-render of a re-render keeps the first's
    if a.from_json and not rendered:
        unrecorded = "" if prior else "; its date, command and commit were not recorded"
        rendered = {"from_json": a.from_json,
                    "note": f"the curves of that run, every figure derived from them again, no training{unrecorded}"}
    when = f"Re-rendered from `{rendered['from_json']}` ({rendered['note']})" if rendered else \
        time.strftime("%Y-%m-%d")
    lines = ["# Active learning on Fashion-MNIST", "",
             f"{when}, {fp['cpu_model']}, {fp['cores']} cores; pool {pool:,} unlabeled training "
             f"images{' (data.limit ' + str(a.limit) + ')' if a.limit else ''}, test {len(ds.test.y):,}; {seeds} seeds; "
             f"SmallCNN retrained from scratch each round ({steps} Adam steps of 64); "
             f"`python benchmarks/active_learning.py`; {minutes:.1f} min in all.", "",
             "Test accuracy (mean ± std over seeds) by number of labels:", "",
             "| strategy | " + " | ".join(f"{n:,}" for n in SCHEDULE) + " |", "|---|" + "---|" * len(SCHEDULE)]
    for s, st in stats.items():
        lines.append(f"| {s} | " + " | ".join(f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(st["mean"], st["std"]))
                     + " |")
    head = [f"{100 * t:.2f}%" for t in targets[:3]] + ([f"{100 * random_final:.2f}% (random at 3,000)"]
                                                         if random_final else [])
    lines += ["", "Labels needed to reach an accuracy on the mean curve: interpolated between rounds, and in "
                  "brackets the first round whose measured accuracy reaches it (— = not reached by 3,000):", "",
              "| strategy | " + " | ".join(head) + " |", "|---|" + "---|" * len(targets)]
    curves = {s: [{"labels": n, "accuracy": m} for n, m in zip(SCHEDULE, st["mean"])] for s, st in stats.items()}
    need = {s: [labels_to_reach(c, t) for t in targets] for s, c in curves.items()}
    need_rounds = {s: [first_round_reaching(c, t) for t in targets] for s, c in curves.items()}
    for s, ns in need.items():
        lines.append(f"| {s} | " + " | ".join("—" if v is None else f"{v:,.0f} ({r:,})"
                                              for v, r in zip(ns, need_rounds[s])) + " |")
    if random_final:
        best = min(((v[3], s) for s, v in need.items() if s != "random" and v[3] is not None), default=None)
        if best:
            measured = need_rounds[best[1]][3]
            verdict = (f"Best: {best[1]} reaches random's 3,000-label accuracy ({100 * random_final:.2f}%) with "
                       f"{best[0]:,.0f} labels interpolated, {100 * best[0] / 3000:.0f}% of random's (goal: at most "
                       f"60%); its first measured round at or above it is {measured:,} labels, "
                       f"{100 * measured / 3000:.0f}% of random's.")
        else:
            verdict = "No strategy reached random's 3,000-label accuracy within 3,000 labels."
        lines += ["", verdict]
    lines += ["", f"![learning curves]({out.with_suffix('.svg').name})"]
    payload = {"schedule": SCHEDULE, "runs": runs, "stats": stats, "minutes": minutes, "pool": pool, "steps": steps,
               "seeds": seeds, "need": {s: dict(zip(map(str, targets), v)) for s, v in need.items()},
               "need_first_round": {s: dict(zip(map(str, targets), v)) for s, v in need_rounds.items()},
               "fingerprint": fp}
    if rendered:
        payload["rendered"] = rendered
    if a.from_json and prior:
        payload["provenance"] = prior  # the run whose curves these are
    harness.write_results(out.with_suffix(".json"), payload, bench, markdown="\n".join(lines) + "\n", md_path=out)
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
