"""Where do int8, fp16 and channel pruning pay off as the work grows? MobileNetV2 at 28/96/224 px (evidence, not a test)

At the pipeline's 28x28x1 size fixed per-operator costs hide what compression buys. In ONE run: a
standard MobileNetV2 (width 1.0, 3-channel input, 1000 classes, ~3.5M params, random weights, BN
statistics from synthetic images) and a copy with 50% of channels removed by ``prune_channels``,
exported by the repo's exporters as fp32/fp16/int8 ONNX and TFLite at each resolution (int8
calibrated on synthetic images: speed and size only), timed by the standalone runner in a
subprocess (``run_local``) at batch 1, 1 thread and all cores; the pipeline's exported student
(models/export) is timed alongside. targets/*.yaml (read at run time) say which candidates fit.

Usage: python benchmarks/scale.py [--res 28,96,224] [--runs 200] [--max-seconds 1.5] [--rounds 2] [--out benchmarks/results]
Smoke: python benchmarks/scale.py --quick    (32 px, width 0.25, few runs; results to a temp dir)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import harness

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import io_details
from edgecompress.compression.onnx import export_onnx, export_onnx_fp16, export_onnx_int8
from edgecompress.compression.prune import PruneConfig, prune_channels
from edgecompress.compression.tflite import export_tflite, export_tflite_fp16
from edgecompress.deploy.bench import local_command, run_local
from edgecompress.deploy.runner import fingerprint
from edgecompress.log import get_logger
from edgecompress.models import count_macs, count_params

# (expansion t, output channels c, repeats n, first stride s): table 2 of Sandler et al. 2018.
MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
ARTIFACTS = ("fp32.onnx", "fp16.onnx", "int8.onnx", "fp32.tflite", "fp16.tflite", "int8.tflite")
ENGINE = {"onnx": "onnxruntime", "tflite": "litert"}
MODELS = ("mbv2", "mbv2-pruned50")
MEAN, STD, MIB = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 2**20
# (label, model, precision, baseline model, baseline precision): p50 speedup = baseline / candidate.
HEADLINE = (("int8 vs fp32", "mbv2", "int8", "mbv2", "fp32"), ("fp16 vs fp32", "mbv2", "fp16", "mbv2", "fp32"),
            ("pruned50 vs full, fp32", "mbv2-pruned50", "fp32", "mbv2", "fp32"),
            ("pruned50 int8 vs full fp32", "mbv2-pruned50", "int8", "mbv2", "fp32"))
Row = dict[str, Any]


def log(msg: str) -> None:
    get_logger("scale").info(msg)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6(inplace=True)] if act else []))


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hid, self.res = cin * t, stride == 1 and cin == cout
        self.conv = nn.Sequential(*([conv_bn(cin, hid, 1)] if t != 1 else []), conv_bn(hid, hid, 3, stride, hid),
                                  conv_bn(hid, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 at width ``width`` (the repo's models are ResNet and MobileNet-v1: no inverted residuals)."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        r8 = lambda c: max(8, int(c * width + 4) // 8 * 8)  # noqa: E731
        cin, layers = r8(32), [conv_bn(3, r8(32), 3, 2)]
        for t, c, n, s in MBV2:
            for i in range(n):
                layers.append(InvertedResidual(cin, r8(c), s if i == 0 else 1, t))
                cin = r8(c)
        self.features = nn.Sequential(*layers, conv_bn(cin, max(1280, r8(1280)), 1))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(max(1280, r8(1280)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def synthetic(n: int, res: int, seed: int) -> np.ndarray:
    """Smooth random uint8 RGB images (N,3,res,res): noise at 1/8 size, upsampled bilinearly."""
    low = torch.rand(n, 3, max(2, res // 8), max(2, res // 8), generator=torch.Generator().manual_seed(seed))
    x = nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8).numpy()


def normalize(x: np.ndarray) -> np.ndarray:
    m, s = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (MEAN, STD))
    return np.ascontiguousarray((x.astype(np.float32) / 255 - m) / s)


@torch.no_grad()
def set_bn_stats(model: nn.Module, x: np.ndarray) -> nn.Module:
    """BN running statistics from images, so activations stay O(1) (random BN stats would not)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    for i in range(0, len(x), 8):
        model(torch.from_numpy(x[i:i + 8]))
    return model.eval()


def export_all(model: nn.Module, res: int, d: Path, calib: np.ndarray) -> tuple[dict[str, Path], dict[str, str]]:
    """Every artifact of ``model`` at ``res`` into ``d``, each with a runner sidecar; (paths, failures)."""
    d.mkdir(parents=True, exist_ok=True)
    shape, cfg = (3, res, res), CalibrationConfig(samples=len(calib), method="minmax", max_drop=None)
    steps = {"fp32.onnx": lambda p: export_onnx(model, shape, p),
             "fp16.onnx": lambda p: export_onnx_fp16(d / "fp32.onnx", p),
             "int8.onnx": lambda p: export_onnx_int8(d / "fp32.onnx", p, calib, cfg, x_val=None),
             "fp32.tflite": lambda p: export_tflite(model, shape, p),
             "fp16.tflite": lambda p: export_tflite_fp16(d / "fp32.tflite", p),
             "int8.tflite": lambda p: export_tflite(model, shape, p, calib, cfg)}
    paths, failed = {}, {}
    for name, make in steps.items():
        t0, p = time.time(), d / name
        try:
            make(p)
            side = {"format": name.split(".")[1], "precision": name.split(".")[0], **io_details(p), "mean": MEAN, "std": STD}
            Path(f"{p}.json").write_text(json.dumps(side))
            paths[name] = p
            log(f"  {name}: {p.stat().st_size / MIB:.2f} MiB in {time.time() - t0:.0f} s")
        except Exception as e:  # one failing exporter must not lose the rest of the run
            failed[name] = f"{type(e).__name__}: {e}"[:400]
            log(f"  {name}: FAILED ({failed[name][:200]})")
    return paths, failed


def others_s() -> float:
    """CPU seconds all processes but this one and its children have been busy since boot (/proc/stat)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    mine = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK") - mine


def wait_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until other processes use < 0.25 core over half a second; seconds waited."""
    t0 = time.perf_counter()
    while True:
        b0 = others_s()
        time.sleep(0.5)
        if (others_s() - b0) / 0.5 < 0.25 or time.perf_counter() - t0 >= limit:
            return time.perf_counter() - t0


def measure(path: Path, threads: int, a: argparse.Namespace) -> Row:
    """The runner's figures for ``path`` at ``threads`` (a subprocess, as the check stage runs it).

    ``other_cores``: CPU other processes used during the run (machine busy time minus ours, per wall second).
    """
    args = ["--model", str(path), "--sidecar", f"{path}.json", "--threads", str(threads), "--batch", "1",
            "--warmup", str(a.warmup), "--runs", str(a.runs), "--max-seconds", str(a.max_seconds)]
    b0, t0 = others_s(), time.perf_counter()
    r = run_local(local_command(args), path, 600, f"scale {path.name}")
    b1, t1 = others_s(), time.perf_counter()
    return {"size_bytes": r["model_size_bytes"], **{k: r["latency_ms"][k] for k in ("p50", "p90", "p99", "mean", "n")},
            "other_cores": max(0.0, (b1 - b0) / (t1 - t0)), "warnings": r["warnings"]}


def pick(rounds: list[Row]) -> Row:
    """Of one artifact's rounds: the fastest undisturbed one (others <= 0.25 core), else the least disturbed."""
    quiet = [m for m in rounds if m["other_cores"] <= 0.25]
    best = min(quiet, key=lambda m: m["p50"]) if quiet else min(rounds, key=lambda m: m["other_cores"])
    return {**best, "rounds_p50": [m["p50"] for m in rounds], "rounds_others": [m["other_cores"] for m in rounds]}


def profile_rules(raw: dict[str, Any], cores: int) -> dict[str, Any]:
    """Engines, precisions, thread column and budgets of a profile: old (artifact/runtime) or new (build) style."""
    rt, art, build, b = (raw.get(k) or {} for k in ("runtime", "artifact", "build", "budgets"))
    return {"engines": list(build.get("engines") or ([rt["engine"]] if rt.get("engine") else ENGINE.values())),
            "precisions": list(build.get("precisions") or ([art["precision"]] if art.get("precision")
                                                           else ["fp32", "fp16", "int8"])),
            "threads": rt.get("threads"), "column": 1 if rt.get("threads") == 1 else cores,
            "latency_ms": dict(b.get("latency_ms") or {}), "size_mb": b.get("size_mb")}


def read_profiles(folder: Path, cores: int) -> dict[str, dict[str, Any]]:
    """Every profile in ``folder`` as the rules the fit tables apply."""
    out = {}
    for yml in sorted(folder.glob("*.yaml")):
        raw = yaml.safe_load(yml.read_text())
        out[raw.get("name") or yml.stem] = profile_rules(raw, cores)
    return out


def fits(get: dict[tuple, Row], pr: dict[str, Any], model: str, art: str, res: int) -> str:
    """'fits', '-' (not measured) or every latency/size budget the candidate misses under profile ``pr``."""
    r = get.get((model, res, art, pr["column"]))
    if r is None:
        return "-"
    out = [f"{k} {r[k]:.3g}>{v:g} ms" for k, v in pr["latency_ms"].items() if k in r and r[k] > v]
    if pr["size_mb"] is not None and r["size_bytes"] > pr["size_mb"] * MIB:
        out.append(f"size {r['size_bytes'] / MIB:.3g}>{pr['size_mb']:g} MiB")
    return "; ".join(out) or "fits"


def allowed(pr: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m, art) for m in MODELS for art in ARTIFACTS
            if ENGINE[art.split(".")[1]] in pr["engines"] and art.split(".")[0] in pr["precisions"]]


def add_ratios(rows: list[Row], res_list: list[int], cores: int) -> list[Row]:
    """Per-row ratios vs fp32 (same model/res/runtime/threads) and vs the full model; the headline table."""
    get = {(r["model"], r["res"], r["artifact"], r["threads"]): r for r in rows}
    for r in rows:
        base = get.get((r["model"], r["res"], "fp32." + r["artifact"].split(".")[1], r["threads"]))
        full = get.get(("mbv2", r["res"], r["artifact"], r["threads"])) if r["model"] == "mbv2-pruned50" else None
        r["speedup_vs_fp32"] = base["p50"] / r["p50"] if base else None
        r["size_vs_fp32"] = r["size_bytes"] / base["size_bytes"] if base else None
        r["prune_speedup"] = full["p50"] / r["p50"] if full else None
    out = []
    for fmt in ("onnx", "tflite"):
        for th in dict.fromkeys((1, cores)):
            for label, m, p, bm, bp in HEADLINE:
                cells: dict[str, float | None] = {}
                for res in ["student", *res_list]:  # the student column only for ratios within one model
                    mm, bb, rr = ("student", "student", 28) if res == "student" else (m, bm, res)
                    c, b = get.get((mm, rr, f"{p}.{fmt}", th)), get.get((bb, rr, f"{bp}.{fmt}", th))
                    cells[str(res)] = b["p50"] / c["p50"] if c and b and (res != "student" or m == bm) else None
                out.append({"engine": ENGINE[fmt], "threads": th, "ratio": label, "by_res": cells})
    return out


def f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def verdict(v: float | None) -> str:
    return "n/a" if v is None else "pays off" if v >= 1.1 else "costs" if v <= 0.9 else "is neutral"


def conclusions(rows: list[Row], meta: dict[str, Any], profiles: dict[str, dict[str, Any]]) -> str:
    """One paragraph assembled from the measured numbers (no hand-written claims)."""
    res_list, cores = meta["resolutions"], meta["cores"]
    get = {(r["model"], r["res"], r["artifact"], r["threads"]): r for r in rows}
    h = {(x["ratio"], x["engine"], x["threads"]): x["by_res"] for x in meta["headline"]}
    out = []
    for label, *_ in HEADLINE:
        per = []
        for eng in ENGINE.values():
            one, many = h[label, eng, 1], h[label, eng, cores]
            student = f"{f(one['student'])} on the 28x28x1 student, " if one["student"] is not None else ""
            per.append(f"on {eng} {student}" + "/".join(f(one[str(r)]) for r in res_list) + " at "
                       + "/".join(map(str, res_list)) + "px with 1 thread, " + "/".join(f(many[str(r)]) for r in res_list)
                       + f" with {cores}; at {res_list[-1]}px it {verdict(one[str(res_list[-1])])} (1 thread)")
        out.append(f"{label} {'; '.join(per)}")
    fit_text = []
    for n, pr in profiles.items():
        cand = allowed(pr)
        by_res = {res: [f"{m} {art}" for m, art in cand if fits(get, pr, m, art, res) == "fits"] for res in res_list}
        smallest = min((r["size_bytes"] for r in rows if r["model"] != "student" and (r["model"], r["artifact"]) in cand),
                       default=0) / MIB
        too_big = pr["size_mb"] is not None and smallest > pr["size_mb"]
        fit_text.append(f"{n}: " + (f"none (its {pr['size_mb']:g} MiB size budget is below the smallest candidate, "
                                    f"{smallest:.2f} MiB)" if too_big else ", ".join(
            f"{res}px " + ("all" if len(v) == len(cand) else "none" if not v else " + ".join(v)) for res, v in by_res.items())))
    disturbed = sum(r["other_cores"] > 0.25 for r in rows)
    return ("Speedups of p50 (>= 1.1x counts as paying off, <= 0.9x as a cost): " + ". ".join(out) + ". "
            "Which candidates fit each profile's latency (proxy) and size budgets: " + "; ".join(fit_text) + ". "
            + (f"{disturbed} of {len(rows)} measurements ran while other processes used over 0.25 core (column `others`)."
               if disturbed else "No measurement ran while other processes used over 0.25 core."))


def report(rows: list[Row], meta: dict[str, Any], profiles: dict[str, dict[str, Any]], failed: dict[str, str]) -> str:
    """The markdown: settings, headline ratios, every measurement, per-profile fit tables, conclusions."""
    fp, res_list, cores = meta["fingerprint"], meta["resolutions"], meta["cores"]
    get = {(r["model"], r["res"], r["artifact"], r["threads"]): r for r in rows}
    md = ["# Scale benchmark: where int8, fp16 and channel pruning pay off as the work grows", "",
          f"Machine: {fp['cpu_model']}, {fp['cores']} cores, {fp['os']}; {meta['date']}; one run of {meta['seconds']:.0f} s.",
          f"Models: MobileNetV2 width {meta['width']} (3-channel input, 1000 classes, {meta['params']['mbv2']:,} params) "
          f"and a copy with 50% of its channels removed by `prune_channels` (structured, L1, round_to 8: "
          f"{meta['params']['mbv2-pruned50']:,} params). MACs: " + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in meta["macs"].items())
          + ". **Random weights** (BN statistics from synthetic images): speed and size only, no accuracy. int8 is "
          f"calibrated (minmax, per channel) on {meta['calib']} **synthetic** smooth images per resolution; int8 ONNX is "
          f"the repo's static QDQ (no accuracy-aware fallback). `student` is the pipeline's exported student "
          f"({meta['student']}, 28x28x1, trained), timed in the same run as the 28x28 reference.",
          f"Latency: the standalone runner in a subprocess (`run_local`), batch 1, warmup {meta['warmup']}, up to "
          f"{meta['runs']} runs capped at {meta['max_seconds']} s per measurement (n below), at 1 and {cores} threads. "
          "Speedup = baseline p50 / candidate p50, baseline at the same resolution, runtime and threads.", "",
          "## Headline: p50 speedup as the input grows", "",
          "| runtime | threads | ratio | student 28x28x1 | " + " | ".join(f"MobileNetV2 {r}px" for r in res_list) + " |",
          "|" + "---|" * (4 + len(res_list))]
    md += [f"| {h['engine']} | {h['threads']} | {h['ratio']} | " + " | ".join(map(f, h["by_res"].values())) + " |"
           for h in meta["headline"]]
    md += ["", "## Every measurement", "", "`others`: CPU cores other processes used during the measurement (a shared "
           f"machine). Each artifact was measured in {meta['rounds']} alternating rounds (each after waiting up to "
           f"{meta['quiet_wait']} s for the machine to be quiet); the fastest round with others <= 0.25 core is shown, "
           "else the least disturbed.", "",
           "| model | res | artifact | size KiB | size vs fp32 | threads | p50 ms | p90 ms | n | others | speedup vs fp32 | pruning speedup |",
           "|" + "---|" * 12]
    md += [f"| {r['model']} | {r['res']} | {r['artifact']} | {r['size_bytes'] / 1024:,.0f} | {f(r['size_vs_fp32'])} | "
           f"{r['threads']} | {r['p50']:.3f} | {r['p90']:.3f} | {r['n']} | {r['other_cores']:.2f} | "
           f"{f(r['speedup_vs_fp32'])} | {f(r['prune_speedup'])} |" for r in rows]
    if failed:
        md += ["", "Failed exports or measurements (left out above):", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    md += ["", "## Which candidates would fit each profile (latency on this machine as a proxy)", "",
           "Budgets from targets/*.yaml as read at run time; the profile's engine and precision (or its `build:` "
           "engines/precisions) pick the candidates; its model names do not apply to this model family. Profile "
           f"threads null or > 1 use the {cores}-thread figures, 1 the 1-thread ones. A GPU profile is judged on CPU figures.", ""]
    for name, pr in profiles.items():
        md += [f"### {name}", "", f"Engines {pr['engines']}, precisions {pr['precisions']}; latency budgets "
               f"{pr['latency_ms'] or 'none'} ms; size budget {pr['size_mb'] if pr['size_mb'] is not None else 'none'} MiB; "
               f"profile threads {pr['threads']} -> {pr['column']}-thread figures.", "",
               "| candidate | " + " | ".join(f"{r}px" for r in res_list) + " |", "|" + "---|" * (1 + len(res_list))]
        md += [f"| {m} {art} | " + " | ".join(fits(get, pr, m, art, res) for res in res_list) + " |" for m, art in allowed(pr)]
        md.append("")
    return "\n".join(md + ["## Conclusions", "", meta["conclusions"], ""])


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--res", default="28,96,224", help="comma-separated square RGB input sizes")
    p.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per measurement (capped by --max-seconds)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=1.5, help="cap on the timed runs of one measurement")
    p.add_argument("--calib", type=int, default=32, help="synthetic calibration images per resolution")
    p.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds; the fastest quiet one is kept")
    p.add_argument("--quiet-wait", type=float, default=10, help="wait up to this long for other processes to calm down")
    p.add_argument("--wait-until", type=float, default=600, help="stop waiting for quiet after this many seconds of the run")
    p.add_argument("--student", default="models/export", help="the pipeline's export dir (28x28 reference; '' skips)")
    p.add_argument("--targets", default="targets", help="folder of target profiles (*.yaml)")
    harness.add_out(p, "benchmarks/results")
    p.add_argument("--from-json", help="re-render scale.md from a previous scale.json (no measuring)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, width 0.25, few runs, results to a temp dir")
    a, bench = harness.parse(p, argv)
    if a.quick:
        a.res, a.width, a.runs, a.warmup, a.max_seconds, a.calib, a.rounds = "32", 0.25, 20, 2, 0.5, 4, 1
        a.out = a.out if a.out != "benchmarks/results" else tempfile.mkdtemp(prefix="scale-quick-")
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        data["profiles"] = read_profiles(Path(a.targets), data["meta"]["cores"])  # today's budgets, same figures
        data["meta"]["conclusions"] = conclusions(data["rows"], data["meta"], data["profiles"])
        return write(Path(a.out), data, bench)
    res_list, cores, t_start = [int(r) for r in a.res.split(",") if r.strip()], os.cpu_count() or 1, time.time()
    torch.manual_seed(0)
    bn_images = normalize(synthetic(32, res_list[0], seed=1))
    full = set_bn_stats(MobileNetV2(width=a.width), bn_images)
    cut = prune_channels(copy.deepcopy(full), (3, res_list[0], res_list[0]), 0.5, PruneConfig(ratio=0.5, round_to=8))
    models = {"mbv2": full, "mbv2-pruned50": set_bn_stats(cut, bn_images)}  # kept channels' statistics re-estimated
    params = {k: count_params(m) for k, m in models.items()}
    macs = {f"{k}@{r}": count_macs(m, (3, r, r)) for k, m in models.items() for r in res_list}
    log(f"params {params}; MACs {dict((k, f'{v / 1e6:.0f}M') for k, v in macs.items())}")

    failed: dict[str, str] = {}
    student_parent = None
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        jobs: list[tuple[str, int, dict[str, Path]]] = []
        src, sd = Path(a.student), Path(tmp) / "student"
        if a.student and src.is_dir():
            sd.mkdir()
            for name in ARTIFACTS:  # copied first: the pipeline may rewrite models/export meanwhile
                if (src / name).is_file() and (src / f"{name}.json").is_file():
                    shutil.copyfile(src / name, sd / name)
                    shutil.copyfile(src / f"{name}.json", sd / f"{name}.json")
                    student_parent = json.loads((sd / f"{name}.json").read_text()).get("parent")
            jobs.append(("student", 28, {n: sd / n for n in ARTIFACTS if (sd / n).is_file()}))
        for res in res_list:
            calib = normalize(synthetic(a.calib, res, seed=2))
            for mname, model in models.items():
                log(f"{mname} at {res}x{res}: exporting ...")
                paths, bad = export_all(model, res, Path(tmp) / mname / str(res), calib)
                failed.update({f"{mname} {res}px {k}": v for k, v in bad.items()})
                jobs.append((mname, res, paths))
        todo = [(mname, res, art, path, th) for mname, res, paths in jobs for art, path in paths.items()
                for th in dict.fromkeys((1, cores))]
        got: dict[tuple, list[Row]] = {}
        for rnd in range(a.rounds):  # alternating rounds, so drift and other load hit every artifact alike
            for mname, res, art, path, th in todo:
                waited = wait_quiet(a.quiet_wait if time.time() - t_start < a.wait_until else 0)
                try:
                    m = measure(path, th, a)
                except Exception as e:  # a runtime refusing one artifact must not lose the run
                    failed[f"{mname} {res}px {art} {th}t"] = f"{type(e).__name__}: {e}"[:400]
                    log(f"{mname} {res}px {art} {th}t: FAILED {e}")
                    continue
                got.setdefault((mname, res, art, th), []).append(m)
                log(f"round {rnd + 1}: {mname} {res}px {art} {th}t: p50 {m['p50']:.3f} ms (n {m['n']}, others "
                    f"{m['other_cores']:.2f} core, waited {waited:.1f} s)")
    rows = [{"model": k[0], "res": k[1], "artifact": k[2], "threads": k[3], **pick(v)} for k, v in got.items()]
    profiles = read_profiles(Path(a.targets), cores)  # read now: the profiles may have changed during the run
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "fingerprint": fingerprint(),
            "cores": cores, "resolutions": res_list, "width": a.width, "params": params, "macs": macs,
            "calib": a.calib, "rounds": a.rounds, "quiet_wait": a.quiet_wait, "warmup": a.warmup, "runs": a.runs,
            "max_seconds": a.max_seconds, "quick": a.quick,
            "student": f"{a.student}, from {student_parent}", "seconds": time.time() - t_start}
    meta["headline"] = add_ratios(rows, res_list, cores)
    meta["conclusions"] = conclusions(rows, meta, profiles)
    return write(Path(a.out), {"meta": meta, "rows": rows, "profiles": profiles, "failed": failed}, bench)


def write(out: Path, data: dict[str, Any], bench: harness.Run) -> int:
    """scale.md and scale.json into ``out`` (a re-render keeps the measuring run's provenance beside its own)."""
    md = report(data["rows"], data["meta"], data["profiles"], data["failed"])
    harness.write_results(out / "scale.json", data, bench, markdown=md + "\n", md_path=out / "scale.md", default=str)
    print(md)
    log(f"wrote {out / 'scale.md'} and {out / 'scale.json'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
