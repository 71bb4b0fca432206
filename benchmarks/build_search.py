"""What the build's search saves: per target, device runs and wall time of the search against measuring
every candidate the profile allows, both from an empty measurement cache, on this machine.

    python benchmarks/build_search.py [--candidates models/candidates] [--targets mobile-cpu,host]

Needs the candidate pool (`dvc repro candidates`). For each target the two builds run back to back,
alternating which goes first over ``--rounds`` rounds (A B, B A, ...); each build gets a fresh cache, so
every measurement is a real runner call. Both must choose the same candidate: the search only skips
candidates that cannot win. Results: benchmarks/results/build_search.{md,json}.

    python benchmarks/build_search.py --latency-model [--seeds 20]

The latency model instead (issue #30; results: benchmarks/results/latency_model.{md,json}), with each
profile's agreement device left out (it decides agreement, not latency, and costs minutes under qemu):
1. every allowed candidate of every target measured into one fresh cache (exhaustive builds), then the
   model's held-out error on it: per device, a third of its networks held out (``--seeds`` draws), fitted on
   the rest and on the other devices (as a build fits), median absolute percentage error of p50;
2. the targets built one after another through one fresh cache, as `dvc repro` builds them, with the model
   and without it (``--no-predict``), alternating which goes first over ``--rounds``: device runs per target
   and whether both ship the same candidate.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import ROOT

from dataclasses import replace

from edgecompress.deploy.build import MeasurementCache, build_target
from edgecompress.deploy.latency_features import FeatureCache
from edgecompress.deploy.latency_model import holdout_error, load_observations
from edgecompress.deploy.predict import FEATURES_DIR
from edgecompress.deploy.runner import fingerprint
from edgecompress.deploy.targets import TargetProfile, load_target
from edgecompress.errors import EdgeCompressError


def one(profile: Any, pool: Path, exhaustive: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgecompress-bench-") as tmp:
        t0 = time.perf_counter()
        record = build_target(profile, pool, Path(tmp) / "out", MeasurementCache(Path(tmp) / "cache"),
                              exhaustive=exhaustive)
        return {"seconds": time.perf_counter() - t0, "device_runs": record.search.device_runs,
                "chosen": record.chosen.name}


def no_agreement(profile: TargetProfile, scale: float = 1.0) -> TargetProfile:
    """The profile without its agreement device and budget (latency is the question here), its latency budgets
    times ``scale`` (a slower device's view of the same pool)."""
    lat = {k: v * scale for k, v in profile.budgets.latency_ms.items()}
    return replace(profile, agreement=None, budgets=replace(profile.budgets, min_agreement=None, latency_ms=lat))


def sequence(profiles: list[TargetProfile], pool: Path, predict: bool) -> list[dict[str, Any]]:
    """Every target built in turn through one fresh cache, as `dvc repro` builds them."""
    with tempfile.TemporaryDirectory(prefix="edgecompress-bench-") as tmp:
        cache, out = MeasurementCache(Path(tmp) / "cache"), []
        for prof in profiles:
            rec = build_target(prof, pool, Path(tmp) / prof.name, cache, predict=predict)
            out.append({"target": prof.name, "device_runs": rec.search.device_runs,
                        "predicted_skips": rec.search.predicted_skips, "chosen": rec.chosen.name})
        return out


def held_out(cache_dir: Path, seeds: int) -> dict[str, Any]:
    """The model's held-out error on an exhaustive cache: per device and overall, each seed a new third."""
    obs, left = load_observations(cache_dir, FeatureCache(cache_dir / FEATURES_DIR))
    devices = sorted({o.group.device for o in obs})
    per: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[list[float]]] = {"with other devices": [], "this device alone": []}
    for s in range(seeds):
        cases: dict[str, list[float]] = {k: [] for k in pooled}
        for d in devices:
            mine, others = [o for o in obs if o.group.device == d], [o for o in obs if o.group.device != d]
            nets = {(o.group, o.features.macs) for o in mine}
            for kind, extra in (("with other devices", others), ("this device alone", [])):
                try:
                    r = holdout_error(mine, seed=s, extra=extra)
                except EdgeCompressError:  # no group of this device has two networks: nothing to hold out
                    continue
                ape = [abs(p - m) / m for _, _, p, m in r.cases]
                cases[kind] += ape
                row = per.setdefault(d, {"observations": len(mine), "networks": len(nets)})
                row.setdefault(kind, []).append(statistics.median(ape))
        for k in pooled:
            pooled[k].append(cases[k])
    summary = {k: {"mdape_median": statistics.median(statistics.median(c) for c in v if c),
                   "mdape_min": min(statistics.median(c) for c in v if c),
                   "mdape_max": max(statistics.median(c) for c in v if c),
                   "held_out_per_seed": statistics.median(len(c) for c in v)} for k, v in pooled.items() if any(v)}
    return {"observations": len(obs), "left_out": left, "devices": per, "overall": summary}


def latency_model(a: Any, bench: Any, names: list[str]) -> None:
    pool = Path(a.candidates)
    profiles = [no_agreement(load_target(ROOT / "targets" / f"{n}.yaml"), a.budget_scale) for n in names]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgecompress-bench-") as tmp:
        cache = MeasurementCache(Path(tmp) / "cache")
        runs = 0
        for prof in profiles:
            rec = build_target(prof, pool, Path(tmp) / prof.name, cache, exhaustive=True)
            runs += rec.search.device_runs
            print(f"{prof.name}: {rec.search.device_runs} measured", file=sys.stderr, flush=True)
        err = held_out(cache.dir, a.seeds)
    measure_s = time.perf_counter() - t0
    seqs: dict[str, list[list[dict[str, Any]]]] = {"model": [], "no model": []}
    for r in range(a.rounds):
        for kind in (("model", "no model") if r % 2 == 0 else ("no model", "model")):
            seqs[kind].append(sequence(profiles, pool, kind == "model"))
            print(f"round {r} {kind}: {[x['device_runs'] for x in seqs[kind][-1]]} runs", file=sys.stderr, flush=True)
    fp = fingerprint()
    lines = ["# The latency model: held-out error and what it saves the builds", "",
             f"{time.strftime('%Y-%m-%d')}, {fp['cpu_model']}, {fp['cores']} cores ({platform.machine()}); "
             f"`{bench.command}`; agreement devices left out"
             + (f"; every latency budget times {a.budget_scale:g}." if a.budget_scale != 1 else "."), "",
             f"## Held-out error ({runs} device runs measured every allowed candidate of {len(profiles)} targets "
             f"in {measure_s:.0f} s: {err['observations']} cache entries)", "",
             "Per device (its runtime settings: threads, batch), a third of its networks held out, fitted on the "
             f"rest; {a.seeds} draws. Median absolute percentage error of p50, median over draws [range].", "",
             "| device | entries | networks | with the other devices in the fit | this device alone |", "|---|---|---|---|---|"]
    pct = lambda v: f"{100 * statistics.median(v):.1f}% [{100 * min(v):.1f}, {100 * max(v):.1f}]" if v else "n/a"
    for d, row in err["devices"].items():
        lines.append(f"| `{d}` | {row['observations']} | {row['networks']} | {pct(row.get('with other devices', []))} | "
                     f"{pct(row.get('this device alone', []))} |")
    for k, v in err["overall"].items():
        lines.append(f"\nAll devices, {k}: **{100 * v['mdape_median']:.1f}%** median over draws "
                     f"[{100 * v['mdape_min']:.1f}, {100 * v['mdape_max']:.1f}], {v['held_out_per_seed']} held-out "
                     f"artifacts a draw.")
    lines += ["", "## The builds in turn through one fresh cache, with the model and without", "",
              "| target | device runs: model | device runs: no model | predicted over, not measured | chosen: model | same choice |",
              "|---|---|---|---|---|---|"]
    rows = []
    for i, prof in enumerate(profiles):
        on, off = [s[i] for s in seqs["model"]], [s[i] for s in seqs["no model"]]
        chosen = {x["chosen"] for x in on + off}
        rows.append({"target": prof.name, "model_runs": [x["device_runs"] for x in on],
                     "no_model_runs": [x["device_runs"] for x in off],
                     "predicted_skips": [x["predicted_skips"] for x in on], "chosen": sorted(chosen)})
        lines.append(f"| {prof.name} | {', '.join(str(x['device_runs']) for x in on)} | "
                     f"{', '.join(str(x['device_runs']) for x in off)} | {', '.join(str(x['predicted_skips']) for x in on)} | "
                     f"`{on[0]['chosen']}` | {'yes' if len(chosen) == 1 else 'NO: ' + ', '.join(sorted(chosen))} |")
    tot = lambda k: [sum(s[i]["device_runs"] for i in range(len(profiles))) for s in seqs[k]]
    lines += ["", f"All targets, per round: {tot('model')} device runs with the model, {tot('no model')} without.", ""]
    harness.write_results(Path(a.out).with_suffix(".json"), {"held_out": err, "builds": rows, "fingerprint": fp,
                                                             "exhaustive_runs": runs}, bench,
                          markdown="\n".join(lines), md_path=a.out)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--candidates", default=str(ROOT / "models/candidates"))
    p.add_argument("--targets", help="comma-separated (default: params.yaml check.targets)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--latency-model", action="store_true", help="the latency model's error and savings instead")
    p.add_argument("--seeds", type=int, default=20, help="--latency-model: held-out draws")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="--latency-model: every latency budget times this (e.g. 0.3: tighter, as on a slower device)")
    harness.add_params(p, ROOT / "params.yaml")
    harness.add_out(p, None)
    a, bench = harness.parse(p, argv)
    a.out = a.out or str(ROOT / "benchmarks/results" / ("latency_model.md" if a.latency_model else "build_search.md"))
    names = a.targets.split(",") if a.targets else harness.load_params(a.params)["check"]["targets"]
    if a.latency_model:
        return latency_model(a, bench, names)
    rows = []
    for name in names:
        profile = load_target(ROOT / "targets" / f"{name}.yaml")
        runs: dict[str, list[dict[str, Any]]] = {"search": [], "all": []}
        for r in range(a.rounds):
            order = ("search", "all") if r % 2 == 0 else ("all", "search")
            for kind in order:
                runs[kind].append(one(profile, Path(a.candidates), kind == "all"))
        chosen = {x["chosen"] for k in runs for x in runs[k]}
        row = {"target": name, "chosen": sorted(chosen), "same_choice": len(chosen) == 1,
               "search_runs": runs["search"][0]["device_runs"], "all_runs": runs["all"][0]["device_runs"],
               "search_s": statistics.median(x["seconds"] for x in runs["search"]),
               "all_s": statistics.median(x["seconds"] for x in runs["all"])}
        rows.append(row)
        print(f"{name}: search {row['search_runs']} runs {row['search_s']:.1f} s, all {row['all_runs']} runs "
              f"{row['all_s']:.1f} s, chosen {row['chosen']}", file=sys.stderr, flush=True)
    fp = fingerprint()
    lines = ["# Build search against measuring every allowed candidate", "",
             f"{time.strftime('%Y-%m-%d')}, {fp['cpu_model']}, {fp['cores']} cores ({platform.machine()}); "
             f"`python benchmarks/build_search.py`, {a.rounds} rounds alternating the order, median wall time, "
             "each build from an empty measurement cache (every device run real).", "",
             "| target | device runs: search | device runs: all | wall s: search | wall s: all | ratio | same choice |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['search_runs']} | {r['all_runs']} | {r['search_s']:.1f} | {r['all_s']:.1f} | "
                     f"{r['all_s'] / r['search_s']:.1f}x | {'yes' if r['same_choice'] else 'NO: ' + ', '.join(r['chosen'])} |")
    total_s, total_a = sum(r["search_s"] for r in rows), sum(r["all_s"] for r in rows)
    lines += ["", f"All targets: {sum(r['search_runs'] for r in rows)} device runs in {total_s:.1f} s for the search, "
              f"{sum(r['all_runs'] for r in rows)} in {total_a:.1f} s measuring everything ({total_a / total_s:.1f}x). "
              "Wall time includes the device probe and writing the build record.", ""]
    harness.write_results(Path(a.out).with_suffix(".json"), {"rows": rows, "fingerprint": fp}, bench,
                          markdown="\n".join(lines), md_path=a.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
