"""What the build's search saves: per target, device runs and wall time of the search against measuring
every candidate the profile allows, both from an empty measurement cache, on this machine.

    python benchmarks/build_search.py [--candidates models/candidates] [--targets mobile-cpu,host]

Needs the candidate pool (`dvc repro candidates`). For each target the two builds run back to back,
alternating which goes first over ``--rounds`` rounds (A B, B A, ...); each build gets a fresh cache, so
every measurement is a real runner call. Both must choose the same candidate: the search only skips
candidates that cannot win. Results: benchmarks/results/build_search.{md,json}.
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

from edgecompress.deploy.build import MeasurementCache, build_target
from edgecompress.deploy.runner import fingerprint
from edgecompress.deploy.targets import load_target


def one(profile: Any, pool: Path, exhaustive: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgecompress-bench-") as tmp:
        t0 = time.perf_counter()
        record = build_target(profile, pool, Path(tmp) / "out", MeasurementCache(Path(tmp) / "cache"),
                              exhaustive=exhaustive)
        return {"seconds": time.perf_counter() - t0, "device_runs": record["search"]["device_runs"],
                "chosen": record["chosen"]["name"]}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--candidates", default=str(ROOT / "models/candidates"))
    p.add_argument("--targets", help="comma-separated (default: params.yaml check.targets)")
    p.add_argument("--rounds", type=int, default=2)
    harness.add_params(p, ROOT / "params.yaml")
    harness.add_out(p, ROOT / "benchmarks/results/build_search.md")
    a, bench = harness.parse(p, argv)
    names = a.targets.split(",") if a.targets else harness.load_params(a.params)["check"]["targets"]
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
