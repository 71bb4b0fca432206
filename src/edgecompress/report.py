"""The pipeline's summary: every target's check result and a latency-vs-accuracy view of all artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecompress.artifacts import REGISTRY
from edgecompress.deploy.bench import local_command, run_local
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json


def load_checks(directory: str | Path, targets: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each target's check result (metrics/check/<name>.json), in ``check.targets`` order."""
    checks = []
    for name in targets:
        path = Path(directory) / f"{name}.json"
        if not path.exists():
            raise EdgeCompressError(f"{path} missing: check@{name} has not run (dvc repro)")
        checks.append(read_json(path, f"check result of {name}"))
    return checks


def measure_artifacts(artifacts: Path, export_metrics: dict[str, Any], runs: int = 300,
                      threads: int = 1) -> list[dict[str, Any]]:
    """Latency (this machine, batch 1, ``threads`` threads) of every artifact, beside its test accuracy/ECE.

    The runner runs in a subprocess exactly as in the check stage; the accuracy comes from the
    export stage's full-test-set verification, so the two axes are measured independently.
    """
    points = []
    for name in REGISTRY:
        model = artifacts / name
        if not model.exists():
            continue
        res = run_local(local_command(["--model", str(model), "--threads", str(threads), "--runs", str(runs),
                                       "--warmup", "50", "--max-seconds", "30"]), model, 300, "report")
        m = export_metrics.get(name, {})
        points.append({"artifact": name, "p50_ms": res["latency_ms"]["p50"], "p90_ms": res["latency_ms"]["p90"],
                       "accuracy": m.get("accuracy"), "ece": m.get("ece"), "nll": m.get("nll"),
                       "size_kib": round(model.stat().st_size / 1024, 1), "threads": threads,
                       "runtime": f"{res['runtime'].get('name')} {res['runtime'].get('version')}"})
    return points


def reliability(artifacts: Path, testset: Path) -> dict[str, list[dict[str, Any]]]:
    """Reliability-diagram rows (15 confidence bins) of every artifact on the test set, via its own runtime."""
    import numpy as np

    from edgecompress.compression.export import run_artifact
    from edgecompress.data import normalize_images
    from edgecompress.metrics import reliability_diagram, softmax

    with np.load(testset) as d:
        x_raw, y = d["x"], d["y"]
    out = {}
    for name in REGISTRY:
        model = artifacts / name
        if not model.exists():
            continue
        side = read_json(f"{model}.json", "artifact sidecar")
        x = normalize_images(x_raw, side["mean"], side["std"])
        probs = softmax(run_artifact(model, side, x).astype(np.float64))
        out[name] = [{"artifact": name, **row} for row in reliability_diagram(probs, y) if row["count"]]
    return out


def summary_markdown(checks: list[dict[str, Any]], points: list[dict[str, Any]], fingerprint: dict[str, Any]) -> str:
    """One table per concern: targets (pass/fail/proxy) and all artifacts (latency vs accuracy)."""
    lines = ["# edgecompress report", "", "## Targets", "",
             "| target | artifact | device | p50 ms | p90 ms | p99 ms | accuracy | size KiB | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in checks:
        lat = r.get("latency_ms") or {}
        art = r.get("artifact") or {}
        acc = r.get("accuracy")
        lines.append(f"| {r['target']} | {art.get('precision')} {art.get('format')} | {r.get('device')} | "
                     f"{lat.get('p50', float('nan')):.4f} | {lat.get('p90', float('nan')):.4f} | "
                     f"{lat.get('p99', float('nan')):.4f} | {'-' if acc is None else f'{acc:.4f}'} | "
                     f"{(art.get('size_bytes') or 0) / 1024:.1f} | {r['status']} |")
    lines += ["", "`proxy-*`: measured on hardware that does not match the profile (see each target's report).",
              "", "## All artifacts on this machine (batch 1, 1 thread)", "",
              "| artifact | p50 ms | p90 ms | accuracy | ECE | NLL | size KiB | runtime |",
              "|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['artifact']} | {p['p50_ms']:.4f} | {p['p90_ms']:.4f} | {p['accuracy']:.4f} | "
                     f"{p['ece']:.4f} | {p['nll']:.3f} | {p['size_kib']} | {p['runtime']} |")
    cpu = fingerprint.get("cpu_model") or fingerprint.get("cpu")
    lines += ["", f"Measured on {fingerprint.get('hostname')} ({fingerprint.get('arch')}, {cpu}, "
              f"{fingerprint.get('cores')} cores).", ""]
    return "\n".join(lines)
