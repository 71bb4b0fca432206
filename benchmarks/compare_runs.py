"""Are two `dvc repro` runs the same? Weights, artifacts and metrics of two checkouts, compared.

    python benchmarks/compare_runs.py BEFORE_CHECKOUT AFTER_CHECKOUT

Checkpoints: weights bitwise, arch and metadata equal but for timings. Exported files and npz: bytes;
where bytes differ, TFLite flatbuffers are compared field by field (tensor names reported apart, as
they embed Python class paths) and npz files array by array. Metrics JSON: equal but for timings
(latency, seconds, memory, fingerprints), which no two runs share. Exit 0 when everything matches.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import harness

TIMING = re.compile(r"(seconds|latency|_ms$|^p\d\d$|^mean$|^std$|^min$|^max$|throughput|memory|rss|fingerprint|"
                    r"hostname|bench|warnings|remote|cpu|^measured$|^margin$)", re.I)


def strip(o: Any) -> Any:
    """``o`` without timing fields (and the budget rows' measured/margin, which are timings for latencies)."""
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if not TIMING.search(str(k))}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o


def diffs(x: Any, y: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, before, after) of every leaf that differs."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in sorted(set(x) | set(y), key=str) for d in diffs(x.get(k), y.get(k), f"{path}.{k}")]
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in diffs(u, v, f"{path}[{i}]")]
    return [] if x == y else [(path, x, y)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tflite_fields(path: Path) -> tuple[Any, list[bytes]]:
    """The flatbuffer as plain data without tensor names, and the names."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    names = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            names.append(t.name or b"")
            t.name = None

    def plain(o: Any) -> Any:
        if isinstance(o, (list, tuple)):
            return [plain(x) for x in o]
        if isinstance(o, np.ndarray):
            return (o.dtype.str, o.shape, o.tobytes())
        if hasattr(o, "__dict__"):
            return {k: plain(v) for k, v in sorted(vars(o).items())}
        return o

    return plain(model), names


def compare(a: Path, b: Path, rel: Path) -> tuple[bool, str]:
    pa, pb = a / rel, b / rel
    if not pb.exists():
        return False, "missing in the second run"
    da, db = pa.read_bytes(), pb.read_bytes()
    if da == db:
        return True, f"bytes identical {sha(da)}"
    if rel.suffix == ".pt":
        ca, cb = torch.load(pa, weights_only=True), torch.load(pb, weights_only=True)
        sa, sb = ca["state_dict"], cb["state_dict"]
        weights = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        meta = ca["arch"] == cb["arch"] and strip(ca["meta"]) == strip(cb["meta"])
        h = sha(b"".join(t.numpy().tobytes() for t in sa.values()))
        return weights and meta, (f"weights {'identical' if weights else 'DIFFER'} {h}, arch and metadata "
                                  f"{'identical' if meta else 'DIFFER'} but for timings")
    if rel.suffix == ".json":
        ja, jb = strip(json.loads(da)), strip(json.loads(db))
        if ja == jb:
            return True, "identical but for timings"
        return False, f"differs but for timings in: {', '.join(f'{k} {x} -> {y}' for k, x, y in diffs(ja, jb))}"
    if rel.suffix == ".npz":
        za, zb = np.load(pa), np.load(pb)
        diff = sorted(k for k in set(za.files) | set(zb.files)
                      if k not in za.files or k not in zb.files or not np.array_equal(za[k], zb[k]))
        return False, f"arrays differ: {diff}" if diff else "every array identical"
    if rel.suffix == ".tflite":
        (fa, na), (fb, nb) = tflite_fields(pa), tflite_fields(pb)
        renamed = sum(x != y for x, y in zip(na, nb))
        same = fa == fb
        return same, (f"{'every field identical' if same else 'FIELDS DIFFER'} but tensor names "
                      f"({renamed}/{len(na)} renamed, e.g. {nb[0][:60]!r}), bytes {sha(da)} vs {sha(db)}")
    return False, f"BYTES DIFFER {sha(da)} vs {sha(db)}"


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("before", help="the first checkout (its models/ and metrics/)")
    p.add_argument("after", help="the second checkout")
    args, _ = harness.parse(p, argv)
    a, b = Path(args.before), Path(args.after)
    files = sorted({p.relative_to(a) for d in ("models", "metrics") for p in (a / d).rglob("*")
                    if p.is_file() and p.name != ".gitkeep"})
    ok = True
    for rel in files:
        same, what = compare(a, b, rel)
        ok &= same or what == "every array identical"
        print(f"| {rel} | {what} |")
    print(f"\n{'ALL MATCH' if ok else 'SOME DIFFER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
