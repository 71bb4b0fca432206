"""Do the device's kernels compute what this host's do? Every pool candidate on an emulated device vs x86.

For each candidate in the pool (both runtimes, every precision), the same file runs through the standalone
runner (``--score --probs``) on this x86 host and on the emulated device (``edgecompress device prepare --arch
aarch64``: qemu, Debian's python3, the runtime wheels a device installs), on the same seeded, class-stratified
test images. Reported per candidate: top-1 agreement, the largest class-probability difference, and both
accuracies. ``--full`` names candidates (the shipped ones) that are also compared on every test image.
Emulated float kernels are slow (20-700 ms an image), hence the subset for the whole pool.

Usage: python benchmarks/isa_agreement.py [--images 500] [--full student/int8.tflite,ensemble/int8.tflite]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import harness
from edgecompress.deploy import agreement as agree
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.stats import wilson
from edgecompress.deploy.targets import load_target
from edgecompress.log import get_logger

log = get_logger("isa_agreement")
ROOT = harness.ROOT
PROFILE = {"litert": "targets/mobile-cpu.yaml", "onnxruntime": "targets/host.yaml"}  # runtime settings per engine


def _row(name: str, engine: str, a: agree.Agreement, seconds: float) -> dict:
    lo = wilson(a.top1, a.images).lo
    return {"candidate": name, "engine": engine, "images": a.images, "top1": a.top1, "top1_lo": lo,
            "max_prob_diff": a.max_prob_diff, "device_accuracy": a.accuracy, "host_accuracy": a.host_accuracy,
            "seconds": round(seconds, 1)}


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--candidates", default=str(ROOT / "models/candidates"))
    p.add_argument("--device", default="emulate:aarch64")
    p.add_argument("--images", type=int, default=500, help="test images per candidate (stratified, seeded)")
    p.add_argument("--full", default="", help="comma-separated candidates also compared on every test image")
    p.add_argument("--only", default="", help="comma-separated candidates (default: the whole pool)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/isa_agreement.json"))
    args, run = harness.parse(p)
    pool = Path(args.candidates)
    index = json.loads((pool / "index.json").read_text())
    device = DeviceSpec(url=args.device)
    with np.load(pool / "testset.npz", allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    idx = agree.subset(y, args.images)
    wanted = [c for c in index["candidates"] if not args.only or c["name"] in args.only.split(",")]
    # An early-exit cascade runs segment by segment through the runner's cascade mode, which has no --score.
    cascades = [c["name"] for c in wanted if c.get("segments")]
    wanted = [c for c in wanted if not c.get("segments")]
    rows, full = [], []
    fingerprint = None
    for k, c in enumerate(wanted):
        profile = load_target(ROOT / PROFILE[c["engine"]])
        variant = profile.pinned(Path(c["path"]).suffix.lstrip("."), c["precision"])
        t0 = time.perf_counter()
        a = agree.measure(variant, pool / c["path"], x[idx], y[idx], device)
        fingerprint = a.fingerprint
        rows.append(_row(c["name"], c["engine"], a, time.perf_counter() - t0))
        log.info(f"{k + 1}/{len(wanted)} {c['name']}: {a.text} ({rows[-1]['seconds']} s)")
    for name in filter(None, args.full.split(",")):
        c = next(c for c in index["candidates"] if c["name"] == name)
        profile = load_target(ROOT / PROFILE[c["engine"]])
        variant = profile.pinned(Path(c["path"]).suffix.lstrip("."), c["precision"])
        t0 = time.perf_counter()
        a = agree.measure(variant, pool / c["path"], x, y, device)
        full.append(_row(name, c["engine"], a, time.perf_counter() - t0))
        log.info(f"all {len(y)} test images, {name}: {a.text}; accuracy {a.accuracy:.4f} there, "
                 f"{a.host_accuracy:.4f} here ({full[-1]['seconds']} s)")
    md = _markdown(rows, full, args, fingerprint, cascades)
    harness.write_results(args.out, {"device": args.device, "images": int(len(idx)), "candidates": rows,
                                     "full": full, "not_compared": cascades, "fingerprint": fingerprint}, run,
                          markdown=md)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _markdown(rows: list[dict], full: list[dict], args, fingerprint, cascades: list[str]) -> str:
    fp = fingerprint or {}
    lines = [f"# Outputs on {args.device} vs this x86 host, the same files", "",
             f"Device: {fp.get('emulator')} -cpu {fp.get('qemu_cpu')}, runtimes {fp.get('runtimes')}; host: this "
             f"machine's onnxruntime and ai-edge-litert (pinned in pyproject.toml). Top-1 agreement with its 95% "
             f"Wilson lower end; the largest difference of any class probability on any image.", ""]
    if full:
        lines += [f"## The shipped artifacts on all {full[0]['images']} test images", "",
                  "| artifact | accuracy, emulated aarch64 | accuracy, x86 host | top-1 agreement [95% lower] | "
                  "max Δp | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| `{r['candidate']}` | {_pct(r['device_accuracy'])} | {_pct(r['host_accuracy'])} | "
                  f"{_pct(r['top1'])} [{_pct(r['top1_lo'])}] | {r['max_prob_diff']:.4f} | {r['seconds']} |"
                  for r in full]
        lines.append("")
    n = rows[0]["images"] if rows else 0
    agree_all = sum(r["top1"] == 1.0 for r in rows)
    lines += [f"## Every candidate in the pool ({len(rows)}), on {n} stratified test images", "",
              f"{agree_all} of {len(rows)} agree on every image; the lowest agreement is "
              f"{min((r['top1'] for r in rows), default=float('nan')) * 100:.2f}%.", "",
              *([f"Not compared: {', '.join(f'`{c}`' for c in cascades)} (early-exit cascades: the runner's "
                 f"--score has no cascade mode; their segments are the teacher's layers)", ""] if cascades else []),
              "| candidate | engine | top-1 agreement [95% lower] | max Δp | accuracy aarch64 / x86 | seconds |",
              "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["top1"], r["candidate"])):
        lines.append(f"| `{r['candidate']}` | {r['engine']} | {_pct(r['top1'])} [{_pct(r['top1_lo'])}] | "
                     f"{r['max_prob_diff']:.4f} | {_pct(r['device_accuracy'])} / {_pct(r['host_accuracy'])} | "
                     f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
