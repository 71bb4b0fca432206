"""Print the results tables of docs/results.md (and the README's one) from a finished `dvc repro` (metrics/*.json).

Usage: python scripts/results_table.py   (from the repository root)
"""

from __future__ import annotations

import json
from pathlib import Path


def load(path: str) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def main() -> None:
    teacher, distill, prune, export = (load(f"metrics/{n}.json") for n in ("teacher", "distill", "prune", "export"))
    rows = ["| model | test accuracy | NLL | ECE (15 bins) | params | MACs |", "|---|---|---|---|---|---|"]

    def row(name: str, t: dict, params: int | None, macs: int | None) -> None:
        rows.append(f"| {name} | {pct(t.get('accuracy'))} | {t.get('nll', 0):.3f} | {t.get('ece', 0):.4f} | "
                    f"{params if params is not None else '-':,} | {macs if macs is not None else '-':,} |")

    if teacher:
        row("teacher (ResNet)", teacher["test"], teacher["params"], teacher["macs"])
    if distill.get("baseline_test"):
        row("student, labels only", distill["baseline_test"], distill["params"], distill["macs"])
    if distill:
        how = {"teacher": "KD", "ensemble": "ensemble KD" if distill.get("heads", 1) == 1 else
               f"multi-head ({distill['heads']} heads)"}.get(distill.get("source", "teacher"), "KD")
        scheme = distill.get("scheme", "offline")
        row(f"student, {how}" + ("" if scheme == "offline" else f" ({scheme})"), distill["test"],
            distill["params"], distill["macs"])
    if prune:
        row(f"student + {prune['method']} pruned {prune['ratio']:.0%}", prune["after"]["test"],
            prune["after"]["params"], prune["after"]["macs"])
    print("\n".join(rows))
    if export:
        ref = export["pytorch"]["accuracy"]
        print("\n| artifact | size | accuracy | vs PyTorch | top-1 agreement | NLL | ECE | Brier | entropy |")
        print("|---|---|---|---|---|---|---|---|---|")
        # Every exported artifact, in the order the export stage wrote them (heads.* carry no accuracy row).
        for name, m in export.items():
            if name == "pytorch" or "accuracy" not in m:
                continue
            print(f"| {name} | {m['size_bytes'] / 1024:.1f} KiB | {pct(m['accuracy'])} | "
                  f"{100 * (m['accuracy'] - ref):+.2f} pt | {pct(m['top1_agreement'])} | {m['nll']:.3f} | "
                  f"{m['ece']:.4f} | {m['brier']:.4f} | {m['entropy']:.4f} |")
    unc = load("metrics/uncertainty.json").get("models", {})
    if unc:
        print("\n| model | accuracy | NLL | ECE | Brier | entropy | MI | params | MACs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, r in unc.items():
            mi = r.get("mutual_information")
            print(f"| {name} | {pct(r['accuracy'])} | {r['nll']:.4f} | {r['ece']:.4f} | {r['brier']:.4f} | "
                  f"{r['entropy']:.4f} | {'-' if mi is None else f'{mi:.4f}'} | {r['params']:,} | {r['macs']:,} |")
    builds(unc)
    checks = sorted(Path("metrics/check").glob("*.json"))
    if checks:
        print("\n| target | artifact | runtime (active provider) | p50 ms | p90 ms | p99 ms | peak RSS | accuracy | size | status |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for p in checks:
            r = json.loads(p.read_text())
            lat, art, rt = r.get("latency_ms") or {}, r.get("artifact") or {}, r.get("runtime") or {}
            active = ",".join(rt.get("active_providers") or []) or ("XNNPACK" if rt.get("xnnpack") else "")
            mem = (r.get("memory") or {}).get("peak_rss_mb")
            print(f"| {r.get('target')} | {art.get('precision')} {art.get('format')} | {rt.get('name')} {rt.get('version')} "
                  f"({active}) | {lat.get('p50', 0):.3f} | {lat.get('p90', 0):.3f} | {lat.get('p99', 0):.3f} | "
                  f"{'-' if mem is None else f'{mem:.0f} MB'} | {pct(r.get('accuracy'))} | "
                  f"{(art.get('size_bytes') or 0) / 1024:.1f} KiB | {r.get('status')} |")

def builds(unc: dict) -> None:
    """Per target: what its build chose, the check's test figures on the device, and the gap to the teacher."""
    import yaml

    names = yaml.safe_load(Path("params.yaml").read_text())["check"]["targets"]
    teacher = (unc.get("teacher") or {}).get("accuracy")
    print("\n| target | shipped | size | package | its last build: measured / cached / skipped / of | val accuracy | "
          "test accuracy (images) | vs teacher | ECE | p50 ms | p90 ms | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        b, c = load(f"metrics/build/{name}.json"), load(f"metrics/check/{name}.json")
        if not b or not c:
            continue
        lat = c.get("latency_ms") or {}
        gap = "-" if teacher is None or c.get("accuracy") is None else f"{100 * (c['accuracy'] - teacher):+.2f} pt"
        ece = c.get("ece")
        pkg = "-" if b.get("download_bytes") is None else f"{b['download_bytes'] / 1024:.1f} KiB"
        print(f"| {name} | `{b['chosen']}` | {b['size_bytes'] / 1024:.1f} KiB | {pkg} | {b['device_runs']} / {b['cache_hits']} / "
              f"{b['skipped']} / {b['candidates']} | {pct(b['val_accuracy'])} | {pct(c.get('accuracy'))} "
              f"({c.get('accuracy_samples'):,}) | {gap} | {'-' if ece is None else f'{ece:.4f}'} | "
              f"{lat.get('p50', 0):.3f} | {lat.get('p90', 0):.3f} | {c.get('status')} |")


if __name__ == "__main__":
    main()
