"""Ensemble and uncertainty-aware distillation: what does each way of training the student buy? (evidence, not a test)

In ONE run, on the data of params.yaml's data section, with fixed seeds:
  - an ensemble of --members ResNet teachers (params' train_teacher section, seeds seed..seed+N-1);
  - the same MobileNet student (params' distill section) trained
      (a) from labels only,
      (b) with Hinton KD from member 0 (distill.distill, params' temperature/alpha/losses),
      (c) with ensemble KD from all members (mean of their softened distributions),
      (d) as a multi-head student, one head per member, with the Ferianc & Rodrigues (2022) loss
          (multihead.MultiHeadKDConfig defaults; --lam-max sets the diversity weight).
Every model gets test accuracy, NLL, ECE, Brier, predictive entropy, mutual information (ensemble
and multi-head: from the members'/heads' disagreement), parameters, MACs and MACs as a fraction of
the whole ensemble's; each part is timed.

Writes a markdown table to stdout and OUT/distillation.md, everything (histories too) to OUT/distillation.json.

Usage: python benchmarks/distillation.py [--members 5] [--teacher-epochs E] [--student-epochs E]
           [--limit N] [--seed 0] [--lam-max 1.0] [--threads T] [--params params.yaml] [--out benchmarks/results]
Smoke: python benchmarks/distillation.py --members 2 --teacher-epochs 1 --student-epochs 1 --limit 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from edgecompress.data import DataConfig, load_dataset
from edgecompress.distill import DistillConfig, TeacherConfig, _fill, distill, model_report, tensors
from edgecompress.ensemble import distill_ensemble, distill_multihead, ensemble_report, train_ensemble
from edgecompress.models import MobileNetStudent
from edgecompress.multihead import MultiHeadKDConfig
from edgecompress.params import load_params, section
from edgecompress.train import fit

COLUMNS = ("accuracy", "nll", "ece", "brier", "entropy", "mutual_information")


def log(msg: str) -> None:
    print(f"[distillation] {msg}", file=sys.stderr, flush=True)


def configs(params: dict[str, Any], args: argparse.Namespace) -> tuple[DataConfig, TeacherConfig, DistillConfig]:
    data_sec = section(params, "data")
    if args.limit:
        data_sec["limit"] = args.limit
    data = DataConfig.from_dict(data_sec, "params.yaml:data")
    tcfg = TeacherConfig.from_dict(section(params, "train_teacher"))
    scfg = DistillConfig.from_dict(section(params, "distill"))
    t_over: dict[str, Any] = {"seed": args.seed}
    s_over: dict[str, Any] = {"seed": args.seed}
    if args.teacher_epochs:
        t_over["epochs"] = args.teacher_epochs
    if args.student_epochs:
        s_over["epochs"] = args.student_epochs
    tcfg = dataclasses.replace(tcfg, train=dataclasses.replace(tcfg.train, **t_over))
    scfg = dataclasses.replace(scfg, train=dataclasses.replace(scfg.train, **s_over), baseline=False)
    return data, tcfg, scfg


def row(name: str, rep: dict[str, Any], ens_macs: int, seconds: float | None, mi: bool) -> dict[str, Any]:
    test = rep["test"]
    return {"model": name, **{k: test.get(k) if (k != "mutual_information" or mi) else None for k in COLUMNS},
            "params": rep["params"], "macs": rep["macs"], "macs_fraction_of_ensemble": rep["macs"] / ens_macs,
            "train_seconds": seconds}


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["model", "acc %", "NLL", "ECE", "Brier", "entropy", "MI", "params", "MACs", "MACs / ensemble", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def f(k: str, fmt: str) -> str:
            return "-" if r[k] is None else format(r[k], fmt)
        lines.append("| " + " | ".join([
            r["model"], f"{100 * r['accuracy']:.2f}", f("nll", ".4f"), f("ece", ".4f"), f("brier", ".4f"),
            f("entropy", ".4f"), f("mutual_information", ".4f"), f"{r['params']:,}", f"{r['macs']:,}",
            f"{r['macs_fraction_of_ensemble']:.3f}", f("train_seconds", ".0f")]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--members", type=int, default=5, help="ensemble size (= heads of the multi-head student)")
    p.add_argument("--teacher-epochs", type=int, help="override train_teacher.train.epochs")
    p.add_argument("--student-epochs", type=int, help="override distill.train.epochs (all four students)")
    p.add_argument("--limit", type=int, help="data subset per split (quick smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="training seed (members use seed..seed+N-1)")
    p.add_argument("--lam-max", type=float, default=MultiHeadKDConfig.lam_max, help="multi-head diversity weight")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    data_cfg, tcfg, scfg = configs(params, args)
    mh_cfg = MultiHeadKDConfig(num_heads=args.members, lam_max=args.lam_max)
    timings: dict[str, float] = {}
    start = time.time()

    t0 = time.time()
    ds = load_dataset(data_cfg)
    t = tensors(ds)
    timings["data"] = time.time() - t0
    log(f"data: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, {ds.num_classes} classes "
        f"({timings['data']:.1f} s)")

    t0 = time.time()
    members = train_ensemble(ds, tcfg, args.members)
    timings["ensemble"] = time.time() - t0
    ens = ensemble_report(members, ds, t)
    log(f"ensemble of {args.members}: {timings['ensemble']:.0f} s, test accuracy {ens['test']['accuracy']:.4f}")

    reports: dict[str, dict[str, Any]] = {}
    t0 = time.time()
    torch.manual_seed(scfg.train.seed)
    base = MobileNetStudent(**{k: v for k, v in scfg.arch(ds).items() if k != "kind"})
    history = fit(base, *t["train"], scfg.train, fill=_fill(ds), val=t["val"], name="labels-only")
    reports["labels"] = {**model_report(base, ds, t), "history": history}
    timings["labels"] = time.time() - t0
    log(f"(a) labels only: {timings['labels']:.0f} s")

    t0 = time.time()
    _, _, kd = distill(members[0], ds, scfg)
    reports["hinton"] = kd["kd"]
    timings["hinton"] = time.time() - t0
    log(f"(b) Hinton KD from member 0: {timings['hinton']:.0f} s")

    t0 = time.time()
    _, reports["ensemble_kd"] = distill_ensemble(members, ds, scfg)
    timings["ensemble_kd"] = time.time() - t0
    log(f"(c) ensemble KD: {timings['ensemble_kd']:.0f} s")

    t0 = time.time()
    _, reports["multihead"] = distill_multihead(members, ds, scfg, mh_cfg)
    timings["multihead"] = time.time() - t0
    log(f"(d) multi-head: {timings['multihead']:.0f} s")
    timings["total"] = time.time() - start

    m = ens["macs"]
    per_member = timings["ensemble"] / args.members
    rows = [row(f"member {i}", {"test": r, "params": ens["member_params"][i], "macs": ens["member_macs"][i]},
                m, per_member, False) for i, r in enumerate(ens["members"])]
    rows.append(row(f"ensemble of {args.members}", ens, m, timings["ensemble"], True))
    rows.append(row("student: labels only", reports["labels"], m, timings["labels"], False))
    rows.append(row("student: Hinton KD (member 0)", reports["hinton"], m, timings["hinton"], False))
    rows.append(row(f"student: ensemble KD ({args.members})", reports["ensemble_kd"], m, timings["ensemble_kd"], False))
    rows.append(row(f"multi-head student ({args.members} heads)", reports["multihead"], m, timings["multihead"], True))

    setup = (f"data {data_cfg.format} (limit {data_cfg.limit}): {len(ds.train)} train / {len(ds.test)} test; "
             f"{args.members} members x {tcfg.train.epochs} epochs; students {scfg.train.epochs} epochs, "
             f"channels {list(scfg.arch(ds)['channels'])}; KD T={scfg.temperature} alpha={scfg.alpha} "
             f"losses={scfg.losses or 'Hinton'}; multi-head {reports['multihead']['config']}; "
             f"seed {args.seed}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    table = markdown(rows)
    text = (f"# Ensemble and uncertainty-aware distillation\n\n{setup}\n\n"
            f"Test split. MI (mutual information, epistemic uncertainty) only where several predictions are "
            f"averaged. Member train s = ensemble time / members. Total run {timings['total']:.0f} s.\n\n{table}\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distillation.md").write_text(text)
    (out / "distillation.json").write_text(json.dumps({
        "args": vars(args), "setup": setup, "rows": rows, "timings_s": timings,
        "ensemble": ens, "students": reports}, indent=2, default=str))
    log(f"wrote {out / 'distillation.md'} and {out / 'distillation.json'} ({timings['total']:.0f} s in all)")


if __name__ == "__main__":
    main()
