"""Standalone benchmark runner: one artifact, its runtime, latency/memory/accuracy as one JSON object.

``--model`` may also be a cascade manifest (``*.cascade.json``, written by edgecompress.compression.cascade):
early-exit segments chained image by image, each image leaving at the first confident exit.

This file is copied alone onto devices, so at module level it imports only the standard library and
numpy; the runtime (onnxruntime or LiteRT) is imported inside the functions that need it.

    python -m edgecompress.deploy.runner --model int8.tflite --data testset.npz --threads 4

prints one JSON object on stdout; on a user-fixable error it prints {"error": "..."} and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import socket
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# 2: --score (per-image uncertainty of a pool); 3: cascade manifests (early-exit segments, exit_fractions);
# 4: cascade segments must lie inside the manifest's folder, a manifest must be a JSON object
RUNNER_VERSION = 4
ENGINE_FOR_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert"}
# ARM "CPU part" ids (implementer 0x41) -> core name; aarch64 kernels print no "model name".
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
             "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xc07": "Cortex-A7",
             "0xc09": "Cortex-A9", "0xc0f": "Cortex-A15"}


class RunnerError(Exception):
    """A failure the user can fix (missing file, runtime not installed, corrupt model)."""


class Session:
    """A loaded model: ``run(x)`` returns the raw output array; ``info`` describes the runtime."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], info: dict[str, Any],
                 input_dtype: str, warnings: list[str],
                 run_all: Callable[[np.ndarray], list[np.ndarray]] | None = None) -> None:
        self._run = run
        self._run_all = run_all
        self.info = info
        self.input_dtype = input_dtype
        self.warnings = warnings

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output (a heads artifact has two: mean and per-head probabilities)."""
        return self._run_all(x) if self._run_all else [self._run(x)]


def _onnx_session(model_path: str, threads: int | None, providers: list[str] | None) -> Session:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RunnerError(f"onnxruntime is not installed ({e}); pip install onnxruntime") from None
    requested = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    warnings = [f"provider {p} was requested but this onnxruntime build does not have it "
                f"(available: {', '.join(available)})" for p in requested if p not in available]
    # Passing unknown providers only logs to stderr; filter them and report the fallback ourselves.
    usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1  # one model, sequential graph: inter-op threads only add noise
    try:
        sess = ort.InferenceSession(model_path, sess_options=so, providers=usable)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise RunnerError(f"onnxruntime cannot load {model_path}: {e}") from None
    active = sess.get_providers()
    for p in usable:
        if p not in active:
            warnings.append(f"provider {p} is available but failed to initialize; onnxruntime fell back to "
                            f"{', '.join(active)} (check CUDA/cuDNN libraries)")
    fallback = any(p not in active for p in requested)
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8"}

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out.name], {inp.name: x})[0]

    def run_all(x: np.ndarray) -> list[np.ndarray]:
        return sess.run(None, {inp.name: x})

    info = {"name": "onnxruntime", "version": ort.__version__, "threads": threads,
            "requested_providers": requested, "active_providers": active, "available_providers": available,
            "provider_fallback": fallback, "delegate": None, "xnnpack": None}
    return Session(run, info, dtypes.get(inp.type, inp.type), warnings, run_all)


def _litert_interpreter_module() -> tuple[Any, str, str]:
    """(module with Interpreter/OpResolverType, package name, version) for the first LiteRT found."""
    from importlib import metadata

    for mod_name, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"),
                           ("tflite_runtime.interpreter", "tflite-runtime"), ("tensorflow.lite", "tensorflow")):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        try:
            return mod, dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            return mod, dist, "unknown"
    raise RunnerError("no TFLite runtime is installed; pip install ai-edge-litert "
                      "(or tflite-runtime on older devices)")


def _litert_session(model_path: str, threads: int | None, xnnpack: bool, batch: int) -> Session:
    mod, dist, version = _litert_interpreter_module()
    kwargs: dict[str, Any] = {"model_path": model_path, "num_threads": threads}
    if not xnnpack:
        resolver = getattr(mod, "OpResolverType", None) or mod.experimental.OpResolverType
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = mod.Interpreter(**kwargs)
        i_d = interp.get_input_details()[0]
        interp.allocate_tensors()
    except Exception as e:  # the interpreter raises ValueError/RuntimeError for bad flatbuffers
        raise RunnerError(f"LiteRT cannot load {model_path}: {e}") from None
    model_batch = int(i_d["shape"][0])
    if model_batch != batch:
        try:
            interp.resize_tensor_input(i_d["index"], [batch, *[int(v) for v in i_d["shape"][1:]]])
            interp.allocate_tensors()
        except Exception as e:
            # Converters often bake the batch into Reshape ops, so resizing the input cannot work.
            raise RunnerError(f"{model_path} has a fixed batch size of {model_batch} and cannot run batch {batch} "
                              f"({e}); use batch {model_batch} or export with a dynamic batch") from None
    o_index = interp.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(i_d["index"], x)
        interp.invoke()
        return interp.get_tensor(o_index)  # get_tensor copies, so the buffer can be reused

    def run_all(x: np.ndarray) -> list[np.ndarray]:
        interp.set_tensor(i_d["index"], x)
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]

    info = {"name": dist, "version": version, "threads": threads, "requested_providers": None,
            "active_providers": None, "available_providers": None, "provider_fallback": False,
            # LiteRT applies XNNPACK by default; the resolver type is the only switch we control.
            "delegate": "xnnpack" if xnnpack else "none", "xnnpack": xnnpack}
    return Session(run, info, np.dtype(i_d["dtype"]).name, [], run_all)


def load_session(model_path: str | Path, engine: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, xnnpack: bool = True, batch: int = 1) -> Session:
    """Load ``model_path`` with its runtime (engine defaults from the file extension)."""
    path = Path(model_path)
    if not path.is_file():
        raise RunnerError(f"model {path} does not exist")
    engine = engine or ENGINE_FOR_SUFFIX.get(path.suffix)
    if engine == "onnxruntime":
        return _onnx_session(str(path), threads, providers)
    if engine == "litert":
        if providers:
            raise RunnerError("--providers applies only to onnxruntime models")
        return _litert_session(str(path), threads, xnnpack, batch)
    raise RunnerError(f"cannot choose a runtime for {path}: engine {engine!r} is not onnxruntime or litert")


INPUT_KEYS = ("input_shape", "layout", "input_dtype", "mean", "std")  # how to feed the model


def _read_json(path: Path, what: str, keys: tuple[str, ...], absent: str, fix: str) -> dict[str, Any]:
    """``path`` parsed, with every one of ``keys``; one RunnerError naming ``what`` otherwise."""
    if not path.is_file():
        raise RunnerError(f"{what} {path} does not exist{absent}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunnerError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RunnerError(f"{what} {path} is a JSON {type(doc).__name__}, not an object; {fix}")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise RunnerError(f"{what} {path} lacks {', '.join(missing)}; {fix}")
    return doc


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The export stage's JSON next to the model (input layout, normalization, int8 quantization)."""
    return _read_json(Path(path), "sidecar", INPUT_KEYS, " (the export stage writes MODEL.json next to MODEL)",
                      "re-run the export stage")


def preprocess(x_uint8_nchw: np.ndarray, sidecar: dict[str, Any]) -> np.ndarray:
    """Raw uint8 NCHW pixels -> the model's input: normalized, in its layout and dtype."""
    c = x_uint8_nchw.shape[1]
    mean = np.asarray(sidecar["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(sidecar["std"], np.float32).reshape(1, -1, 1, 1)
    if mean.shape[1] not in (1, c) or std.shape[1] not in (1, c):
        raise RunnerError(f"sidecar mean/std have {mean.shape[1]}/{std.shape[1]} entries but images have {c} channels")
    x = (x_uint8_nchw.astype(np.float32) / 255.0 - mean) / std
    if sidecar["layout"] == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    dtype = sidecar["input_dtype"]
    if dtype in ("int8", "uint8"):
        q = sidecar.get("input_quant")
        if not q:
            raise RunnerError(f"sidecar says input_dtype {dtype} but has no input_quant scale/zero_point")
        lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
        x = np.clip(np.round(x / q["scale"]) + q["zero_point"], lo, hi)
    return np.ascontiguousarray(x.astype(dtype))


def postprocess(y: np.ndarray, sidecar: dict[str, Any]) -> np.ndarray:
    """Raw model output -> float logits (dequantized when the output is int8)."""
    q = sidecar.get("output_quant")
    if q and y.dtype in (np.int8, np.uint8):
        return (y.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])
    return y.astype(np.float32)


def _check_shape(x: np.ndarray, sidecar: dict[str, Any]) -> None:
    want = list(sidecar["input_shape"])[1:]
    if list(x.shape[1:]) != want:
        raise RunnerError(f"test images become input shape {list(x.shape[1:])} per sample but the model wants "
                          f"{want} ({sidecar['layout']}); is the test set from the same dataset?")


def load_testset(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 N,C,H,W; y int64) from the export stage's testset.npz."""
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"test set {path} does not exist (the export stage writes testset.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # One line, no traceback: a truncated copy is the usual cause (a check reads this message).
        raise RunnerError(f"test set {path} is unreadable or lacks x/y arrays ({type(e).__name__}: {e}); "
                          f"copy it again or re-run the export stage") from None
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y):
        raise RunnerError(f"test set {path}: x must be uint8 (N,C,H,W) with one label per image; "
                          f"got x {x.dtype} {x.shape}, y {y.shape}")
    return x, y


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (None where it cannot be read)."""
    # Linux: VmHWM belongs to the current address space. ru_maxrss survives exec, so a runner
    # started from a big parent (a DVC stage with torch loaded) would report the parent's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def latency_stats(ns: list[int]) -> dict[str, float]:
    """Latency percentiles etc. in milliseconds from per-call nanoseconds."""
    ms = np.asarray(ns, np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()),
            "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()), "n": int(len(ms))}


def scores(session: Session, sidecar: dict[str, Any], x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, float]:
    """Top-1 accuracy, NLL and ECE (15 equal-width confidence bins, as edgecompress.metrics computes
    them; this file needs numpy only) in batches of the benchmark's batch size (some TFLite graphs
    fix the batch)."""
    parts = []
    for i in range(0, len(x), batch):
        xb = preprocess(x[i:i + batch], sidecar)
        n = len(xb)
        if n < batch:  # pad the last batch instead of resizing the model
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), xb.dtype)])
        parts.append(postprocess(session.run(xb), sidecar)[:n].astype(np.float64))
    return _classification(np.concatenate(parts), y)


def _classification(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy, NLL and ECE of float64 ``logits`` against labels ``y``."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, 16)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, 14)
    ece = sum((idx == b).sum() / len(y) * abs(correct[idx == b].mean() - conf[idx == b].mean())
              for b in range(15) if (idx == b).any())
    p_true = probs[np.arange(len(y)), y]
    return {"accuracy": float(correct.mean()), "nll": float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()),
            "ece": float(ece)}


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(-1)


def score_pool(session: Session, sidecar: dict[str, Any], x: np.ndarray, batch: int = 1) -> dict[str, Any]:
    """Per-image uncertainty of the uint8 NCHW pool ``x``: predictive entropy, the guess and its confidence
    and, for an artifact with per-head (or per-member) probabilities (N, M, C), the mutual information
    between the prediction and the heads (what active learning's BALD ranks by), all on the device."""
    means, heads = [], []
    probs_out = "head_probs" in (sidecar.get("outputs") or {})  # heads artifacts emit probabilities
    for i in range(0, len(x), batch):
        xb = preprocess(x[i:i + batch], sidecar)
        n = len(xb)
        if n < batch:
            xb = np.concatenate([xb, np.zeros((batch - n, *xb.shape[1:]), xb.dtype)])
        outs = [postprocess(o, sidecar)[:n].astype(np.float64) for o in session.run_all(xb)]
        two = next((o for o in outs if o.ndim == 2), None)
        three = next((o for o in outs if o.ndim == 3), None)
        if two is None:
            raise RunnerError(f"the model's outputs have shapes {[o.shape for o in outs]}; scoring needs (N, C)")
        if not probs_out:  # logits (or log-probabilities: softmax(log p) = p)
            z = np.exp(two - two.max(1, keepdims=True))
            two = z / z.sum(1, keepdims=True)
        means.append(two)
        if three is not None:
            heads.append(three)
    p = np.concatenate(means)
    out: dict[str, Any] = {"images": int(len(p)), "entropy": _entropy(p).round(6).tolist(),
                           "guess": p.argmax(1).tolist(), "confidence": p.max(1).round(6).tolist(),
                           "mutual_information": None}
    if heads:
        h = np.concatenate(heads)  # (N, M, C)
        out["mutual_information"] = np.clip(_entropy(p) - _entropy(h).mean(1), 0.0, None).round(6).tolist()
    return out


def benchmark(session: Session, sidecar: dict[str, Any], x: np.ndarray | None = None, y: np.ndarray | None = None,
              warmup: int = 10, runs: int = 100, batch: int = 1, max_seconds: float = 60.0,
              accuracy_samples: int | None = None) -> dict[str, Any]:
    """Warm up, time ``runs`` calls (stopping early after ``max_seconds``), then accuracy on (x, y)."""
    warnings: list[str] = []
    if x is not None:
        # Real images: some int8 kernels take data-dependent paths, so random noise could mislead.
        raw = np.resize(x[:batch], (batch, *x.shape[1:]))
    else:
        raw = np.random.default_rng(0).integers(0, 256, (batch, *_nchw_shape(sidecar)), dtype=np.uint8)
    inp = preprocess(raw, sidecar)
    _check_shape(inp, sidecar)
    if session.input_dtype != inp.dtype.name:
        raise RunnerError(f"sidecar says input_dtype {sidecar['input_dtype']} but the model takes "
                          f"{session.input_dtype}; the sidecar is stale, re-run the export stage")
    try:
        for _ in range(warmup):
            session.run(inp)
        times: list[int] = []
        deadline = time.perf_counter_ns() + int(max_seconds * 1e9)
        stopped_by = "runs"
        while len(times) < runs:
            t0 = time.perf_counter_ns()
            session.run(inp)
            t1 = time.perf_counter_ns()
            times.append(t1 - t0)
            if t1 >= deadline and len(times) < runs:
                stopped_by = "max_seconds"
                warnings.append(f"stopped after {len(times)} of {runs} runs at the {max_seconds:g} s cap; "
                                f"high percentiles rest on few samples")
                break
        measured: dict[str, float | None] = {"accuracy": None, "nll": None, "ece": None}
        n_acc = None
        if x is not None and y is not None:
            n_acc = len(x) if accuracy_samples is None else min(accuracy_samples, len(x))
            # The first N images: deterministic, and the same subset on every device.
            measured = dict(scores(session, sidecar, x[:n_acc], y[:n_acc], batch))
    except RunnerError:
        raise
    except Exception as e:  # a runtime failing mid-run (bad shapes, unsupported op) is reported, not crashed
        raise RunnerError(f"inference failed: {type(e).__name__}: {e}") from None
    stats = latency_stats(times)
    return {"bench": {"warmup": warmup, "runs_requested": runs, "batch": batch, "max_seconds": max_seconds,
                      "stopped_by": stopped_by},
            "latency_ms": stats, "throughput_per_s": batch * 1000.0 / stats["mean"],
            **measured, "accuracy_samples": n_acc,
            "memory": {"peak_rss_mb": peak_rss_mb()},
            "warnings": warnings}


def _nchw_shape(sidecar: dict[str, Any]) -> list[int]:
    shape = list(sidecar["input_shape"])[1:]
    return [shape[2], shape[0], shape[1]] if sidecar["layout"] == "NHWC" else shape


def _cpu_model() -> tuple[str, str | None]:
    """(cpu model, board) from /proc/cpuinfo and the device tree; platform.processor() elsewhere."""
    fields: dict[str, list[str]] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            k, sep, v = line.partition(":")
            if sep and v.strip():
                # Case matters: x86 "model" is a number, the Raspberry Pi's "Model" names the board.
                fields.setdefault(k.strip(), []).append(v.strip())
    except OSError:
        pass
    parts: list[str] = []
    for key in ("model name", "Hardware"):
        parts += fields.get(key, [])
    if fields.get("CPU implementer", [""])[0] == "0x41":
        parts += [ARM_PARTS[p] for p in dict.fromkeys(fields.get("CPU part", [])) if p in ARM_PARTS]
    board = fields.get("Model", [None])[0]
    try:
        board = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or board
    except OSError:
        pass
    # Dedupe while keeping order: big.LITTLE SoCs list each core type many times.
    cpu = ", ".join(dict.fromkeys(parts)) or platform.processor() or "unknown"
    return cpu, board


def fingerprint(runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """Which machine and software produced the numbers."""
    cpu, board = _cpu_model()
    fp = {"hostname": socket.gethostname(), "arch": platform.machine(), "cpu_model": cpu, "board": board,
          "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
          "numpy": np.__version__}
    if runtime:
        fp["runtime"] = runtime["name"]
        fp["runtime_version"] = runtime["version"]
    return fp


# Distributions that provide each engine, in the order the runner tries them.
RUNTIME_DISTS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "litert": ("ai-edge-litert", "tflite-runtime", "tensorflow")}


def probe() -> dict[str, Any]:
    """The machine and the installed runtimes' versions, without loading a model or a runtime.

    What a measurement cache keys on: the same artifact measured here again would give these.
    """
    from importlib import metadata

    runtimes: dict[str, str | None] = {}
    for engine, dists in RUNTIME_DISTS.items():
        runtimes[engine] = None
        for dist in dists:
            try:
                runtimes[engine] = f"{dist} {metadata.version(dist)}"
                break
            except metadata.PackageNotFoundError:
                continue
    return {"runner_version": RUNNER_VERSION, "fingerprint": fingerprint(), "runtimes": runtimes}


def run(model: str | Path, sidecar: str | Path | None = None, data: str | Path | None = None,
        engine: str | None = None, threads: int | None = None, providers: list[str] | None = None,
        xnnpack: bool = True, warmup: int = 10, runs: int = 100, batch: int = 1, max_seconds: float = 60.0,
        accuracy_samples: int | None = None) -> dict[str, Any]:
    """Everything the CLI does, as a function: returns the result dict (raises RunnerError)."""
    if is_cascade(model):
        if sidecar is not None or batch != 1:
            raise RunnerError("a cascade manifest is its own sidecar and runs batch 1 (images leave at different "
                              "exits): drop --sidecar and --batch")
        return run_cascade(model, data, engine, threads, providers, xnnpack, warmup, runs, max_seconds,
                           accuracy_samples)
    baseline = peak_rss_mb()
    model = Path(model)
    if not model.is_file():
        raise RunnerError(f"model {model} does not exist")
    sc = read_sidecar(sidecar or f"{model}.json")
    x, y = load_testset(data) if data else (None, None)
    if x is not None:
        _check_shape(preprocess(x[:1], sc), sc)
    session = load_session(model, engine, threads, providers, xnnpack, batch)
    res = benchmark(session, sc, x, y, warmup, runs, batch, max_seconds, accuracy_samples)
    info = session.info
    warnings = session.warnings + res.pop("warnings")
    res["memory"] = {"baseline_rss_mb": baseline, **res["memory"]}
    return {"runner_version": RUNNER_VERSION, "model": str(model), "model_size_bytes": model.stat().st_size,
            "format": sc.get("format"), "precision": sc.get("precision"),
            "runtime": info, "provider_fallback": info["provider_fallback"],
            "requested_providers": info["requested_providers"], "active_providers": info["active_providers"],
            **res,
            "fingerprint": fingerprint(info), "warnings": warnings}


def score(model: str | Path, pool: str | Path, sidecar: str | Path | None = None, engine: str | None = None,
          threads: int | None = None, providers: list[str] | None = None, xnnpack: bool = True,
          batch: int = 1) -> dict[str, Any]:
    """``--score``: the pool's per-image uncertainty with the artifact's own runtime (raises RunnerError)."""
    model = Path(model)
    if not model.is_file():
        raise RunnerError(f"model {model} does not exist")
    sc = read_sidecar(sidecar or f"{model}.json")
    try:
        with np.load(pool, allow_pickle=False) as z:
            x = z["x"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise RunnerError(f"pool {pool} is unreadable or has no x array ({type(e).__name__}: {e})") from None
    if x.ndim != 4 or x.dtype != np.uint8 or not len(x):
        raise RunnerError(f"pool {pool}: x must be uint8 (N, C, H, W) with N >= 1; got {x.dtype} {x.shape}")
    _check_shape(preprocess(x[:1], sc), sc)
    session = load_session(model, engine, threads, providers, xnnpack, batch)
    t0 = time.perf_counter()
    res = score_pool(session, sc, x, batch)
    return {"runner_version": RUNNER_VERSION, "model": str(model), "runtime": session.info,
            "seconds": time.perf_counter() - t0, **res, "fingerprint": fingerprint(session.info)}


# --------------------------------------------------------------------------- early-exit cascades


def is_cascade(path: str | Path) -> bool:
    """Whether ``path`` names a cascade manifest (``*.cascade.json`` or ``cascade.json``)."""
    name = Path(path).name
    return name == "cascade.json" or name.endswith(".cascade.json")


def read_cascade(path: str | Path) -> dict[str, Any]:
    """The manifest, checked: segment files exist, one threshold (a number or null) per early exit."""
    path = Path(path)
    m = _read_json(path, "cascade manifest", ("segments", "thresholds", *INPUT_KEYS), "", "re-export the cascade")
    segs, thr = m["segments"], m["thresholds"]
    if not isinstance(segs, list) or not segs or not all(isinstance(s, dict) and "file" in s for s in segs):
        raise RunnerError(f"cascade manifest {path}: segments must be a non-empty list of {{\"file\": ...}} entries")
    if not isinstance(thr, list) or len(thr) != len(segs) - 1:
        raise RunnerError(f"cascade manifest {path}: {len(segs)} segments need {len(segs) - 1} thresholds "
                          f"(one per early exit), got {thr!r}")
    if any(t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))) for t in thr):
        raise RunnerError(f"cascade manifest {path}: thresholds must be numbers or null (never exit), got {thr!r}")
    for k, s in enumerate(segs):
        f = segment_path(path.parent, s["file"], f"cascade manifest {path}: segment {k}")
        if not f.is_file():
            raise RunnerError(f"cascade manifest {path}: segment {k} file {f} does not exist (copy every segment "
                              f"next to the manifest)")
    return m


def segment_path(folder: Path, name: Any, what: str, fix: str = "re-export the cascade") -> Path:
    """``folder / name`` for a segment file name read from a manifest or index, refused (RunnerError naming
    ``what``) unless it is a string that resolves inside ``folder``, symlinks followed: a manifest must not
    make a check load, or copy to a device, a file from elsewhere (a key, another artifact)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise RunnerError(f"{what}: file {name!r} must be a file name (a string); {fix}")
    f = folder / name
    try:
        inside = folder.resolve() in f.resolve().parents
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise RunnerError(f"{what}: file {name!r} lies outside the cascade's folder {folder} (a segment must be "
                          f"a file beside its manifest, symlinks included); {fix}")
    return f


def _cascade_step(session: Session, h: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, feature map or None) of one segment; told apart by rank, as converters rename outputs."""
    outs = session.run_all(h)
    logits = next((o for o in outs if o.ndim == 2), None)
    if logits is None:
        raise RunnerError(f"a cascade segment's outputs have shapes {[o.shape for o in outs]}; need (1, C) logits")
    return logits, next((o for o in outs if o.ndim == 4), None)


def cascade_infer(sessions: list[Session], thresholds: list[float | None], inp: np.ndarray) -> tuple[np.ndarray, int]:
    """(float64 logits (1, C), exit index) of one preprocessed image: segment k's exit is taken when its max
    softmax probability >= thresholds[k] (None: never); the last segment always answers."""
    h = inp
    last = len(sessions) - 1
    for k, session in enumerate(sessions):
        logits, feat = _cascade_step(session, h)
        if k == last:
            return logits.astype(np.float64), k
        t = thresholds[k]
        z = logits[0].astype(np.float64)
        if t is not None and 1.0 / np.exp(z - z.max()).sum() >= t:  # max softmax = 1 / sum exp(z - max z)
            return logits.astype(np.float64), k
        if feat is None:
            raise RunnerError(f"cascade segment {k} has no feature-map output for segment {k + 1}")
        h = feat
    raise AssertionError("unreachable")


def run_cascade(model: str | Path, data: str | Path | None = None, engine: str | None = None,
                threads: int | None = None, providers: list[str] | None = None, xnnpack: bool = True,
                warmup: int = 10, runs: int = 100, max_seconds: float = 60.0,
                accuracy_samples: int | None = None) -> dict[str, Any]:
    """A cascade manifest benchmarked at batch 1: whole-cascade latency per image (timed calls cycle over the
    test images, since the exit taken depends on the image), accuracy and the fraction leaving at each exit."""
    baseline = peak_rss_mb()
    path = Path(model)
    m = read_cascade(path)
    segs = [path.parent / s["file"] for s in m["segments"]]
    x, y = load_testset(data) if data else (None, None)
    warnings: list[str] = []
    if x is None:
        warnings.append("no --data: timed on random images, whose exits say nothing about real ones")
        x_raw = np.random.default_rng(0).integers(0, 256, (max(runs, 1), *_nchw_shape(m)), dtype=np.uint8)
    else:
        x_raw = x
    sessions = [load_session(f, engine, threads, providers, xnnpack, 1) for f in segs]
    n_acc = None if y is None else (len(x_raw) if accuracy_samples is None else min(accuracy_samples, len(x_raw)))
    n_pre = max(min(runs, len(x_raw)), n_acc or 0)
    inputs = preprocess(x_raw[:n_pre], m)  # outside the timing, as benchmark() does
    _check_shape(inputs[:1], m)
    if sessions[0].input_dtype != inputs.dtype.name:
        raise RunnerError(f"manifest says input_dtype {m['input_dtype']} but segment 0 takes "
                          f"{sessions[0].input_dtype}; re-export the cascade")
    thr = [None if t is None else float(t) for t in m["thresholds"]]
    n_in = min(runs, len(inputs))
    try:
        for i in range(warmup):
            cascade_infer(sessions, thr, inputs[i % n_in:i % n_in + 1])
        times: list[int] = []
        timed_exits = np.zeros(len(sessions), np.int64)
        deadline = time.perf_counter_ns() + int(max_seconds * 1e9)
        stopped_by = "runs"
        while len(times) < runs:
            i = len(times) % n_in
            t0 = time.perf_counter_ns()
            _, k = cascade_infer(sessions, thr, inputs[i:i + 1])
            t1 = time.perf_counter_ns()
            times.append(t1 - t0)
            timed_exits[k] += 1
            if t1 >= deadline and len(times) < runs:
                stopped_by = "max_seconds"
                warnings.append(f"stopped after {len(times)} of {runs} runs at the {max_seconds:g} s cap")
                break
        measured: dict[str, Any] = {"accuracy": None, "nll": None, "ece": None, "exit_fractions": None}
        if y is not None and n_acc:
            outs = [cascade_infer(sessions, thr, inputs[i:i + 1]) for i in range(n_acc)]
            measured = dict(_classification(np.concatenate([o[0] for o in outs]), y[:n_acc]))
            counts = np.bincount([o[1] for o in outs], minlength=len(sessions))
            measured["exit_fractions"] = (counts / n_acc).tolist()
    except RunnerError:
        raise
    except Exception as e:  # a runtime failing mid-run is reported, not crashed
        raise RunnerError(f"cascade inference failed: {type(e).__name__}: {e}") from None
    stats = latency_stats(times)
    info = sessions[0].info
    return {"runner_version": RUNNER_VERSION, "model": str(path), "kind": "cascade",
            "model_size_bytes": sum(f.stat().st_size for f in segs), "format": m.get("format"),
            "precision": m.get("precision"), "segments": [str(f) for f in segs], "thresholds": m["thresholds"],
            "runtime": info, "provider_fallback": any(s.info["provider_fallback"] for s in sessions),
            "requested_providers": info["requested_providers"], "active_providers": info["active_providers"],
            "bench": {"warmup": warmup, "runs_requested": runs, "batch": 1, "max_seconds": max_seconds,
                      "stopped_by": stopped_by, "images_cycled": n_in},
            "latency_ms": stats, "throughput_per_s": 1000.0 / stats["mean"], **measured,
            "timed_exit_fractions": (timed_exits / max(len(times), 1)).tolist(), "accuracy_samples": n_acc,
            "memory": {"baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()},
            "fingerprint": fingerprint(info), "warnings": [w for s in sessions for w in s.warnings] + warnings}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send native and Python stdout to stderr, so runtime log lines cannot corrupt our one JSON line."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgecompress.deploy.runner", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model file (.onnx or .tflite) or cascade manifest (*.cascade.json); "
                                   "required unless --probe")
    p.add_argument("--probe", action="store_true", help="print the machine and runtime versions, measure nothing")
    p.add_argument("--sidecar", help="sidecar JSON (default: MODEL.json)")
    p.add_argument("--data", help="testset.npz (x uint8 NCHW, y labels) for accuracy and real inputs")
    p.add_argument("--engine", choices=("onnxruntime", "litert"), help="default: from the model's extension")
    p.add_argument("--threads", type=int, help="runtime threads (default: the runtime's own)")
    p.add_argument("--providers", help="onnxruntime providers, comma-separated, in priority order")
    p.add_argument("--no-xnnpack", action="store_true", help="LiteRT: builtin kernels only, no XNNPACK")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on the timed runs")
    p.add_argument("--accuracy-samples", type=int, help="first N test images (default: all)")
    p.add_argument("--score", help="pool.npz (x uint8 NCHW): per-image entropy, guess and (heads artifacts) "
                                   "mutual information instead of a benchmark")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    try:
        if not args.model:
            raise RunnerError("--model is required (or --probe)")
        for name, low in (("threads", 1), ("runs", 1), ("batch", 1), ("accuracy_samples", 1), ("warmup", 0)):
            v = getattr(args, name)
            if v is not None and v < low:
                raise RunnerError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
        if not args.max_seconds > 0:
            raise RunnerError(f"--max-seconds must be > 0, got {args.max_seconds}")
        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        if args.score:
            with _stdout_to_stderr():
                result = score(args.model, args.score, args.sidecar, args.engine, args.threads, providers,
                               not args.no_xnnpack, args.batch)
            print(json.dumps(result))
            return 0
        with _stdout_to_stderr():
            result = run(args.model, args.sidecar, args.data, args.engine, args.threads, providers,
                         not args.no_xnnpack, args.warmup, args.runs, args.batch, args.max_seconds,
                         args.accuracy_samples)
    except RunnerError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
