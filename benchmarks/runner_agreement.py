"""Does the runner measure what a plain timing loop measures? (evidence, not a test)

For each exported artifact, in the same run and alternating rounds, time batch-1 inference
(a) with the runner, exactly as the check stage calls it (a subprocess, `python -m edgecompress.deploy.runner`),
(b) with a plain loop over the same runtime, written here without any runner code.
Both use 1 thread. Prints a markdown table of the medians and their ratio.

Usage: python benchmarks/runner_agreement.py [models/export] [--runs 2000] [--rounds 3]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import harness


def plain_loop(model: Path, runs: int, warmup: int) -> float:
    """Median ms of ``runs`` batch-1 calls, timed with a bare perf_counter loop."""
    side = json.loads(Path(f"{model}.json").read_text())
    shape = side["input_shape"]
    dtype = np.dtype(side["input_dtype"])
    x = (np.random.default_rng(0).integers(-100, 100, shape) if dtype.kind == "i"
         else np.random.default_rng(0).standard_normal(shape)).astype(dtype)
    if model.suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        call = lambda: sess.run(None, {name: x})  # noqa: E731
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(model), num_threads=1)
        it.allocate_tensors()
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def call() -> None:
            it.set_tensor(i, x)
            it.invoke()
            it.get_tensor(o)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def runner(model: Path, runs: int, warmup: int) -> float:
    """p50 ms reported by the runner subprocess (no accuracy pass)."""
    cmd = [sys.executable, "-m", "edgecompress.deploy.runner", "--model", str(model), "--threads", "1",
           "--runs", str(runs), "--warmup", str(warmup), "--max-seconds", "120"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["latency_ms"]["p50"]


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__, description=__doc__)
    p.add_argument("artifacts", nargs="?", default="models/export")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    a, _ = harness.parse(p, argv)
    print("| artifact | runner p50 (ms) | plain loop median (ms) | runner / loop |")
    print("|---|---|---|---|")
    worst = 0.0
    for model in sorted(Path(a.artifacts).glob("*.onnx")) + sorted(Path(a.artifacts).glob("*.tflite")):
        name = model.name
        r, l = [], []
        for _ in range(a.rounds):  # alternate so drift (thermal, other load) hits both alike
            r.append(runner(model, a.runs, a.warmup))
            l.append(plain_loop(model, a.runs, a.warmup))
        rm, lm = statistics.median(r), statistics.median(l)
        worst = max(worst, abs(rm / lm - 1))
        print(f"| {name} | {rm:.4f} | {lm:.4f} | {rm / lm:.3f} |")
    print(f"\nlargest disagreement: {100 * worst:.1f}% ({'within' if worst <= 0.10 else 'OUTSIDE'} 10%)")


if __name__ == "__main__":
    main()
