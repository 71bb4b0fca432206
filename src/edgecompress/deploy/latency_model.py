"""A latency model per device: predict a pool candidate's latency from its file before measuring it.

Per (device, runtime settings, engine, precision) a two-term law, ``p50 = overhead + cost * MACs``, both
terms >= 0, fitted on the measurement cache's entries for that device by least squares on the relative
error (a 0.02 ms network counts as much as a 2 ms one). The fixed term is what a call costs whatever the
network (runtime dispatch, input copy); on this pool's small networks it dominates. Leaving one network out
at a time on this VM's cache (29 cases), a log-log power law missed by a median 37% (MACs) or 26% (MACs
and bytes), this law by 13.5%; a third term (bytes, params or layers) changed nothing.

Other percentiles (p90, p99, mean) are the predicted p50 times the group's measured ratios to p50: the
median for the point, the smallest and largest for the band. A tail is not a fixed ratio: with 4 threads on
2 cores LiteRT's fp32 p90 was 11-14x p50 for a 0.035 ms network, 1.3-2.1x for the 1-2.4 ms ensemble.
With one measured network (one MACs count) a group knows only that the law passes through that point, so a
network of r times its MACs lies between 1x and r x its latency (both terms >= 0): that interval, widened by
``min_spread``, is the band. The point borrows the shape (overhead against per-MAC cost) of a group with two
or more networks, the same engine and precision first (on a fresh machine the first builds measure one
network per precision); with none, the interval's geometric middle. Scaling by MACs alone missed by 431-1082%
there: these networks' latency is mostly overhead. Below ``min_points`` the band is wide. The search may use
a prediction only to skip candidates confidently over a budget (``should_measure``): it never decides a
ship. Features come from the artifact itself (``latency_features``), cached by the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgecompress.deploy.runner import RUNTIME_DISTS
from edgecompress.deploy.latency_features import COUNTERS, FeatureCache, Features
from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError

_ENGINE_OF_DIST = {dist: engine for engine, dists in RUNTIME_DISTS.items() for dist in dists}
_PERCENTILES = ("p50", "p90", "p99", "mean", "sustained_p90")


# ------------------------------------------------------------------------------------ cache entries -> data

@dataclass(frozen=True)
class Group:
    """What one fit covers: a device with its runtime settings (``device_key``), an engine, a precision."""

    device: str
    engine: str
    precision: str

    def __str__(self) -> str:
        return f"{self.device} {self.engine} {self.precision}"


def device_key(fingerprint: Mapping[str, Any], engine: str, runtime_version: str | None, threads: int | None,
               xnnpack: bool | None, providers: Sequence[str] | None, batch: int) -> str:
    """The machine and what changes its speed apart from the model: ``host/threads/batch/#digest``.

    The machine part is the runner's fingerprint without its runtime fields, so a probe (``--probe``, no
    model loaded) and a measured entry of the same machine give the same key.
    """
    machine = {k: v for k, v in fingerprint.items() if k not in ("runtime", "runtime_version")}
    parts = {"machine": machine, "engine": engine, "version": runtime_version, "threads": threads,
             "xnnpack": xnnpack if engine == "litert" else None,
             "providers": list(providers or []) if engine == "onnxruntime" else None, "batch": batch}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]
    return f"{machine.get('hostname') or machine.get('cpu_model') or '?'}/t{threads or 'default'}/b{batch}/#{digest}"


@dataclass(frozen=True)
class Observation:
    """One measured artifact on one device: its group, its identity (sha256), features and latencies."""

    group: Group
    artifact: str
    features: Features
    latency_ms: Mapping[str, float]
    where: str = ""


def _bad(where: str, why: str) -> EdgeCompressError:
    return EdgeCompressError(f"measurement cache entry {where}: {why}; delete it (the next build measures that "
                             f"candidate again) or point --cache at another directory")


def observation(entry: Any, features: Features, artifact: str, where: str = "(entry)") -> Observation:
    """A runner result (what ``MeasurementCache`` stores) as a data point; a corrupt one is an error that names it."""
    if not isinstance(entry, Mapping):
        raise _bad(where, f"a JSON {type(entry).__name__}, not an object")
    lat, rt, fp, bench = (entry.get(k) for k in ("latency_ms", "runtime", "fingerprint", "bench"))
    if not isinstance(lat, Mapping):
        raise _bad(where, "no latency_ms object")
    got = {k: lat[k] for k in _PERCENTILES if lat.get(k) is not None}
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf for v in got.values()):
        raise _bad(where, f"a latency is not a number > 0 ({got})")
    if "p50" not in got:
        raise _bad(where, "no latency_ms.p50")
    if not isinstance(rt, Mapping) or rt.get("name") not in _ENGINE_OF_DIST or not isinstance(fp, Mapping):
        raise _bad(where, "no runtime name the runner knows, or no fingerprint")
    batch = bench.get("batch", 1) if isinstance(bench, Mapping) else None
    if not isinstance(entry.get("precision"), str) or isinstance(batch, bool) or not isinstance(batch, int):
        raise _bad(where, "no precision, or no bench settings with an int batch")
    engine = _ENGINE_OF_DIST[rt["name"]]
    key = device_key(fp, engine, rt.get("version"), rt.get("threads"), rt.get("xnnpack"),
                     entry.get("requested_providers"), batch)
    return Observation(Group(key, engine, entry["precision"]), artifact, features,
                       {k: float(v) for k, v in got.items()}, where)


def load_observations(cache_dir: str | Path, features: FeatureCache) -> tuple[list[Observation], list[str]]:
    """Every entry of a measurement cache whose artifact is known (by sha256, or on disk as it was measured);
    and why each other one was left out (a cascade, a moved or re-exported file). A corrupt entry is an error.

    An entry names its artifact by sha256 (builds since the latency model went over SSH write it): its features
    counted before (the feature cache, by sha256) are used without the file, which a remote device ran from
    its own copy. An older entry is judged by the file's path and size, and needs the file on this machine.
    """
    out, left = [], []
    for path in sorted(Path(cache_dir).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise _bad(str(path), f"unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(entry, dict):
            raise _bad(str(path), f"a JSON {type(entry).__name__}, not an object")
        model = Path(str(entry.get("model")))
        if entry.get("segments") or model.suffix not in COUNTERS:
            left.append(f"{path.name}: not a single .onnx/.tflite file (a cascade or no model path)")
            continue
        sha = entry.get("artifact_sha256")
        known = features.known(sha) if isinstance(sha, str) else None
        if known is not None:
            out.append(observation(entry, known, sha, str(path)))
            continue
        if not model.is_file() or model.stat().st_size != entry.get("model_size_bytes"):
            left.append(f"{path.name}: {model} is gone or changed since it was measured")
            continue
        sha = file_sha256(model)
        out.append(observation(entry, features.get(model, sha), sha, str(path)))
    return out, left


# --------------------------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class LatencyModelConfig:
    """``min_points``: measured networks a group needs before its residuals set the band (fewer: the band is
    ``fallback_spread``); ``z``: the band's half-width in spreads; ``min_spread``: the floor of the relative
    residual spread (3-6 points underestimate it); spreads are log units (0.25 ~ 28%, 0.7 ~ a factor of 2)."""

    min_points: int = 3
    z: float = 2.0
    min_spread: float = 0.25
    fallback_spread: float = 0.7

    def __post_init__(self) -> None:
        for key, v in (("z", self.z), ("min_spread", self.min_spread), ("fallback_spread", self.fallback_spread)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
                raise EdgeCompressError(f"latency_model.{key}: {v!r} must be a finite number >= 0")
        if isinstance(self.min_points, bool) or not isinstance(self.min_points, int) or self.min_points < 3:
            raise EdgeCompressError(f"latency_model.min_points: {self.min_points!r} must be an int >= 3 "
                                    f"(two terms leave no residual to measure the spread on with fewer)")


def _row(f: Features) -> np.ndarray:
    return np.array([1.0, float(f.macs)])


@dataclass(frozen=True)
class _Fit:
    """One group's fit: its points (one per artifact), ratios to p50, the law's terms, their unscaled
    covariance in relative units and the residual spread (None: too few points to measure it)."""

    a: np.ndarray  # [n, 2]: 1, MACs
    y: np.ndarray  # [n] p50 ms
    ratios: dict[str, tuple[float, float, float]]  # key -> its ratio to p50: median, smallest, largest
    beta: np.ndarray  # [2]: overhead ms, ms per MAC (both >= 0)
    cov: np.ndarray | None  # (A_w' A_w)^-1 over the terms in use, weights 1/y
    used: tuple[int, ...]
    sigma: float | None
    anchor: tuple[float, float] | None = None  # one network measured: (its MACs, its p50)
    donor: Group | None = None  # whose shape ``beta`` scales, for an anchored fit


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of one artifact in one group: ms per key with a [lo, hi] band, and how it was made."""

    group: Group
    method: str
    points: int  # measured artifacts behind it
    ms: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)  # key -> (point, lo, hi)

    @property
    def p50(self) -> float:
        return self.ms["p50"][0]


def _per_artifact(obs: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[float, float, float]]]:
    """Repeated measurements of one artifact count once: the median of their p50s and ratios."""
    by: dict[str, list[Observation]] = {}
    for o in obs:
        by.setdefault(o.artifact, []).append(o)
    a = np.array([_row(v[0].features) for v in by.values()])
    y = np.array([float(np.median([o.latency_ms["p50"] for o in v])) for v in by.values()])
    ratios = {}
    for k in _PERCENTILES[1:]:
        r = [o.latency_ms[k] / o.latency_ms["p50"] for v in by.values() for o in v if k in o.latency_ms]
        if r:
            ratios[k] = (float(np.median(r)), float(min(r)), float(max(r)))
    return a, y, ratios


def _nonnegative_fit(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Least squares on the relative error with every term >= 0: the best of the term subsets whose
    unconstrained solution is non-negative (two terms: three subsets; exact, no solver needed)."""
    w = 1.0 / y
    best: tuple[float, np.ndarray, tuple[int, ...]] | None = None
    for used in ((0, 1), (1,), (0,)):  # ties (one point): per-MAC before constant, so size still counts
        b = np.linalg.lstsq(a[:, used] * w[:, None], y * w, rcond=None)[0]
        if (b < 0).any():
            continue
        rss = float(((((a[:, used] @ b) - y) * w) ** 2).sum())
        if best is None or rss < best[0] - 1e-12:
            best = (rss, b, used)
    assert best is not None  # the constant alone is always feasible: y > 0
    beta = np.zeros(2)
    beta[list(best[2])] = best[1]
    return beta, best[2]


def _fit_group(obs: Sequence[Observation], cfg: LatencyModelConfig) -> _Fit:
    a, y, ratios = _per_artifact(obs)
    if len(set(a[:, 1])) == 1:  # one network (copies differ only in bytes): anchored, shaped in _borrow
        anchor = (max(float(a[0, 1]), 1.0), float(np.median(y)))
        return _Fit(a, y, ratios, np.zeros(2), None, (), None, anchor)
    beta, used = _nonnegative_fit(a, y)
    aw = a[:, used] / y[:, None]
    cov = np.linalg.pinv(aw.T @ aw)
    if len(y) < cfg.min_points:
        return _Fit(a, y, ratios, beta, cov, used, None)
    resid = (a @ beta - y) / y
    sigma = math.sqrt(float(resid @ resid) / max(len(y) - len(used), 1))
    return _Fit(a, y, ratios, beta, cov, used, sigma)


@dataclass(frozen=True)
class LatencyModel:
    """Per-group fits (``fit``); ``predict`` a group's latency for an artifact's features."""

    fits: Mapping[Group, _Fit]
    cfg: LatencyModelConfig

    @property
    def groups(self) -> list[Group]:
        return list(self.fits)

    def predict(self, group: Group, features: Features) -> Prediction | None:
        """The prediction, or None when nothing was measured in ``group`` (then measure it)."""
        f = self.fits.get(group)
        if f is None:
            return None
        x0 = _row(features)
        if f.anchor is not None:
            p50, lo, hi, method = self._anchored(f, x0)
        else:
            p50 = max(float(x0 @ f.beta), 1e-9)
            method = f"overhead + per-MAC, {len(f.y)} points"
            spread = self.cfg.fallback_spread
            if f.sigma is not None:  # one observation's noise plus the fit's own uncertainty at x0 (both relative)
                x0w = x0[list(f.used)] / p50
                spread = max(f.sigma, self.cfg.min_spread) * math.sqrt(1.0 + float(x0w @ f.cov @ x0w))
            lo, hi = p50 * math.exp(-self.cfg.z * spread), p50 * math.exp(self.cfg.z * spread)
        ms = {"p50": (p50, lo, hi)}
        ms.update({k: (p50 * mid, lo * low, hi * high) for k, (mid, low, high) in f.ratios.items()})
        return Prediction(group, method, len(f.y), ms)

    def _anchored(self, f: _Fit, x0: np.ndarray) -> tuple[float, float, float, str]:
        """One network measured: the law's feasible interval through it, widened by the noise floor, and the
        point on the donor's shape (or the interval's geometric middle)."""
        assert f.anchor is not None
        m0, y0 = f.anchor
        r = max(float(x0[1]), 1.0) / m0
        noise = math.exp(self.cfg.z * self.cfg.min_spread)
        lo, hi = y0 * min(1.0, r) / noise, y0 * max(1.0, r) * noise
        if f.donor is None:
            return y0 * math.sqrt(r), lo, hi, "1 point, between constant and MACs-proportional"
        return max(float(x0 @ f.beta), 1e-9), lo, hi, f"1 point, the shape of {f.donor.engine} {f.donor.precision}"


def _borrow(fits: dict[Group, _Fit]) -> dict[Group, _Fit]:
    """Give each anchored fit a donor's shape: a group with two or more networks, the same engine and precision
    first, then the same engine, then any; more networks first, then by name (deterministic)."""
    donors = sorted((g for g, f in fits.items() if f.anchor is None), key=lambda g: (-len(fits[g].y), str(g)))
    out = dict(fits)
    for g, f in fits.items():
        if f.anchor is None or not donors:
            continue
        d = min(donors, key=lambda c: (c.engine != g.engine or c.precision != g.precision, c.engine != g.engine))
        shape = fits[d].beta
        scale = f.anchor[1] / max(float(shape @ np.array([1.0, f.anchor[0]])), 1e-12)
        out[g] = replace(f, beta=shape * scale, donor=d)
    return out


def fit(observations: Iterable[Observation], cfg: LatencyModelConfig | None = None) -> LatencyModel:
    """One fit per (device, engine, precision) group of ``observations``."""
    cfg = cfg or LatencyModelConfig()
    groups: dict[Group, list[Observation]] = {}
    for o in observations:
        if not isinstance(o, Observation):
            raise EdgeCompressError(f"latency model: fit takes Observations (see observation()), "
                                    f"got {type(o).__name__}")
        groups.setdefault(o.group, []).append(o)
    return LatencyModel(_borrow({g: _fit_group(v, cfg) for g, v in groups.items()}), cfg)


def should_measure(prediction: Prediction | None, budgets: Mapping[str, float]) -> bool:
    """Measure unless the prediction is confidently over a latency budget: its lower bound above it.

    No prediction, no latency budget, or a budgeted key the group has no ratio for: measure (unknown is
    never a reason to skip). This only skips runs; whatever ships is still measured and judged.
    """
    if prediction is None:
        return True
    return all(k not in prediction.ms or prediction.ms[k][1] <= limit for k, limit in budgets.items())


# --------------------------------------------------------------------------------------------- its error

@dataclass(frozen=True)
class HoldoutResult:
    """Median absolute percentage error of p50 on held-out artifacts: overall, per group, and every case."""

    mdape: float
    n: int
    per_group: Mapping[Group, tuple[float, int]]
    cases: tuple[tuple[Group, str, float, float], ...]  # group, artifact, predicted, measured (p50 ms)


def _network(f: Features) -> tuple[int, int, int]:
    """What makes two artifacts one network to the model: a clustered copy differs only in bytes."""
    return f.macs, f.params, f.layers


def holdout_error(observations: Sequence[Observation], frac: float = 1 / 3, seed: int = 0,
                  cfg: LatencyModelConfig | None = None, extra: Sequence[Observation] = ()) -> HoldoutResult:
    """Hold out ``frac`` of each group's networks (at least one, where a group has two or more), fit on the
    rest, and compare predicted with measured p50 (the median of an artifact's repeated measurements).

    A network's artifacts go together (the clustered copy of a held-out network is not in the fit): a
    twin with the same MACs would make the error look like the measurement noise, not the model's.
    ``extra`` (other devices' measurements, as a build's fit has them) is always in the fit, never held out.
    """
    if not 0 < frac < 1:
        raise EdgeCompressError(f"holdout_error: frac {frac!r} must be strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    by: dict[Group, dict[tuple[int, int, int], list[Observation]]] = {}
    for o in observations:
        by.setdefault(o.group, {}).setdefault(_network(o.features), []).append(o)
    train: list[Observation] = []
    test: list[Observation] = []
    for nets in by.values():
        keys = sorted(nets)
        k = max(1, round(frac * len(keys))) if len(keys) >= 2 else 0  # always leaves one to fit on
        held = {keys[i] for i in rng.choice(len(keys), size=k, replace=False)} if k else set()
        for key in keys:
            (test if key in held else train).extend(nets[key])
    model = fit([*train, *extra], cfg)
    arts: dict[tuple[Group, str], list[Observation]] = {}
    for o in test:
        arts.setdefault((o.group, o.artifact), []).append(o)
    cases = []
    for (g, a), obs in arts.items():
        p = model.predict(g, obs[0].features)
        cases.append((g, a, p.p50, float(np.median([o.latency_ms["p50"] for o in obs]))))
    if not cases:
        raise EdgeCompressError("holdout_error: no group has two measured networks, so nothing can be held out")
    ape = [abs(p - m) / m for _, _, p, m in cases]
    per = {g: (float(np.median([e for c, e in zip(cases, ape) if c[0] == g])), sum(c[0] == g for c in cases))
           for g in dict.fromkeys(c[0] for c in cases)}
    return HoldoutResult(float(np.median(ape)), len(cases), per, tuple(cases))
