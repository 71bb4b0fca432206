"""Wall time of the whole chain from scratch: the default recipe against the one it replaced, one machine.

    python benchmarks/pipeline_time.py [--limit 10000] [--recipes before,after] [--out FILE.md]

Each recipe runs `dvc repro` from scratch in its own throwaway copy of the project (dvc.yaml, params.yaml,
stages, targets, src), one after the other, on the same machine and data. A stage's wall time is the
time from dvc's "Running stage" line to the next one (the last ends with dvc). The accuracies are the
stages' own test-set metrics: teacher, ensemble, student, pruned student and the int8 TFLite artifact
as its runtime scores it.

Recipes are params.yaml with overrides:
* after: params.yaml as committed.
* before: the default until issue #12: five members trained from scratch for 15 fp32 epochs each, and
  the ensemble run on every student batch (no stored soft targets).

At full size (the default) the pair takes about 2.2 hours on a 2-core VM: `before` 6,154 s, `after`
1,934 s, 3.18x (benchmarks/results/pipeline_time_full.md). `--limit 10000` (1/5 of Fashion-MNIST's
training images) measures both in about 35 minutes, where fixed costs weigh more (2.23x there).
`--recipes after` alone times what a full default run costs. Each finished recipe is written to --out
at once, so a pair stopped half-way keeps what it measured.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import harness
from harness import ROOT

from edgecompress.log import get_logger

RECIPES: dict[str, dict[str, Any]] = {
    "before": {"train_teacher": {"ensemble_size": 5, "members": [1, 2, 3, 4], "member_init": "scratch",
                                 "member_epochs": None, "member_lr": None, "train": {"precision": "auto"}},
               "distill": {"views": 0}},
    "after": {},
}
ADDED = ("cluster", "early_exit", "candidates")
RUNNING = re.compile(r"^Running stage '([^']+)'")
# dvc.yaml runs `python` and this script runs `dvc`: both this interpreter's (the venv's).
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def project_copy(recipe: str, limit: int | None) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"edgecompress-time-{recipe}."))
    for name in ("dvc.yaml", "stages", "targets", "src", "user"):  # user: a dependency of the stages (your model files)
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    (work / "models/members").mkdir(parents=True)
    params = merge(harness.load_params(ROOT / "params.yaml"), RECIPES[recipe])
    params["data"]["limit"] = limit
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=work, env=ENV, check=True)
    shutil.copytree(ROOT / ".dvc/plots", work / ".dvc/plots")
    return work


def run(recipe: str, limit: int | None) -> dict[str, Any]:
    """`dvc repro` of ``recipe`` from scratch: per-stage seconds, total seconds and the accuracies."""
    work = project_copy(recipe, limit)
    log = (work / "repro.log").open("w")
    get_logger("pipeline-time").info(f"{recipe}: dvc repro in {work} (log: {work / 'repro.log'})")
    stages: dict[str, float] = {}
    current, since = None, time.monotonic()
    start = since
    proc = subprocess.Popen(["dvc", "repro"], cwd=work, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        m = RUNNING.match(line)
        if m:
            now = time.monotonic()
            if current:
                stages[current] = now - since
            current, since = m.group(1), now
            get_logger("pipeline-time").info(f"{recipe}: {current} ({now - start:.0f} s in)")
    gate = "passed"
    if proc.wait() != 0:
        # The report stage fails `dvc repro` after everything ran when a target on matching hardware
        # missed a budget (e.g. host's min_accuracy on a 1/5-size run): the timing is complete.
        if "failed to reproduce 'report'" not in (work / "repro.log").read_text():
            raise SystemExit(f"dvc repro failed for {recipe}; see {work / 'repro.log'}")
        gate = "failed (a target missed a budget; see reports/summary.md there)"
    end = time.monotonic()
    if current:
        stages[current] = end - since
    metric = lambda name: json.loads((work / "metrics" / name).read_text())  # noqa: E731
    accuracy = {"teacher": metric("teacher.json")["test"]["accuracy"],
                "ensemble": metric("uncertainty.json")["models"]["ensemble"]["accuracy"],
                "student": metric("distill.json")["test"]["accuracy"],
                "pruned": metric("prune.json")["after"]["test"]["accuracy"],
                "int8.tflite": metric("export.json")["int8.tflite"]["accuracy"]}
    return {"stages": stages, "total": end - start, "accuracy": accuracy, "gate": gate, "work": str(work)}


def table(results: dict[str, dict[str, Any]], limit: int | None) -> str:
    names = list(results)
    stages = list(dict.fromkeys(s for r in results.values() for s in r["stages"]))
    lines = [f"# Whole-chain wall time: {' vs '.join(names)}", "",
             f"`dvc repro` from scratch, data.limit {limit} ({'full Fashion-MNIST' if limit is None else f'{limit} training images'}), "
             f"recipes one after the other on one machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {_torch_version()}, python {platform.python_version()}.", "",
             "| stage | " + " | ".join(f"{n} s" for n in names) + " |", "|---|" + "---|" * len(names)]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(f"{results[n]['stages'][s]:.0f}" if s in results[n]["stages"]
                                               else "-" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{results[n]['total']:.0f}**" for n in names) + " |")
    lines += ["", "| test accuracy % | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in next(iter(results.values()))["accuracy"]:
        lines.append(f"| {key} | " + " | ".join(f"{100 * results[n]['accuracy'][key]:.2f}" for n in names) + " |")
    lines += ["", "Report gate: " + "; ".join(f"{n} {results[n]['gate']}" for n in names)]
    if {"before", "after"} <= set(results):
        b, a = results["before"], results["after"]
        lines += ["", f"Speed-up (before / after total): **{b['total'] / a['total']:.2f}x**"]
        # The same work in both recipes, added to the chain after issue #12 measured its 47 minutes.
        added = lambda r: sum(t for s, t in r["stages"].items() if s in ADDED or s.startswith("build@"))  # noqa: E731
        lines += ["", f"Stages added to the chain since issue #12 was filed ({', '.join(ADDED)}, build@*), the same "
                      f"work in both recipes: {added(b):.0f} s before, {added(a):.0f} s after; without them the "
                      f"speed-up is {(b['total'] - added(b)) / (a['total'] - added(a)):.2f}x."]
    return "\n".join(lines) + "\n"


def _torch_version() -> str:
    import torch

    return torch.__version__


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__)
    harness.add_limit(ap, help="data.limit for both recipes (default: all images)")
    ap.add_argument("--recipes", default="before,after", help=f"comma-separated, from {list(RECIPES)}")
    harness.add_out(ap, None, help="also write the markdown table here (and its .json beside it)")
    args, bench = harness.parse(ap, argv)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}: choose from {list(RECIPES)}")
    results: dict[str, dict[str, Any]] = {}
    for n in names:
        results[n] = run(n, args.limit)
        # Tables list the recipes in RECIPES order (before, after) whichever ran first; each finished
        # recipe is written at once, so a long pair stopped half-way keeps what it measured.
        ordered = {r: results[r] for r in RECIPES if r in results}
        text = table(ordered, args.limit)
        if args.out:
            harness.write_results(Path(args.out).with_suffix(".json"), ordered, bench, markdown=text, md_path=args.out)
    print(text)


if __name__ == "__main__":
    main()
