"""Standalone benchmark runner: one artifact, its runtime, latency/memory/accuracy as one JSON object.

``--model`` may also be a cascade manifest (``*.cascade.json``, written by edgecompress.compression.cascade):
early-exit segments chained image by image, each image leaving at the first confident exit.

This file is copied alone onto devices, so at module level it imports only the standard library and
numpy; the runtime (onnxruntime or LiteRT) is imported inside the functions that need it.

    python -m edgecompress.deploy.runner --model int8.tflite --data testset.npz --threads 4

prints one JSON object on stdout; on a user-fixable error it prints {"error": "..."} and exits 2.
Latency leaves as a sample (``samples_ms``: sorted, 4 significant digits, run-length coded), timed in
``--rounds`` with a short re-warm before each later one, with the machine's conditions (load, clock, governor,
temperatures) at start and end. ``--interleave`` lets a host drive rounds of several candidates' runners in turn
(A B C A B C) over stdin/stdout; ``--sustained-s`` runs the model continuously and reports the drift.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import socket
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import numpy as np

# 2: --score (per-image uncertainty of a pool); 3: cascade manifests (early-exit segments, exit_fractions);
# 4: cascade segments must lie inside the manifest's folder, a manifest must be a JSON object;
# 5: latency as a sample (samples_ms), --rounds, --interleave, conditions, --sustained-s, stratified accuracy subset
RUNNER_VERSION = 6  # 6: runtime threads capped at the cores this process may use
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
    # No spin-waiting between runs: a spinning worker steals the cores of whatever else runs, so latency would
    # depend on the neighbours. Measured: with it on, the build's side-by-side runner processes gave the
    # ensemble a p99 of 5.4 ms (4 ms scheduler-tick stalls) against 1.4 ms with it off.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
            "provider_fallback": fallback, "delegate": None, "xnnpack": None, "spinning": False}
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


def capped_threads(threads: int | None, cores: int | None) -> int | None:
    """The threads a runner with ``cores`` cores runs when asked for ``threads`` (None: the runtime's default)."""
    return min(threads, cores) if threads and cores else threads


def usable_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` capped at the cores this process may run on, and the warning when it was capped.

    More runtime threads than cores time the scheduler, not the model: on a 2-core VM a 4-thread LiteRT
    interpreter gave one int8 file a p90 anywhere from 0.04 to 0.54 ms run to run (p50 0.04 ms), and 0.03 ms
    steadily with 2 threads. A device with the cores the profile assumes runs exactly what it asks."""
    if not threads:
        return threads, None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: the machine's count
        cores = os.cpu_count() or threads
    used = capped_threads(threads, cores)
    if used == threads:
        return threads, None
    return used, (f"runtime.threads {threads} but this machine gives the runner {cores} cores: measured with "
                   f"{cores} threads (oversubscribed threads time the scheduler, not the model)")


def load_session(model_path: str | Path, engine: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, xnnpack: bool = True, batch: int = 1) -> Session:
    """Load ``model_path`` with its runtime (engine defaults from the file extension), with ``threads`` capped
    at this machine's cores (``usable_threads``; the info records both)."""
    path = Path(model_path)
    if not path.is_file():
        raise RunnerError(f"model {path} does not exist")
    engine = engine or ENGINE_FOR_SUFFIX.get(path.suffix)
    used, capped = usable_threads(threads)
    if engine == "onnxruntime":
        session = _onnx_session(str(path), used, providers)
    elif engine == "litert":
        if providers:
            raise RunnerError("--providers applies only to onnxruntime models")
        session = _litert_session(str(path), used, xnnpack, batch)
    else:
        raise RunnerError(f"cannot choose a runtime for {path}: engine {engine!r} is not onnxruntime or litert")
    session.info["threads_requested"] = threads
    if capped:
        session.warnings.append(capped)
    return session


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


def compact(ns_or_ms: Sequence[float] | np.ndarray) -> list[list[float]]:
    """Timings as every sample leaves the runner: milliseconds, sorted ascending, each rounded to 4 significant
    digits, run-length coded as ``[[value, count], ...]``. Integers are nanoseconds (``perf_counter_ns``), floats
    are milliseconds already. 4 digits keep p99 of a 1 ms model to 0.1 us and shrink 10,000 runs to a few hundred
    pairs."""
    a = np.asarray(ns_or_ms)
    if a.size == 0:
        return []
    ms = a.astype(np.float64).ravel() / (1e6 if a.dtype.kind in "iu" else 1.0)
    values, counts = np.unique(ms, return_counts=True)  # sorted; rounding is monotone, so it stays sorted
    out: list[list[float]] = []
    for v, c in zip(values.tolist(), counts.tolist()):
        r = float(f"{v:.4g}")
        if out and out[-1][0] == r:
            out[-1][1] += c
        else:
            out.append([r, c])
    return out


def expand(samples: list[list[float]]) -> np.ndarray:
    """The sorted milliseconds that ``compact`` coded (to its 4 significant digits)."""
    if not samples:
        return np.zeros(0)
    values, counts = zip(*samples)
    return np.repeat(np.asarray(values, np.float64), np.asarray(counts, np.int64))


def runs_per_round(runs: int, rounds: int) -> list[int]:
    """``runs`` split into ``rounds`` slices as evenly as possible, the larger ones first ((10, 3) -> [4, 3, 3])."""
    if rounds < 1 or runs < rounds:
        raise RunnerError(f"--rounds {rounds} must be between 1 and --runs ({runs}): every round needs a run")
    q, r = divmod(runs, rounds)
    return [q + 1 if k < r else q for k in range(rounds)]


def default_round_warmup(warmup: int) -> int:
    """The re-warm before every round after the first: a tenth of the full warm-up, at least one run."""
    return max(1, warmup // 10)


def stratified_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` images of labels ``y`` (all of them when ``n >= len(y)``), each class in proportion
    to its share: round(n * share) by largest remainder, so the total is exactly ``n``. Each class's images are
    drawn with ``np.random.default_rng(seed).permutation`` of its own indices (a fresh generator per class, so a
    larger ``n`` takes a superset within each class). Pure: the host imports it to score the teacher on the same
    images every candidate is scored on."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y), dtype=np.int64)
    if n < 1:
        raise ValueError(f"stratified_subset needs n >= 1, got {n}")
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    # Integer arithmetic, so the quotas and their remainders are exact (no 2.9999 floors).
    take, rem = np.divmod(n * counts, len(y))
    # Largest remainder (Hamilton): the classes with the largest fractional parts get one more; ties: lower class.
    take[np.argsort(-rem, kind="stable")[:n - int(take.sum())]] += 1
    picked = [np.random.default_rng(seed).permutation(np.flatnonzero(inverse == c))[:t] for c, t in enumerate(take)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# Where Linux exposes the machine's state; module constants so tests can point them at a fake tree.
PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")
SYS_THERMAL = Path("/sys/class/thermal")


def conditions() -> dict[str, Any]:
    """Load average, CPU clock (MHz over the cores), cpu0's governor and thermal-zone temperatures (deg C) now,
    where the OS exposes them; None per field elsewhere. Never raises: conditions explain a measurement, and an
    unreadable file must not fail one."""
    out: dict[str, Any] = {}
    for name, read in (("loadavg", _loadavg), ("cpu_mhz", _cpu_mhz), ("governor", _governor),
                       ("thermal_c", _thermal)):
        try:
            out[name] = read()
        except Exception:  # noqa: BLE001 - any odd /proc or /sys content means "not exposed"
            out[name] = None
    return out


def _loadavg() -> list[float] | None:
    try:
        values = [float(v) for v in (PROC / "loadavg").read_text().split()[:3]]
    except OSError:
        values = list(os.getloadavg())  # macOS and the BSDs have no /proc
    return values if len(values) == 3 else None


def _cpu_mhz() -> dict[str, float] | None:
    mhz = []
    for f in SYS_CPU.glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            mhz.append(float(f.read_text()) / 1000)  # kHz
        except (OSError, ValueError):
            continue
    if not mhz:  # no cpufreq driver (most VMs): the kernel's last reading per core
        mhz = [float(line.partition(":")[2]) for line in (PROC / "cpuinfo").read_text(errors="replace").splitlines()
               if line.startswith("cpu MHz")]
    if not mhz:
        return None
    return {"min": min(mhz), "max": max(mhz), "mean": round(sum(mhz) / len(mhz), 1)}


def _governor() -> str | None:
    return (SYS_CPU / "cpu0" / "cpufreq" / "scaling_governor").read_text().strip() or None


def _thermal() -> dict[str, float] | None:
    def number(p: Path) -> int:
        tail = p.name[len("thermal_zone"):]
        return int(tail) if tail.isdigit() else 1 << 30

    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for zone in sorted(SYS_THERMAL.glob("thermal_zone*"), key=number):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            temp = int((zone / "temp").read_text().strip()) / 1000  # millidegrees
        except (OSError, ValueError):
            continue
        k = seen.get(kind, 0)
        seen[kind] = k + 1
        out[kind if k == 0 else f"{kind}_{k}"] = temp
    return out or None


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


def score_pool(session: Session, sidecar: dict[str, Any], x: np.ndarray, batch: int = 1,
               probs: bool = False) -> dict[str, Any]:
    """Per-image uncertainty of the uint8 NCHW pool ``x``: predictive entropy, the guess and its confidence
    and, for an artifact with per-head (or per-member) probabilities (N, M, C), the mutual information
    between the prediction and the heads (what active learning's BALD ranks by), all on the device.
    ``probs``: every image's class probabilities too (8 decimals; how two devices' outputs compare)."""
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
    if probs:
        out["probs"] = p.round(8).tolist()
    if heads:
        h = np.concatenate(heads)  # (N, M, C)
        out["mutual_information"] = np.clip(_entropy(p) - _entropy(h).mean(1), 0.0, None).round(6).tolist()
    return out


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """A runtime failing mid-run (bad shapes, an unsupported op) becomes one RunnerError, not a crash."""
    try:
        yield
    except RunnerError:
        raise
    except Exception as e:  # noqa: BLE001 - runtimes raise their own types
        raise RunnerError(f"{what} failed: {type(e).__name__}: {e}") from None


class Artifact:
    """A loaded model or cascade, ready to time: what ``run``, ``run_cascade``, ``benchmark`` and ``--interleave``
    share. ``call(i)`` is one inference (``i`` counts the runs, so a cascade cycles its images; it returns what the
    timer keeps: None, or a cascade's exit); ``score()`` the accuracy fields; ``finish(body, timer)`` the result
    around the measured body."""

    def __init__(self, call: Callable[[int], Any], score: Callable[[], dict[str, Any]], batch: int,
                 what: str = "inference",
                 finish: Callable[[dict[str, Any], "Timer"], dict[str, Any]] | None = None) -> None:
        self.call = call
        self.score = score
        self.batch = batch
        self.what = what
        self.finish = finish or (lambda body, timer: body)


class Timer:
    """Times ``call(i)`` in rounds, each after its own warm-up. ``max_seconds`` caps the wall time of all timed
    loops together (warm-ups excluded), as it capped the one loop before rounds; a round that starts with the cap
    spent times nothing (n 0, p50/p90 None)."""

    def __init__(self, call: Callable[[int], Any], max_seconds: float, what: str = "inference") -> None:
        self.call = call
        self.what = what
        self.max_seconds = max_seconds
        self._left_ns = int(max_seconds * 1e9)
        self.times: list[int] = []
        self.outputs: list[Any] = []  # what timed calls returned, when not None (a cascade's exit index)
        self.rounds: list[dict[str, Any]] = []
        self.requested = 0
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None

    @property
    def stopped_by(self) -> str:
        return "max_seconds" if any(r["stopped_by"] == "max_seconds" for r in self.rounds) else "runs"

    def round(self, runs: int, warmup: int) -> dict[str, Any]:
        """Warm up ``warmup`` calls, time ``runs`` (fewer at the cap); the round's record."""
        if self.start is None:
            self.start = conditions()  # before the first warm-up
        self.requested += runs
        got: list[int] = []
        stopped_by = "runs"
        with _failing(self.what):
            if self._left_ns <= 0:
                stopped_by = "max_seconds"
            else:
                for i in range(warmup):
                    self.call(i)
                begin = time.perf_counter_ns()
                deadline = begin + self._left_ns
                while len(got) < runs:
                    i = len(self.times) + len(got)
                    t0 = time.perf_counter_ns()
                    out = self.call(i)
                    t1 = time.perf_counter_ns()
                    got.append(t1 - t0)
                    if out is not None:
                        self.outputs.append(out)
                    if t1 >= deadline and len(got) < runs:
                        stopped_by = "max_seconds"
                        break
                self._left_ns -= time.perf_counter_ns() - begin
        self.end = conditions()  # after the last timed run, whichever round that turns out to be
        self.times += got
        ms = np.asarray(got, np.float64) / 1e6
        p50, p90 = (float(v) for v in np.percentile(ms, [50, 90])) if got else (None, None)
        record = {"n": len(got), "p50": p50, "p90": p90, "samples_ms": compact(got), "warmup": warmup,
                  "stopped_by": stopped_by}
        self.rounds.append(record)
        return record


def sustain(call: Callable[[int], Any], seconds: float, intervals: int = 10) -> tuple[dict[str, Any], float]:
    """Run ``call`` back to back for ``seconds`` of wall time (at least once): (the ``sustained`` record, p90 of
    its tail intervals in ms)."""
    if intervals < 2:
        raise RunnerError(f"--sustained-intervals must be >= 2 (a first and a last to compare), got {intervals}")
    starts: list[int] = []
    times: list[int] = []
    begin = time.perf_counter_ns()
    stop = begin + int(seconds * 1e9)
    t1 = begin
    while True:
        t0 = time.perf_counter_ns()
        if t0 >= stop and starts:
            break
        call(len(starts))
        t1 = time.perf_counter_ns()
        starts.append(t0 - begin)
        times.append(t1 - t0)
    return sustained_summary(starts, times, seconds, intervals, (t1 - begin) / 1e9)


def sustained_summary(starts_ns: Sequence[int], times_ns: Sequence[int], seconds: float, intervals: int,
                      actual_s: float) -> tuple[dict[str, Any], float]:
    """Runs (start offset and duration, ns) split by start time into ``intervals`` equal slices of ``seconds``:
    p50/p90 per slice, the drift last/first, and the last ceil(intervals / 3) slices' samples and p90."""
    width = seconds / intervals
    starts = np.asarray(starts_ns, np.float64) / 1e9
    ms = np.asarray(times_ns, np.float64) / 1e6
    slot = np.minimum((starts // width).astype(np.int64), intervals - 1)
    # An interval in which no run started (one run outlasted it) is merged into the next interval with runs: that
    # one's t0 moves back to the empty one's t0, so the intervals stay contiguous and every p50/p90 rests on at
    # least one run. Empty intervals at the end have no next one: they extend the last interval with runs (its t1).
    groups: list[tuple[float, float, np.ndarray]] = []
    t0: float | None = None
    for j in range(intervals):
        sel = ms[slot == j]
        t0 = j * width if t0 is None else t0
        if len(sel):
            groups.append((t0, (j + 1) * width, sel))
            t0 = None
    if t0 is not None:
        a, _, sel = groups[-1]
        groups[-1] = (a, seconds, sel)
    rows = [{"t0": round(a, 6), "t1": round(b, 6), "n": int(len(sel)),
             "p50": float(np.percentile(sel, 50)), "p90": float(np.percentile(sel, 90))} for a, b, sel in groups]
    k_tail = min(math.ceil(intervals / 3), len(groups))
    tail = np.concatenate([sel for _, _, sel in groups[-k_tail:]])
    record = {"seconds": actual_s, "intervals": rows, "drift_p50": rows[-1]["p50"] / rows[0]["p50"],
              "drift_p90": rows[-1]["p90"] / rows[0]["p90"], "tail_intervals": k_tail,
              "tail_samples_ms": compact(tail)}
    return record, float(np.percentile(tail, 90))


def conclude(art: Artifact, timer: Timer, warmup: int, round_warmup: int, sustained_s: float = 0.0,
             sustained_intervals: int = 10) -> dict[str, Any]:
    """After the last timed run: accuracy, sustained mode when asked, memory, and the result around them."""
    if not timer.times:
        raise RunnerError("nothing was timed (no round ran); send at least one round before done")
    end = timer.end or conditions()
    with _failing(art.what):
        measured = art.score()
        sustained, sustained_p90 = (sustain(art.call, sustained_s, sustained_intervals) if sustained_s > 0
                                    else (None, None))
    stats: dict[str, float] = latency_stats(timer.times)
    if sustained_p90 is not None:
        stats["sustained_p90"] = sustained_p90
    warnings = []
    if timer.stopped_by == "max_seconds":
        warnings.append(f"stopped after {len(timer.times)} of {timer.requested} runs at the {timer.max_seconds:g} s "
                        f"cap; high percentiles rest on few samples")
    body = {"bench": {"warmup": warmup, "runs_requested": timer.requested, "batch": art.batch,
                      "max_seconds": timer.max_seconds, "stopped_by": timer.stopped_by, "rounds": len(timer.rounds),
                      "round_warmup": round_warmup},
            "latency_ms": stats, "throughput_per_s": art.batch * 1000.0 / stats["mean"], **measured,
            "samples_ms": compact(timer.times), "rounds": timer.rounds,
            "conditions": {"start": timer.start, "end": end}, "sustained": sustained,
            "memory": {"peak_rss_mb": peak_rss_mb()}, "warnings": warnings}
    return art.finish(body, timer)


def measure(art: Artifact, warmup: int = 10, runs: int = 100, max_seconds: float = 60.0, rounds: int = 1,
            round_warmup: int | None = None, sustained_s: float = 0.0, sustained_intervals: int = 10) -> dict[str, Any]:
    """``runs`` timed calls of ``art`` in ``rounds`` rounds (the first after ``warmup`` calls, each later one after
    ``round_warmup``), then ``conclude``."""
    rw = default_round_warmup(warmup) if round_warmup is None else round_warmup
    timer = Timer(art.call, max_seconds, art.what)
    for k, n in enumerate(runs_per_round(runs, rounds)):
        timer.round(n, warmup if k == 0 else rw)
    return conclude(art, timer, warmup, rw, sustained_s, sustained_intervals)


def _subset(y: np.ndarray, accuracy_samples: int | None, seed: int) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """(indices to score or None for all, the result's ``accuracy_subset``)."""
    if accuracy_samples is None or accuracy_samples >= len(y):
        return None, None
    idx = stratified_subset(y, accuracy_samples, seed)
    return idx, {"n": int(len(idx)), "seed": seed, "rule": "class-stratified"}


def single_artifact(session: Session, sidecar: dict[str, Any], x: np.ndarray | None = None,
                    y: np.ndarray | None = None, batch: int = 1, accuracy_samples: int | None = None,
                    subset_seed: int = 0) -> Artifact:
    """One model timed on one batch of real images (random ones without ``x``), scored on (x, y)."""
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

    def call(i: int) -> None:
        session.run(inp)

    def score() -> dict[str, Any]:
        if x is None or y is None:
            return {"accuracy": None, "nll": None, "ece": None, "accuracy_samples": None, "accuracy_subset": None}
        idx, subset = _subset(y, accuracy_samples, subset_seed)
        xs, ys = (x, y) if idx is None else (x[idx], y[idx])
        return {**scores(session, sidecar, xs, ys, batch), "accuracy_samples": int(len(ys)), "accuracy_subset": subset}

    return Artifact(call, score, batch)


def benchmark(session: Session, sidecar: dict[str, Any], x: np.ndarray | None = None, y: np.ndarray | None = None,
              warmup: int = 10, runs: int = 100, batch: int = 1, max_seconds: float = 60.0,
              accuracy_samples: int | None = None, *, rounds: int = 1, round_warmup: int | None = None,
              subset_seed: int = 0, sustained_s: float = 0.0, sustained_intervals: int = 10) -> dict[str, Any]:
    """Warm up, time ``runs`` calls in ``rounds`` (``max_seconds`` caps them in total), then accuracy on (x, y)
    (a class-stratified ``accuracy_samples`` subset) and, when ``sustained_s``, the sustained run."""
    art = single_artifact(session, sidecar, x, y, batch, accuracy_samples, subset_seed)
    return measure(art, warmup, runs, max_seconds, rounds, round_warmup, sustained_s, sustained_intervals)


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


def prepare(model: str | Path, sidecar: str | Path | None = None, data: str | Path | None = None,
            engine: str | None = None, threads: int | None = None, providers: list[str] | None = None,
            xnnpack: bool = True, batch: int = 1, runs: int = 100, accuracy_samples: int | None = None,
            subset_seed: int = 0) -> Artifact:
    """The artifact (a model or a cascade manifest) loaded and its input checked, ready to time (raises
    RunnerError); its ``finish`` builds the whole result JSON."""
    if is_cascade(model):
        if sidecar is not None or batch != 1:
            raise RunnerError("a cascade manifest is its own sidecar and runs batch 1 (images leave at different "
                              "exits): drop --sidecar and --batch")
        return prepare_cascade(model, data, engine, threads, providers, xnnpack, runs, accuracy_samples, subset_seed)
    baseline = peak_rss_mb()
    model = Path(model)
    if not model.is_file():
        raise RunnerError(f"model {model} does not exist")
    sc = read_sidecar(sidecar or f"{model}.json")
    x, y = load_testset(data) if data else (None, None)
    if x is not None:
        _check_shape(preprocess(x[:1], sc), sc)
    session = load_session(model, engine, threads, providers, xnnpack, batch)
    art = single_artifact(session, sc, x, y, batch, accuracy_samples, subset_seed)
    info = session.info

    def finish(body: dict[str, Any], timer: Timer) -> dict[str, Any]:
        body["memory"] = {"baseline_rss_mb": baseline, **body["memory"]}
        warnings = session.warnings + body.pop("warnings")
        return {"runner_version": RUNNER_VERSION, "model": str(model), "model_size_bytes": model.stat().st_size,
                "format": sc.get("format"), "precision": sc.get("precision"),
                "runtime": info, "provider_fallback": info["provider_fallback"],
                "requested_providers": info["requested_providers"], "active_providers": info["active_providers"],
                **body, "fingerprint": fingerprint(info), "warnings": warnings}

    art.finish = finish
    return art


def run(model: str | Path, sidecar: str | Path | None = None, data: str | Path | None = None,
        engine: str | None = None, threads: int | None = None, providers: list[str] | None = None,
        xnnpack: bool = True, warmup: int = 10, runs: int = 100, batch: int = 1, max_seconds: float = 60.0,
        accuracy_samples: int | None = None, *, rounds: int = 1, round_warmup: int | None = None,
        subset_seed: int = 0, sustained_s: float = 0.0, sustained_intervals: int = 10) -> dict[str, Any]:
    """Everything the CLI does, as a function: returns the result dict (raises RunnerError)."""
    art = prepare(model, sidecar, data, engine, threads, providers, xnnpack, batch, runs, accuracy_samples,
                  subset_seed)
    return measure(art, warmup, runs, max_seconds, rounds, round_warmup, sustained_s, sustained_intervals)


def score(model: str | Path, pool: str | Path, sidecar: str | Path | None = None, engine: str | None = None,
          threads: int | None = None, providers: list[str] | None = None, xnnpack: bool = True,
          batch: int = 1, probs: bool = False) -> dict[str, Any]:
    """``--score``: the pool's per-image uncertainty with the artifact's own runtime (raises RunnerError);
    ``probs``: with every image's class probabilities."""
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
    res = score_pool(session, sc, x, batch, probs)
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


def prepare_cascade(model: str | Path, data: str | Path | None = None, engine: str | None = None,
                    threads: int | None = None, providers: list[str] | None = None, xnnpack: bool = True,
                    runs: int = 100, accuracy_samples: int | None = None, subset_seed: int = 0) -> Artifact:
    """A cascade manifest loaded for batch 1: timed calls cycle over the first ``runs`` test images (the exit taken
    depends on the image); the result adds accuracy, the fraction leaving at each exit and the timed ones'."""
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
    n_in = min(runs, len(x_raw))
    inputs = preprocess(x_raw[:n_in], m)  # outside the timing
    _check_shape(inputs[:1], m)
    if sessions[0].input_dtype != inputs.dtype.name:
        raise RunnerError(f"manifest says input_dtype {m['input_dtype']} but segment 0 takes "
                          f"{sessions[0].input_dtype}; re-export the cascade")
    thr = [None if t is None else float(t) for t in m["thresholds"]]

    def call(i: int) -> int:
        j = i % n_in
        return cascade_infer(sessions, thr, inputs[j:j + 1])[1]

    def score() -> dict[str, Any]:
        if y is None:
            return {"accuracy": None, "nll": None, "ece": None, "exit_fractions": None, "accuracy_samples": None,
                    "accuracy_subset": None}
        idx, subset = _subset(y, accuracy_samples, subset_seed)
        xs, ys = (x_raw, y) if idx is None else (x_raw[idx], y[idx])
        acc_in = preprocess(xs, m)
        outs = [cascade_infer(sessions, thr, acc_in[i:i + 1]) for i in range(len(ys))]
        counts = np.bincount([o[1] for o in outs], minlength=len(sessions))
        return {**_classification(np.concatenate([o[0] for o in outs]), ys),
                "exit_fractions": (counts / len(ys)).tolist(), "accuracy_samples": int(len(ys)),
                "accuracy_subset": subset}

    info = sessions[0].info

    def finish(body: dict[str, Any], timer: Timer) -> dict[str, Any]:
        body["bench"]["images_cycled"] = n_in
        body["memory"] = {"baseline_rss_mb": baseline, **body["memory"]}
        timed_exits = np.bincount(np.asarray(timer.outputs, np.int64), minlength=len(sessions))
        own = body.pop("warnings")
        return {"runner_version": RUNNER_VERSION, "model": str(path), "kind": "cascade",
                "model_size_bytes": sum(f.stat().st_size for f in segs), "format": m.get("format"),
                "precision": m.get("precision"), "segments": [str(f) for f in segs], "thresholds": m["thresholds"],
                "runtime": info, "provider_fallback": any(s.info["provider_fallback"] for s in sessions),
                "requested_providers": info["requested_providers"], "active_providers": info["active_providers"],
                **body, "timed_exit_fractions": (timed_exits / max(len(timer.outputs), 1)).tolist(),
                "fingerprint": fingerprint(info),
                "warnings": [w for s in sessions for w in s.warnings] + warnings + own}

    return Artifact(call, score, 1, "cascade inference", finish)


def run_cascade(model: str | Path, data: str | Path | None = None, engine: str | None = None,
                threads: int | None = None, providers: list[str] | None = None, xnnpack: bool = True,
                warmup: int = 10, runs: int = 100, max_seconds: float = 60.0,
                accuracy_samples: int | None = None, *, rounds: int = 1, round_warmup: int | None = None,
                subset_seed: int = 0, sustained_s: float = 0.0, sustained_intervals: int = 10) -> dict[str, Any]:
    """A cascade manifest benchmarked at batch 1: whole-cascade latency per image (timed calls cycle over the
    test images, since the exit taken depends on the image), accuracy and the fraction leaving at each exit."""
    art = prepare_cascade(model, data, engine, threads, providers, xnnpack, runs, accuracy_samples, subset_seed)
    return measure(art, warmup, runs, max_seconds, rounds, round_warmup, sustained_s, sustained_intervals)


def _say(out: TextIO, obj: dict[str, Any]) -> None:
    """One protocol line on the real stdout, flushed at once: the host is waiting for it."""
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _command(line: str) -> tuple[int, int] | None:
    """An ``--interleave`` command: (runs, warmup), or None for done; RunnerError when malformed."""
    try:
        cmd = json.loads(line)
    except json.JSONDecodeError:
        cmd = None
    if isinstance(cmd, dict) and cmd.get("done") is True and len(cmd) == 1:
        return None
    ok = isinstance(cmd, dict) and set(cmd) <= {"runs", "warmup"} and all(
        isinstance(cmd.get(k, 0), int) and not isinstance(cmd.get(k), bool) for k in ("runs", "warmup"))
    if not ok or "runs" not in cmd or cmd["runs"] < 1 or cmd.get("warmup", 0) < 0:
        raise RunnerError(f"--interleave: malformed command {line.strip()[:200]!r}; send one JSON object a line, "
                          f"{{\"runs\": n >= 1, \"warmup\": w >= 0}} or {{\"done\": true}}")
    return cmd["runs"], cmd.get("warmup", 0)


def serve(art: Artifact, out: TextIO, inp: TextIO, max_seconds: float = 60.0, round_warmup: int = 1,
          sustained_s: float = 0.0, sustained_intervals: int = 10) -> int:
    """``--interleave``: say ready, then time the rounds the host sends, one JSON command a line on ``inp``, and
    answer each on ``out``; on done, print the result (exit 0). EOF before done: exit 3 without a result (the host
    died); a malformed command raises RunnerError (exit 2). The host starts one process per candidate and sends
    rounds A B C A B C, so drift and background load hit every candidate alike."""
    _say(out, {"event": "ready"})
    timer = Timer(art.call, max_seconds, art.what)
    for line in inp:
        if not line.strip():
            continue
        cmd = _command(line)
        if cmd is None:
            later = [r["warmup"] for r in timer.rounds[1:]]
            first = timer.rounds[0]["warmup"] if timer.rounds else 0
            _say(out, conclude(art, timer, first, later[-1] if later else round_warmup, sustained_s,
                               sustained_intervals))
            return 0
        _say(out, {"event": "round", **timer.round(*cmd)})
    return 3


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
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before the first round")
    p.add_argument("--runs", type=int, default=100, help="timed runs in total, over all rounds")
    p.add_argument("--rounds", type=int, default=1, help="split the timed runs into this many rounds")
    p.add_argument("--round-warmup", type=int, help="untimed runs before every later round (default: "
                                                    "max(1, warmup // 10))")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on the timed runs, all rounds together")
    p.add_argument("--accuracy-samples", type=int, help="a class-stratified subset of N test images (default: all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --accuracy-samples subset")
    p.add_argument("--sustained-s", type=float, default=0.0, help="after the rounds, run continuously this long "
                                                                  "and report latency per interval (0: off)")
    p.add_argument("--sustained-intervals", type=int, default=10, help="intervals of the sustained run")
    p.add_argument("--interleave", action="store_true", help="load, print {\"event\": \"ready\"}, then time the "
                   "rounds the host sends on stdin (one JSON a line: {\"runs\": n, \"warmup\": w} or {\"done\": true})")
    p.add_argument("--score", help="pool.npz (x uint8 NCHW): per-image entropy, guess and (heads artifacts) "
                                   "mutual information instead of a benchmark")
    p.add_argument("--probs", action="store_true", help="with --score: every image's class probabilities too")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not args.model:
        raise RunnerError("--model is required (or --probe)")
    for name, low in (("threads", 1), ("runs", 1), ("batch", 1), ("accuracy_samples", 1), ("warmup", 0),
                      ("rounds", 1), ("round_warmup", 0), ("subset_seed", 0), ("sustained_intervals", 2)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise RunnerError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if not args.max_seconds > 0:
        raise RunnerError(f"--max-seconds must be > 0, got {args.max_seconds}")
    if not args.sustained_s >= 0:
        raise RunnerError(f"--sustained-s must be >= 0 (0: off), got {args.sustained_s}")
    if not args.interleave:
        runs_per_round(args.runs, args.rounds)  # --rounds <= --runs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.probe:
        print(json.dumps(probe()))
        return 0
    try:
        _check_args(args)
        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        if args.score:
            with _stdout_to_stderr():
                result = score(args.model, args.score, args.sidecar, args.engine, args.threads, providers,
                               not args.no_xnnpack, args.batch, args.probs)
            print(json.dumps(result))
            return 0
        rw = default_round_warmup(args.warmup) if args.round_warmup is None else args.round_warmup
        if args.interleave:
            # Protocol lines go to a copy of the real stdout; runtime chatter still goes to stderr.
            with os.fdopen(os.dup(1), "w") as out, _stdout_to_stderr():
                art = prepare(args.model, args.sidecar, args.data, args.engine, args.threads, providers,
                              not args.no_xnnpack, args.batch, args.runs, args.accuracy_samples, args.subset_seed)
                return serve(art, out, sys.stdin, args.max_seconds, rw, args.sustained_s, args.sustained_intervals)
        with _stdout_to_stderr():
            result = run(args.model, args.sidecar, args.data, args.engine, args.threads, providers,
                         not args.no_xnnpack, args.warmup, args.runs, args.batch, args.max_seconds,
                         args.accuracy_samples, rounds=args.rounds, round_warmup=rw, subset_seed=args.subset_seed,
                         sustained_s=args.sustained_s, sustained_intervals=args.sustained_intervals)
    except RunnerError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
