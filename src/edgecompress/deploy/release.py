"""What a deploy ships, prepared on the host: the build's package and the pieces that run it, their sha256
manifest, the seeded smoke-test images and the host's own answers on them.

Nothing here touches a device. The package is unpacked here first, so a package that cannot reach the
device intact is refused before any upload, and the sha256 the device must reproduce is the package's
own. The host's answers come from the build's model file (what the build measured and chose), run by the
same runner code with the profile's runtime settings; the device runs the file it unpacked.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.artifacts import CASCADE_SUFFIX
from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import read_npz
from edgecompress.log import get_logger
from edgecompress.records import read_build_record
from edgecompress.deploy.package import PACKAGE_SUFFIX, PackageError, unpack
from edgecompress.deploy.runner import RunnerError, score, stratified_subset
from edgecompress.deploy.targets import TargetProfile

log = get_logger("deploy")
HERE = Path(__file__).resolve().parent
# The standalone files every release carries (numpy + the runtime on the device, nothing else).
PIECES = {name: HERE / name for name in ("runner.py", "package.py", "classify.py")}
MANIFEST = "MANIFEST.json"
SMOKE = "smoke.npz"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Release:
    """One release of a target, staged in a local folder under the names it gets on the device."""

    target: str
    artifact: str  # the build's chosen candidate, e.g. student/int8.tflite
    model: str  # its file name, e.g. int8.tflite (the device unpacks <model>.ecpk into it)
    sha256: str  # of the model file: the release's name on the device
    staged: tuple[Path, ...]  # local files to copy (the package, sidecar, pieces, manifest, smoke images)
    package_bytes: int
    smoke_args: tuple[str, ...]  # the runner's flags for the smoke run, the same on host and device
    reference: tuple[int, ...]  # the host's top-1 answer per smoke image
    host_ms_per_image: float


def _runtime_args(profile: TargetProfile, model: str) -> list[str]:
    """The profile's runtime settings as runner flags (engine from the file, as the build measured it)."""
    rt = profile.runtime
    args = ["--threads", str(rt.threads)] if rt.threads is not None else []
    if model.endswith(".onnx"):
        args += ["--providers", ",".join(rt.providers)]
    elif not rt.xnnpack:
        args.append("--no-xnnpack")
    return args


def _smoke_images(images: Path, n: int, out: Path) -> int:
    """Write a seeded, class-stratified ``n`` of ``images`` (x uint8 NCHW, y labels) to ``out``; how many."""
    z = read_npz(images, ("x", "y"), "validation images", "give --images an .npz with x (uint8 N,C,H,W) and y")
    x, y = z["x"], z["y"]
    if x.ndim != 4 or x.dtype != np.uint8 or not len(x):
        raise EdgeCompressError(f"validation images {images}: x must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    keep = stratified_subset(np.asarray(y), n) if n < len(x) else np.arange(len(x))
    np.savez(out, x=x[keep])
    return len(keep)


def prepare_release(profile: TargetProfile, build_dir: str | Path, images: str | Path, stage: Path,
                    smoke_images: int) -> Release:
    """Check the build's output, stage what the device gets in ``stage`` and run the host's side of the smoke
    test. Errors name the file and the fix."""
    build_dir = Path(build_dir)
    record = read_build_record(build_dir, f"build the target first: dvc repro build@{profile.name}")
    if record.failed:
        raise EdgeCompressError(f"{build_dir / 'build.json'}: the build of {profile.name} shipped nothing "
                                f"({record.error or record.status}); fix the build before deploying")
    name = record.chosen.file
    if name.endswith(CASCADE_SUFFIX):
        raise EdgeCompressError(f"{build_dir}: the build chose the cascade {record.chosen.name}; deploying a cascade "
                                f"(several segments) is not supported yet")
    if not SAFE_NAME.fullmatch(name) or name in PIECES or name in (MANIFEST, SMOKE):
        raise EdgeCompressError(f"{build_dir / 'build.json'}: chosen.file {name!r} cannot name a file on the device")
    model, pkg, sidecar = build_dir / name, build_dir / f"{name}{PACKAGE_SUFFIX}", build_dir / f"{name}.json"
    for path in (model, pkg, sidecar):
        if not path.is_file():
            raise EdgeCompressError(f"{path} is missing; re-run the build (dvc repro build@{profile.name})")
    blob = pkg.read_bytes()
    try:
        data, _ = unpack(blob)  # its length and sha256 checked against its own header
    except PackageError as e:
        raise EdgeCompressError(f"{pkg}: {e}; re-run the build (dvc repro build@{profile.name})") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != file_sha256(model):
        # Not refused here: the smoke test compares the device's answers with this file's and decides.
        log.warning(f"{pkg} does not unpack to {model} (sha256 {sha[:12]} vs {file_sha256(model)[:12]}); "
                    f"the smoke test will compare the two")
    for local, remote in ((pkg, f"{name}{PACKAGE_SUFFIX}"), (sidecar, f"{name}.json"),
                          *((p, n) for n, p in PIECES.items())):
        shutil.copyfile(local, stage / remote)
    files = {p.name: file_sha256(p) for p in sorted(stage.iterdir())}
    manifest = {"target": profile.name, "artifact": record.chosen.name, "model": name,
                "files": {**files, name: sha}}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    n = _smoke_images(Path(images), smoke_images, stage / SMOKE)
    args = ("--score", SMOKE, "--model", name, *_runtime_args(profile, name))
    try:
        host = score(model, stage / SMOKE, sidecar, threads=profile.runtime.threads,
                     providers=list(profile.runtime.providers) if name.endswith(".onnx") else None,
                     xnnpack=profile.runtime.xnnpack)
    except RunnerError as e:
        raise EdgeCompressError(f"{model}: the host's smoke run failed: {e}") from None
    log.info(f"{profile.name}: release {sha[:12]} ({record.chosen.name}, package {len(blob)} bytes); host answered "
             f"{n} smoke images in {1000 * host['seconds'] / n:.2f} ms each")
    return Release(profile.name, record.chosen.name, name, sha, tuple(sorted(stage.iterdir())), len(blob), args,
                   tuple(int(g) for g in host["guess"]), 1000 * host["seconds"] / n)

