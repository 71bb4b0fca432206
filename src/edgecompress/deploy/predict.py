"""The latency model in the build's search: predict each candidate before measuring it, and skip only those
confidently over a latency budget.

The model (``latency_model``) is fitted on the measurement cache's entries of this device (every entry whose
artifact is known by its sha256 or still on disk, whatever target measured it: another profile's bench
settings change the cache key, not the device key) and refitted after each group the search measures. A
candidate whose predicted band lies wholly above a latency budget (``should_measure``) is not measured and
counts as a miss, with its prediction as the reason; it can never be chosen, so every shipped artifact is
measured. When nothing measured fits, the search measures the predicted-over ones after all, so a failed or
proxy build is the one it was without the model. A device over SSH is fitted on its own entries (their
fingerprint is the device's, and each names its artifact by sha256: the file it ran was the device's copy).
No prediction on an emulated device (its timings decide nothing), on a GPU profile without its GPU
(likewise), for a cascade (its latency depends on where images exit), or with ``edgecompress build
--no-predict``; ``--exhaustive`` predicts but measures everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.hardware import local_gpu
from edgecompress.deploy.latency_features import FeatureCache
from edgecompress.deploy.latency_model import (Group, HoldoutResult, LatencyModel, Observation, Prediction,
                                               device_key, fit, holdout_error, load_observations, observation,
                                               should_measure)
from edgecompress.deploy.runner import capped_threads
from edgecompress.deploy.targets import TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.records import PoolEntry

log = get_logger("build")
FEATURES_DIR = "features"  # inside the measurement cache: an artifact's counted features, by its sha256


def why_not(profile: TargetProfile, device: DeviceSpec, enabled: bool) -> str | None:
    """Why this build predicts nothing (None: it predicts)."""
    if not enabled:
        return "off (--no-predict): every candidate that can win is measured"
    if device.emulated:
        return f"off: {device.url} is emulated (its timings decide nothing)"
    if not local_gpu(profile):
        return "off: a GPU profile measured without its GPU (its timings decide nothing)"
    return None


@dataclass(frozen=True)
class PredictionSummary:
    """What the search's predictions did: a one-line note, every candidate's predicted p50 (``{p50, lo, hi}``),
    those not measured with the reason, and the model's held-out error on this device (None: not computable)."""

    note: str
    on: bool = False
    predicted: Mapping[str, dict[str, float]] = field(default_factory=dict)
    ruled_out: Mapping[str, str] = field(default_factory=dict)
    holdout: HoldoutResult | None = None


def over_budget(prediction: Prediction | None, budgets: Mapping[str, float]) -> str | None:
    """The skip reason when ``prediction`` is confidently over a latency budget (``should_measure``), else None."""
    if should_measure(prediction, budgets):
        return None
    assert prediction is not None
    key = next(k for k, limit in budgets.items() if k in prediction.ms and prediction.ms[k][1] > limit)
    point, lo, hi = prediction.ms[key]
    return (f"predicted over budget: {key} {point:.4g} ms [{lo:.4g}, {hi:.4g}] > {budgets[key]:g} ms "
            f"({prediction.method}; not measured)")


class Predictor:
    """The search's latency model for one build: observations of this device, refitted as the search measures."""

    def __init__(self, profile: TargetProfile, probe: Mapping[str, Any], cache_dir: Path, note: str | None,
                 skip: bool) -> None:
        self.profile, self.probe, self.note = profile, probe, note
        self.on, self.skip = note is None, skip and note is None
        self.features = FeatureCache(cache_dir / FEATURES_DIR)
        self.obs: dict[str, Observation] = {}
        self._model: LatencyModel | None = None
        self.predicted: dict[str, Prediction] = {}
        self.ruled_out: dict[str, str] = {}
        if self.on:
            try:
                found, _ = load_observations(cache_dir, self.features)
            except EdgeCompressError as e:  # a corrupt entry: the build measures it again, the model goes without
                log.warning(f"{profile.name}: latency model: the cache's other entries are left out ({e})")
                found = []
            self.obs.update({o.where: o for o in found})

    def group(self, variant: TargetProfile) -> Group:
        """The fit ``variant`` (a profile pinned to one candidate's format and precision) falls in."""
        rt, engine = variant.runtime, variant.runtime.engine or ""
        version = ((self.probe.get("runtimes") or {}).get(engine) or "").split(" ")[-1] or None
        fp = self.probe.get("fingerprint") or {}
        # The threads the runner will run on that device (its cores cap them), as each measurement records
        # them; measurements of other thread counts are another fit.
        cores = fp.get("cores")
        threads = capped_threads(rt.threads, cores if isinstance(cores, int) else None)
        key = device_key(fp, engine, version, threads, rt.xnnpack, rt.providers, variant.bench.batch)
        return Group(key, engine, variant.artifact.precision if variant.artifact else "")

    def add(self, raw: Mapping[str, Any], path: Path, sha256: str, where: str) -> None:
        """A measurement of this build (a cache hit or a fresh run) joins the fit."""
        if not self.on:
            return
        try:
            self.obs[where] = observation(raw, self.features.get(path, sha256), sha256, where)
        except EdgeCompressError as e:  # an odd result decides its own candidate; it just does not teach the model
            log.warning(f"{self.profile.name}: latency model: {where} left out ({e})")
            return
        self._model = None

    def predict(self, variant: TargetProfile, entry: PoolEntry, pool_dir: Path) -> Prediction | None:
        """``entry``'s predicted latency (None: a cascade, or nothing measured in its group yet)."""
        if not self.on or entry.is_cascade:
            return None
        if self._model is None:
            self._model = fit(self.obs.values())
        p = self._model.predict(self.group(variant), self.features.get(pool_dir / entry.path, entry.sha256))
        if p is not None:
            self.predicted[entry.name] = p
        return p

    def screen(self, variants: Mapping[str, TargetProfile], todo: Sequence[PoolEntry],
               pool_dir: Path) -> list[PoolEntry]:
        """The entries of ``todo`` to measure: all but those predicted confidently over a latency budget."""
        keep = []
        for e in todo:
            why = over_budget(self.predict(variants[e.name], e, pool_dir), self.profile.budgets.latency_ms)
            if why is not None and self.skip:
                self.ruled_out[e.name] = why
                log.info(f"{self.profile.name}: {e.name} {why}")
            else:
                keep.append(e)
        return keep

    def release(self) -> list[str]:
        """Nothing measured fits: the ruled-out ones are measured after all (the prediction never decides)."""
        names, self.ruled_out, self.skip = list(self.ruled_out), {}, False
        self.note = (f"{len(names)} predicted over the latency budget were measured after all: nothing "
                     f"measured fits")
        return names

    def summary(self, variants: Mapping[str, TargetProfile], entries: Sequence[PoolEntry],
                pool_dir: Path) -> PredictionSummary:
        """Predict every allowed candidate not yet predicted (the frontier's latency where none was measured),
        and the held-out error on this device's observations."""
        if not self.on:
            return PredictionSummary(self.note or "off")
        for e in entries:
            if e.name not in self.predicted:
                self.predict(variants[e.name], e, pool_dir)
        devices = {self.group(v).device for v in variants.values()}
        mine = [o for o in self.obs.values() if o.group.device in devices]
        others = [o for o in self.obs.values() if o.group.device not in devices]
        try:  # the other devices stay in the fit, as they are in the build's: they lend one-network groups a shape
            held = holdout_error(mine, extra=others)
        except EdgeCompressError:  # fewer than two measured networks in every group: nothing to hold out
            held = None
        groups = {o.group for o in mine}
        note = self.note or (f"on: fitted on {len(mine)} measurements of this device in {len(groups)} "
                             f"engine/precision groups")
        return PredictionSummary(note, True, {n: _band(p) for n, p in self.predicted.items()}, dict(self.ruled_out),
                                 held)


def _band(p: Prediction) -> dict[str, float]:
    point, lo, hi = p.ms["p50"]
    return {"p50": round(point, 6), "lo": round(lo, 6), "hi": round(hi, 6)}
