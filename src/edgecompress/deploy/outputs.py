"""An artifact's per-image outputs where it runs: the standalone runner's ``--score`` on a device.

Here, on an emulated device (``emulate:aarch64``) or over SSH: the same runner, the profile's runtime
settings, every image sent (no accuracy subset). Active learning ranks a pool by these numbers; the
agreement check (``deploy.agreement``) compares two devices' class probabilities for the same file.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.deploy.bench import local_command, run_local, runner_args
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.emulate import emulator, runner_timeout
from edgecompress.deploy.remote import run_remote
from edgecompress.deploy.targets import TargetProfile
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_json


def score_on_device(artifact: str | Path, x: np.ndarray, profile: TargetProfile, device: DeviceSpec,
                    probs: bool = False) -> dict[str, Any]:
    """The runner's ``--score`` result for the uint8 NCHW images ``x``, on ``device`` with ``profile``'s runtime
    (``probs``: with every image's class probabilities)."""
    artifact = Path(artifact)
    sidecar = Path(f"{artifact}.json")
    for f in (artifact, sidecar):
        if not f.is_file():
            raise EdgeCompressError(f"{f} not found; give an exported artifact with its sidecar "
                                    f"(models/export/heads.tflite, models/targets/<target>/...)")
    fmt = artifact.suffix.lstrip(".")
    if fmt not in ("onnx", "tflite"):
        raise EdgeCompressError(f"{artifact}: an .onnx or .tflite artifact runs on a device, not a .{fmt}")
    # The profile running this artifact, every image sent (no accuracy subset).
    pinned = profile.pinned(fmt, str(read_json(sidecar, "sidecar").get("precision", "fp32")))
    whole = replace(pinned, bench=replace(pinned.bench, accuracy_samples=None))
    extra = ["--probs"] if probs else []
    with tempfile.TemporaryDirectory(prefix="edgecompress-pool-") as tmp:
        pool = Path(tmp) / "pool.npz"
        np.savez(pool, x=x, y=np.zeros(len(x), np.int64))
        if device.is_local or device.emulated:
            args = runner_args(whole, str(artifact.resolve()), str(sidecar.resolve()), None) + ["--score", str(pool)]
            emu = emulator(device)
            cmd = emu.command(args + extra) if emu else local_command(args + extra)
            result = run_local(cmd, artifact, runner_timeout(device.timeout, device), f"target {profile.name}")
            return emu.mark(result) if emu else result
        args = runner_args(whole, artifact.name, f"{artifact.name}.json", None) + ["--score", "testset.npz"]
        return run_remote(whole, device, artifact, sidecar, pool, args + extra)
