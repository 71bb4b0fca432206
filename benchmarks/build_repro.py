"""Do builds give the same answer twice? Each target built N times from an empty measurement cache on a
quiet machine and N times while CPU-heavy processes run on the same cores, in alternation (quiet, loaded,
quiet, loaded, ...), recording what each build ships and how it decided.

    python benchmarks/build_repro.py [--repeats 5] [--load-procs 1] [--targets host,gpu-server]

Needs the candidate pool (`dvc repro candidates`). The load is ``--load-procs`` Python processes doing
float64 matrix products (one thread each) for the whole loaded build. Results:
benchmarks/results/build_repro.{md,json}.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import ROOT

from edgecompress.deploy.build import MeasurementCache, build_target
from edgecompress.deploy.targets import load_target


def _burn(stop: Any) -> None:
    """A CPU-heavy process: matrix products on one thread until told to stop."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    a = np.random.default_rng(0).random((160, 160))
    while not stop.is_set():
        a = a @ a
        a /= np.abs(a).max()  # bounded values: no overflow, the same work every product


def one(profile: Any, pool: Path) -> dict[str, Any]:
    """One build from an empty cache: what it shipped, its status and how the tie (if any) was broken."""
    with tempfile.TemporaryDirectory(prefix="edgecompress-repro-") as tmp:
        t0 = time.perf_counter()
        record = build_target(profile, pool, Path(tmp) / "out", MeasurementCache(Path(tmp) / "cache"))
        seconds = time.perf_counter() - t0
    chosen = next(c for c in record.candidates if c.fate == "chosen")
    undecided = [c.name for c in record.candidates for w in c.why if "undecided" in w]
    load_changed = [c.name for c in record.candidates if c.rounds]
    return {"chosen": record.chosen.name, "status": record.status, "seconds": round(seconds, 2),
            "device_runs": record.search.device_runs, "why": (record.decision or {}).get("why", ""),
            "undecided": undecided, "load_changed": load_changed,
            "latency_ci": chosen.latency_ci, "conditions": chosen.conditions}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--candidates", default=str(ROOT / "models/candidates"))
    p.add_argument("--targets", help="comma-separated (default: params.yaml check.targets)")
    p.add_argument("--repeats", type=int, default=5, help="builds per condition and target")
    p.add_argument("--load-procs", type=int, default=1, help="CPU-heavy processes during a loaded build")
    harness.add_params(p, ROOT / "params.yaml")
    harness.add_out(p, ROOT / "benchmarks/results/build_repro.json")
    a, run = harness.parse(p, argv)
    names = a.targets.split(",") if a.targets else harness.load_params(a.params)["check"]["targets"]
    rows = []
    for name in names:
        profile = load_target(ROOT / "targets" / f"{name}.yaml")
        builds: dict[str, list[dict[str, Any]]] = {"quiet": [], "loaded": []}
        for _ in range(a.repeats):
            for cond in ("quiet", "loaded"):  # alternate, so a slow drift of the machine hits both alike
                stop = mp.Event()
                procs = [mp.Process(target=_burn, args=(stop,), daemon=True)
                         for _ in range(a.load_procs if cond == "loaded" else 0)]
                for pr in procs:
                    pr.start()
                try:
                    builds[cond].append(one(profile, Path(a.candidates)))
                finally:
                    stop.set()
                    for pr in procs:
                        pr.join(10)
        every = [b["chosen"] for c in builds for b in builds[c]]
        counts = collections.Counter(every)
        top, n_top = counts.most_common(1)[0]
        rows.append({"target": name, "same": len(counts) == 1, "most": top, "of": f"{n_top}/{len(every)}",
                     "chosen": dict(counts), "builds": builds})
        print(f"{name}: {dict(counts)}", flush=True)
    lines = [f"# Builds from an empty cache, {a.repeats} quiet and {a.repeats} under load "
             f"({a.load_procs} CPU-heavy process(es)), alternating", "",
             "| target | identical | shipped (count) | quiet: median s per build | loaded: median s per build | undecided seen | "
             "load changed seen |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["builds"]
        und = sorted({n for c in b for x in b[c] for n in x["undecided"]})
        chg = sorted({n for c in b for x in b[c] for n in x["load_changed"]})
        med = {c: sorted(x["seconds"] for x in b[c])[len(b[c]) // 2] for c in b}
        lines.append(f"| {r['target']} | {r['of']} | " + ", ".join(f"`{k}` ({v})" for k, v in r["chosen"].items())
                     + f" | {med['quiet']:.1f} | {med['loaded']:.1f} | {', '.join(und) or '-'} | "
                       f"{', '.join(chg) or '-'} |")
    whys = sorted({x["why"] for r in rows for c in r["builds"] for x in r["builds"][c] if x["why"]})
    if whys:
        lines += ["", "How ties were broken:", ""] + [f"- {w}" for w in whys]
    harness.write_results(a.out, {"targets": rows, "repeats": a.repeats, "load_procs": a.load_procs}, run,
                          markdown="\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
