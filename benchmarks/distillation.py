"""Ensemble and uncertainty-aware distillation: what does each way of training the student buy? (evidence, not a test)

In ONE run, on the data of params.yaml's data section, with fixed seeds:
  - an ensemble of --members ResNet teachers (params' train_teacher section, seeds seed..seed+N-1);
  - the same MobileNet student (params' distill section) trained
      (a) from labels only,
      (b) with Hinton KD from member 0 (distill.distill, params' temperature/alpha/losses),
      (c) with ensemble KD from all members (mean of their softened distributions),
      (d) as a multi-head student, one head per member, with the Ferianc & Rodrigues (2022) loss
          (multihead.MultiHeadKDConfig defaults; --multihead a=0.5,lam_max=0.1 overrides them).
Every model gets test accuracy, NLL, ECE, Brier, predictive entropy, mutual information (ensemble
and multi-head: from the members'/heads' disagreement), parameters, MACs and MACs as a fraction of
the whole ensemble's; each part is timed.

Writes a markdown table to stdout and OUT/distillation.md, everything (histories too) to OUT/distillation.json.

Reusing what `dvc repro` already trained (same params, same seeds, same code) saves most of the
run: --members-from models loads the teacher and train_member@i checkpoints as the ensemble, and
--pipeline-students metrics/distill.json takes (a) from the distill stage's labels-only baseline and
its KD student as (b) (distill.source: teacher) or (c) (source: ensemble, heads: 1); scheme offline.
The script trains the rest; the table says which came from the stage.

Usage: python benchmarks/distillation.py [--members 5] [--teacher-epochs E] [--student-epochs E]
           [--members-from models] [--pipeline-students metrics/distill.json]
           [--limit N] [--seed 0] [--multihead k=v,...] [--students d,c] [--threads T] [--params params.yaml] [--out benchmarks/results]
Smoke: python benchmarks/distillation.py --members 2 --teacher-epochs 1 --student-epochs 1 --limit 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import harness

from edgecompress.data import DataConfig, load_dataset
from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import from_dict, section
from edgecompress.log import get_logger
from edgecompress.models import MobileNetStudent
from edgecompress.training.distill import DistillConfig, distill, distill_ensemble, distill_multihead
from edgecompress.training.ensemble import ensemble_report, train_ensemble
from edgecompress.training.loop import crop_fill, fit, model_report, tensors
from edgecompress.training.multihead import MultiHeadKDConfig
from edgecompress.training.teacher import TeacherConfig

COLUMNS = ("accuracy", "nll", "ece", "brier", "entropy", "mutual_information")


def log(msg: str) -> None:
    get_logger("distillation").info(msg)


def configs(params: dict[str, Any], args: argparse.Namespace) -> tuple[DataConfig, TeacherConfig, DistillConfig]:
    data = harness.data_config(params, args.limit, where=args.params)
    tcfg = from_dict(TeacherConfig, section(params, "train_teacher"))
    scfg = from_dict(DistillConfig, section(params, "distill"))
    t_over: dict[str, Any] = {"seed": args.seed}
    s_over: dict[str, Any] = {"seed": args.seed}
    if args.teacher_epochs:
        t_over["epochs"] = args.teacher_epochs
    if args.student_epochs:
        s_over["epochs"] = args.student_epochs
    tcfg = dataclasses.replace(tcfg, train=dataclasses.replace(tcfg.train, **t_over))
    # The benchmark picks each student's teacher signal itself: (b) is always Hinton KD from member 0.
    scfg = dataclasses.replace(scfg, train=dataclasses.replace(scfg.train, **s_over), baseline=False,
                               source="teacher", heads=1)
    return data, tcfg, scfg


def row(name: str, rep: dict[str, Any], ens_macs: int, seconds: float | None, mi: bool) -> dict[str, Any]:
    test = rep["test"]
    return {"model": name, **{k: test.get(k) if (k != "mutual_information" or mi) else None for k in COLUMNS},
            "params": rep["params"], "macs": rep["macs"], "macs_fraction_of_ensemble": rep["macs"] / ens_macs,
            "train_seconds": seconds}


def load_members(models: Path, n: int, params: dict[str, Any], args: argparse.Namespace) -> list[torch.nn.Module]:
    """The pipeline's ensemble: models/teacher.pt (member 0) and models/members/member-i.pt, checked to be
    trained with this params file's train_teacher settings."""
    paths = [models / "teacher.pt"] + [models / "members" / f"member-{i}.pt" for i in range(1, n)]
    want = {k: v for k, v in section(params, "train_teacher").items() if k not in TeacherConfig.ENSEMBLE_KEYS}
    members = []
    for path in paths:
        if not path.exists():
            raise SystemExit(f"{path} missing: set train_teacher.ensemble_size: {n} and run dvc repro train_member")
        model, meta = load_checkpoint(path)
        got = {k: v for k, v in meta["params"]["train_teacher"].items() if k not in TeacherConfig.ENSEMBLE_KEYS}
        if {k: v for k, v in got.items() if k != "dropout"} != {k: v for k, v in want.items() if k != "dropout"}:
            raise SystemExit(f"{path} was trained with other train_teacher params than {args.params}")
        members.append(model.eval())
    return members


def pipeline_students(path: Path, params: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """(a) and, by distill.source, (b) or (c) from the distill stage's metrics, after checking they
    match this run's settings; the script trains whichever of (a)-(c) the stage did not."""
    d = json.loads(path.read_text())
    sec = section(params, "distill")
    key = {("teacher", 1): "hinton", ("ensemble", 1): "ensemble_kd"}.get((d.get("source", "teacher"), d.get("heads", 1)))
    if key is None or d.get("scheme", "offline") != "offline" or "baseline_test" not in d:
        raise SystemExit(f"{path}: needs an offline distill stage with baseline: true and source teacher or "
                         "ensemble KD (heads: 1)")
    stage_members = 1 + len(section(params, "train_teacher").get("members") or [])
    if key == "ensemble_kd" and stage_members != args.members:
        raise SystemExit(f"{path}: the distill stage distilled {stage_members} members, this run uses --members "
                         f"{args.members}")
    if args.student_epochs and args.student_epochs != sec["train"]["epochs"]:
        raise SystemExit("--pipeline-students cannot be combined with --student-epochs")
    if args.limit or args.seed != sec["train"].get("seed", 0):
        raise SystemExit("--pipeline-students needs the pipeline's data and seed (no --limit/--seed)")
    size = {"params": d["params"], "macs": d["macs"]}
    return {"labels": {"test": d["baseline_test"], **size}, key: {"test": d["test"], **size}}


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


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    harness.add_params(p)
    p.add_argument("--members", type=int, default=5, help="ensemble size (= heads of the multi-head student)")
    p.add_argument("--teacher-epochs", type=int, help="override train_teacher.train.epochs")
    p.add_argument("--student-epochs", type=int, help="override distill.train.epochs (all four students)")
    harness.add_limit(p, help="data subset per split (quick smoke runs)")
    harness.add_seed(p, help="training seed (members use seed..seed+N-1)")
    p.add_argument("--multihead", default="", help="MultiHeadKDConfig overrides for (d), e.g. a=0.5,lam_max=0.1")
    p.add_argument("--students", default="d,c", help="which of the trained students (c, d) to run, in order")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--members-from", help="load the ensemble from this models/ directory (teacher.pt, members/) "
                                          "instead of training it")
    p.add_argument("--pipeline-students", help="take (a) and (b) from this distill-stage metrics JSON")
    harness.add_out(p, "benchmarks/results")
    args, bench = harness.parse(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = harness.load_params(args.params)
    data_cfg, tcfg, scfg = configs(params, args)
    overrides = {k: float(v) for k, v in (kv.split("=") for kv in args.multihead.split(",") if kv)}
    mh_cfg = MultiHeadKDConfig(**{**dataclasses.asdict(MultiHeadKDConfig()), **overrides, "num_heads": args.members})
    students = [x.strip() for x in args.students.split(",") if x.strip()]
    timings: dict[str, float] = {}
    start = time.time()

    t0 = time.time()
    ds = load_dataset(data_cfg)
    t = tensors(ds)
    timings["data"] = time.time() - t0
    log(f"data: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, {ds.num_classes} classes "
        f"({timings['data']:.1f} s)")

    t0 = time.time()
    if args.members_from:
        members = load_members(Path(args.members_from), args.members, params, args)
    else:
        members = train_ensemble(ds, tcfg, args.members)
    timings["ensemble"] = time.time() - t0
    ens = ensemble_report(members, ds, t)
    log(f"ensemble of {args.members}: {timings['ensemble']:.0f} s, test accuracy {ens['test']['accuracy']:.4f}")

    reports: dict[str, dict[str, Any]] = {}
    if args.pipeline_students:
        reports.update(pipeline_students(Path(args.pipeline_students), params, args))
        for key in reports:
            timings[key] = None  # type: ignore[assignment]
        log(f"{', '.join(reports)}: from {args.pipeline_students}")
    from_stage = set(reports)
    if "labels" not in reports:
        t0 = time.time()
        torch.manual_seed(scfg.train.seed)
        base = MobileNetStudent(**{k: v for k, v in scfg.arch(ds).items() if k != "kind"})
        history = fit(base, *t["train"], scfg.train, fill=crop_fill(ds), val=t["val"], name="labels-only")
        reports["labels"] = {**model_report(base, ds, t), "history": history}
        timings["labels"] = time.time() - t0
        log(f"(a) labels only: {timings['labels']:.0f} s")
    if "hinton" not in reports:
        t0 = time.time()
        _, _, kd = distill(members[0], ds, scfg)
        reports["hinton"] = kd["kd"]
        timings["hinton"] = time.time() - t0
        log(f"(b) Hinton KD from member 0: {timings['hinton']:.0f} s")

    def write() -> None:
        """The table so far: written after every student, so a stopped run still leaves its evidence."""
        timings["total"] = time.time() - start
        m = ens["macs"]
        per_member = None if args.members_from else timings["ensemble"] / args.members
        rows = [row(f"member {i}", {"test": r, "params": ens["member_params"][i], "macs": ens["member_macs"][i]},
                    m, per_member, False) for i, r in enumerate(ens["members"])]
        rows.append(row(f"ensemble of {args.members}", ens, m, None if args.members_from else timings["ensemble"], True))
        names = {"labels": "(a) student: labels only", "hinton": "(b) student: Hinton KD (member 0 = teacher)",
                 "ensemble_kd": f"(c) student: ensemble KD ({args.members})",
                 "multihead": f"(d) multi-head student ({args.members} heads)"}
        names = {k: v + (" (distill stage)" if k in from_stage else "") for k, v in names.items()}
        for key, name in names.items():
            if key in reports:
                rows.append(row(name, reports[key], m, timings.get(key), key == "multihead"))
        wanted = {"labels", "hinton"} | {{"c": "ensemble_kd", "d": "multihead"}[x] for x in students}
        missing = [names[k] for k in names if k not in reports and k in wanted]
        setup = (f"data {data_cfg.format} (limit {data_cfg.limit}): {len(ds.train)} train / {len(ds.test)} test; "
                 f"{args.members} members x {tcfg.train.epochs} epochs; students {scfg.train.epochs} epochs, "
                 f"channels {list(scfg.arch(ds)['channels'])}; KD T={scfg.temperature} alpha={scfg.alpha} "
                 f"losses={scfg.losses or 'Hinton'}; multi-head {dataclasses.asdict(mh_cfg)}; seed {args.seed}; "
                 f"ensemble {'loaded from ' + args.members_from if args.members_from else 'trained here'}; "
                 f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
        text = (f"# Ensemble and uncertainty-aware distillation\n\n{setup}\n\n"
                f"Test split. MI (mutual information, epistemic uncertainty) only where several predictions are "
                f"averaged. Member train s = ensemble time / members. Run time so far {timings['total']:.0f} s."
                + (f" Not run (yet): {', '.join(missing)}." if missing else "") + f"\n\n{markdown(rows)}\n")
        out = Path(args.out)
        harness.write_results(out / "distillation.json", {
            "args": vars(args), "setup": setup, "rows": rows, "timings_s": timings,
            "ensemble": ens, "students": reports}, bench, markdown=text, md_path=out / "distillation.md",
            default=str, newline=False)
        log(f"wrote {out / 'distillation.md'} and {out / 'distillation.json'} ({timings['total']:.0f} s so far)")
        if not missing:
            print(text)

    write()
    # Default order (d) before (c): the multi-head student is the method under test.
    for which in students:
        if {"c": "ensemble_kd", "d": "multihead"}.get(which) in from_stage:
            continue  # the distill stage trained it with these settings
        t0 = time.time()
        if which == "d":
            _, reports["multihead"] = distill_multihead(members, ds, scfg, mh_cfg)
            timings["multihead"] = time.time() - t0
            log(f"(d) multi-head: {timings['multihead']:.0f} s")
        elif which == "c":
            _, reports["ensemble_kd"] = distill_ensemble(members, ds, scfg)
            timings["ensemble_kd"] = time.time() - t0
            log(f"(c) ensemble KD: {timings['ensemble_kd']:.0f} s")
        else:
            raise SystemExit(f"--students: unknown {which!r}; use c and/or d")
        write()


if __name__ == "__main__":
    main()
