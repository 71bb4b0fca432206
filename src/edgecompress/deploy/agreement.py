"""Do the device's kernels compute what this machine's do? Agreement of one artifact's outputs on two devices.

A profile's ``agreement:`` section names a second device whose kernels are the ones that ship (an emulated
aarch64 root, or a board over SSH). The same file runs there and here on the same images, through the same
standalone runner (``--score --probs``); what is compared:

- top-1 agreement: the share of images whose predicted class is the same on both (its 95% Wilson interval
  is what ``budgets.min_agreement`` judges, as accuracy floors are judged);
- the largest difference of any class probability on any image;
- the device's own accuracy, NLL and ECE on those images (its kernels' numbers, not this machine's).

A build compares every candidate it measures on the pool's validation images (cached like a measurement);
the check compares the shipped artifact on its test images. When the device cannot run here (no prepared
root, no qemu), ``unavailable`` says why in one line with the fix, and the pipeline goes on without it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgecompress.data import load_npz_split
from edgecompress.deploy.devices import AgreementSpec, DeviceSpec
from edgecompress.deploy.emulate import emulator
from edgecompress.deploy.outputs import score_on_device
from edgecompress.deploy.runner import _classification, stratified_subset
from edgecompress.deploy.targets import TargetProfile
from edgecompress.errors import EdgeCompressError

HOST = DeviceSpec()
SUBSET_SEED = 0  # the images compared: a seeded class-stratified subset, the same for every candidate


@dataclass(frozen=True)
class Agreement:
    """One artifact's outputs on ``device`` against this machine's, on ``images`` images."""

    device: str  # the agreement device's url, e.g. emulate:aarch64
    images: int
    top1: float  # share of images with the same predicted class
    max_prob_diff: float  # largest |p_device - p_host| over images and classes
    accuracy: float | None = None  # the device's, on these images (None: no labels)
    host_accuracy: float | None = None
    nll: float | None = None  # the device's
    ece: float | None = None
    fingerprint: Mapping[str, Any] | None = None  # the device runner's (emulated: qemu, cpu, runtimes)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "images": self.images, "top1": self.top1, "max_prob_diff": self.max_prob_diff,
                "accuracy": self.accuracy, "host_accuracy": self.host_accuracy, "nll": self.nll, "ece": self.ece,
                "fingerprint": None if self.fingerprint is None else dict(self.fingerprint)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Agreement:
        try:
            return cls(device=str(d["device"]), images=int(d["images"]), top1=float(d["top1"]),
                       max_prob_diff=float(d["max_prob_diff"]), accuracy=d.get("accuracy"),
                       host_accuracy=d.get("host_accuracy"), nll=d.get("nll"), ece=d.get("ece"),
                       fingerprint=d.get("fingerprint"))
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeCompressError(f"not an agreement record ({type(e).__name__}: {e}); re-run the build") from None

    @property
    def text(self) -> str:
        """``99.95% top-1 (1999/2000 images), largest probability difference 0.0031``."""
        same = round(self.top1 * self.images)
        return (f"{100 * self.top1:.2f}% top-1 ({same}/{self.images} images), largest probability difference "
                f"{self.max_prob_diff:.4f}")


def compare(host: np.ndarray, dev: np.ndarray, y: np.ndarray | None, device: str,
            fingerprint: Mapping[str, Any] | None = None) -> Agreement:
    """The agreement of two (N, C) probability arrays of the same images (``y``: their labels, or None)."""
    host, dev = np.asarray(host, np.float64), np.asarray(dev, np.float64)
    if host.shape != dev.shape or host.ndim != 2 or not len(host):
        raise EdgeCompressError(f"agreement on {device}: outputs of shapes {host.shape} and {dev.shape} cannot be "
                                f"compared (the same images must give (N, classes) on both)")
    same = float((host.argmax(1) == dev.argmax(1)).mean())
    scores: dict[str, Any] = {}
    host_acc = None
    if y is not None:
        # Log-probabilities are logits to the runner's own scoring (softmax(log p) = p): one formula for both.
        scores = _classification(np.log(np.clip(dev, 1e-30, None)), np.asarray(y))
        host_acc = float((host.argmax(1) == np.asarray(y)).mean())
    return Agreement(device=device, images=int(len(host)), top1=same, max_prob_diff=float(np.abs(host - dev).max()),
                     accuracy=scores.get("accuracy"), host_accuracy=host_acc, nll=scores.get("nll"),
                     ece=scores.get("ece"), fingerprint=fingerprint)


def unavailable(spec: AgreementSpec) -> str | None:
    """Why ``spec``'s device cannot run here (one line with the fix), or None when it can. Only an emulated
    device is checked here; an SSH one answers (or fails clearly) when it is used."""
    if not spec.device.emulated:
        return None
    try:
        emulator(spec.device)
    except EdgeCompressError as e:
        return str(e)
    return None


def subset(y: np.ndarray, samples: int | None) -> np.ndarray:
    """The images compared: all, or a seeded class-stratified ``samples`` of them (the same for every candidate)."""
    return stratified_subset(np.asarray(y), len(y) if samples is None else samples, SUBSET_SEED)


def measure(profile: TargetProfile, artifact: str | Path, x: np.ndarray, y: np.ndarray | None,
            device: DeviceSpec) -> Agreement:
    """Run ``artifact`` with ``profile``'s runtime on ``device`` and here on the uint8 NCHW images ``x``; compare."""
    here = score_on_device(artifact, x, profile, HOST, probs=True)
    there = score_on_device(artifact, x, profile, device, probs=True)
    for name, r in (("this machine", here), (device.url, there)):
        if "probs" not in r:
            raise EdgeCompressError(f"{artifact}: the runner on {name} returned no probabilities (an older runner?); "
                                    f"re-run with this edgecompress's runner")
    return compare(np.asarray(here["probs"]), np.asarray(there["probs"]), y, device.url, there.get("fingerprint"))


def on_test_images(profile: TargetProfile, artifacts_dir: Path,
                   testset: Path | None) -> tuple[Agreement | None, str]:
    """The checked artifact's outputs on the profile's agreement device against this host's, on the test images
    the check scores (its stratified subset); (None, why) when that device cannot run here, (None, "") when the
    profile names none or there is no test set."""
    spec = profile.agreement
    if spec is None or testset is None:
        return None, ""
    why = unavailable(spec)
    if why:
        return None, f"agreement not compared with {spec.device.url}: {why}; accuracy judged on this host"
    model = Path(artifacts_dir) / profile.artifact.filename  # type: ignore[union-attr]
    if profile.artifact is not None and profile.artifact.cascade:
        return None, "agreement not compared: an early-exit cascade runs segment by segment (compare its segments)"
    x, y = load_npz_split(testset)
    idx = subset(y, profile.bench.accuracy_samples)
    return measure(profile, model, x[idx], y[idx], spec.device), ""


def device_identity(spec: AgreementSpec) -> dict[str, Any]:
    """What about ``spec``'s device determines its outputs: its url and, emulated, the qemu, CPU and runtimes
    (read from the prepared root's manifest once per build, not once per candidate)."""
    emu = emulator(spec.device) if spec.device.emulated else None
    return {"device": spec.device.url,
            "emulated": None if emu is None else {"qemu": emu.manifest.qemu_version, "cpu": emu.cpu,
                                                  "runtimes": emu.manifest.runtimes}}


def cache_key(sha256: str, profile: TargetProfile, identity: Mapping[str, Any], images: int) -> str:
    """What determines an agreement: the file, the device (``device_identity``), the runtime settings and the
    images compared."""
    rt = profile.runtime
    parts = {"agreement": sha256, **identity, "images": images, "seed": SUBSET_SEED,
             "threads": rt.threads, "xnnpack": rt.xnnpack, "providers": list(rt.providers)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
