"""An emulated device: a Debian root of another instruction set whose python3 runs the standalone runner
through qemu user-mode emulation (``--device emulate:aarch64``, ``emulate:armv7`` for 32-bit ARM).

``edgecompress device prepare --arch aarch64`` builds the root once (``deploy.prepare``); this module
finds it, checks it against its manifest and runs the runner inside it. The runner and the files it
reads keep their host paths: ``qemu -L <root>`` looks a path up inside the root first and falls back to
the host, so nothing is copied (a host path that also exists inside the root would be the root's file,
so such paths are refused). The result is the runtimes' aarch64 kernels computing the outputs, so
accuracy, agreement and sizes stand as on a device; its latency and peak memory are the emulator's
(translated code, an x86 core), recorded as a proxy and never judged (``DeviceSpec.emulated``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgecompress.deploy.bench import RUNNER
from edgecompress.deploy.devices import EMULATED_ARCHES, DeviceSpec, unknown_arch
from edgecompress.errors import EdgeCompressError

# The one place the device's software is pinned. Debian bookworm is Raspberry Pi OS 12's base: python3.11,
# numpy 1.24, glibc 2.36 (so manylinux wheels up to 2_36 install). The runtimes are the newest releases
# this table was checked against; ai-edge-litert 1.4.0 follows the issue (#29), see the README for 2.x.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "3.11"
GLIBC_MINOR = 36
RUNTIMES: dict[str, str] = {"onnxruntime": "1.32.0", "ai-edge-litert": "1.4.0"}
# Each arch's pins. 32-bit ARM: neither onnxruntime nor ai-edge-litert publishes an armv7l wheel at any
# version on PyPI; tflite-runtime 2.14.0 (its last release) has cp311 manylinux_2_34_armv7l,
# which bookworm's glibc 2.36 installs. docs/targets-and-devices.md "32-bit ARM (armv7)" has the search.
ARCH_RUNTIMES: dict[str, dict[str, str]] = {"aarch64": RUNTIMES, "armv7": {"tflite-runtime": "2.14.0"}}
NO_WHEEL = {"armv7": ("onnxruntime", "ai-edge-litert")}  # no wheel for the arch at any version: never pinnable
# The runtimes that can run a model file, by its extension (the runner chooses by it the same way).
MODEL_RUNTIMES = {".onnx": ("onnxruntime",), ".tflite": ("ai-edge-litert", "tflite-runtime")}
# qemu's name for each arch (qemu-<name>-static, binfmt_misc's qemu-<name>), and what platform.machine()
# says inside, which is also the arch in the wheels' platform tags.
QEMU_NAME = {"aarch64": "aarch64", "armv7": "arm"}
MACHINE = {"aarch64": "aarch64", "armv7": "armv7l"}
# qemu's CPU model, and what the root's /proc/cpuinfo says about it (see CPUINFO below): a Cortex-A76
# (ARMv8.2 with dot product and fp16), the big core of the mobile-cpu profile and of the Raspberry Pi 5; a
# Cortex-A7 (ARMv7-A, NEON and VFPv4, no fp16 arithmetic), iot-camera's core and the Raspberry Pi 2's.
QEMU_CPU = {"aarch64": "cortex-a76", "armv7": "cortex-a7"}
CPUINFO = {"aarch64": {"features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                                   "asimdrdm lrcpc dcpop asimddp ssbs",
                       "implementer": "0x41", "architecture": "8", "variant": "0x4", "part": "0xd0b",
                       "revision": "1"},
           # A 32-bit kernel's lines for a Cortex-A7 (as on an i.MX6ULL or a Raspberry Pi 2): the runtimes' CPU
           # detection reads NEON/VFPv4/idiv here and in the hwcaps qemu gives for -cpu cortex-a7.
           "armv7": {"model name": "ARMv7 Processor rev 5 (v7l)",
                     "features": "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm",
                     "implementer": "0x41", "architecture": "7", "variant": "0x0", "part": "0xc07",
                     "revision": "5"}}
CPUINFO_ENTRIES = 64  # processors listed; the runtimes use those the host's /sys lists (at most this many)
MANIFEST = "edgecompress-device.json"
SITE = "opt/edgecompress/site"  # the wheels, unpacked; a .pth file puts it on python3's path
PTH = "usr/lib/python3/dist-packages/edgecompress-runtimes.pth"
ROOT_PYTHON = "usr/bin/python3"
# Files every usable root has (besides the wheels' own): checked on every use, cheaply (existence only).
BASE_FILES = (ROOT_PYTHON, "usr/lib/python3/dist-packages/numpy/__init__.py", "proc/cpuinfo", PTH)
MANIFEST_VERSION = 1
PREPARE_HINT = "run: edgecompress device prepare --arch {arch}"
SLOWDOWN = 20  # how much longer than natively a runner may take under emulation before it is timed out


def cache_dir() -> Path:
    """Where prepared devices live: ``$XDG_CACHE_HOME/edgecompress/devices`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecompress" / "devices"


def check_arch(arch: str) -> str:
    """``arch`` if edgecompress can emulate it; else the one-line error."""
    if arch not in EMULATED_ARCHES:
        raise EdgeCompressError(unknown_arch(arch))
    return arch


def find_qemu(arch: str) -> str:
    """The qemu user-mode emulator for ``arch`` (the static build first: it also serves a chroot)."""
    qemu = QEMU_NAME[arch]
    for name in (f"qemu-{qemu}-static", f"qemu-{qemu}"):
        path = shutil.which(name)
        if path:
            return path
    raise EdgeCompressError(f"qemu-{qemu}-static is not installed, so {arch} cannot be emulated; install it: "
                            f"apt-get install qemu-user-static")


def qemu_version(qemu: str) -> str:
    """``7.2.22`` from ``qemu-aarch64 version 7.2.22 (Debian ...)``."""
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else "unknown"


@dataclass(frozen=True)
class Wheel:
    """One runtime wheel unpacked into the root: which, its sha256, and the root files it put there."""

    name: str
    version: str
    file: str
    sha256: str
    files: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "file": self.file, "sha256": self.sha256,
                "files": list(self.files)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Wheel:
        return cls(d["name"], d["version"], d["file"], d["sha256"], tuple(d["files"]))


@dataclass(frozen=True)
class Manifest:
    """What a prepared root holds and how it was made; written last, so a root without one is half-built."""

    arch: str
    suite: str
    mirror: str
    python: str  # the root's python3, e.g. 3.11.2
    numpy: str
    qemu: str  # the emulator binary the root was checked with
    qemu_version: str
    qemu_cpu: str
    binfmt: bool  # qemu was registered with binfmt_misc for the second stage (runs call qemu explicitly)
    wheels: tuple[Wheel, ...]
    base_files: tuple[str, ...]
    seconds: Mapping[str, float]  # each preparation step's wall time, and "total"
    prepared_at: str  # UTC, ISO 8601

    @property
    def runtimes(self) -> dict[str, str]:
        return {w.name: w.version for w in self.wheels}

    def to_json(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, "arch": self.arch, "suite": self.suite, "mirror": self.mirror,
                "python": self.python, "numpy": self.numpy, "qemu": self.qemu, "qemu_version": self.qemu_version,
                "qemu_cpu": self.qemu_cpu, "binfmt": self.binfmt, "wheels": [w.to_json() for w in self.wheels],
                "base_files": list(self.base_files), "seconds": dict(self.seconds), "prepared_at": self.prepared_at}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        if d.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"manifest_version {d.get('manifest_version')!r}, not {MANIFEST_VERSION}")
        return cls(d["arch"], d["suite"], d["mirror"], d["python"], d["numpy"], d["qemu"], d["qemu_version"],
                   d["qemu_cpu"], bool(d["binfmt"]), tuple(Wheel.from_json(w) for w in d["wheels"]),
                   tuple(d["base_files"]), dict(d["seconds"]), d["prepared_at"])


def device_root(arch: str, cache: str | Path | None = None) -> Path:
    """The root of the emulated ``arch`` device under ``cache`` (default ``cache_dir()``)."""
    return Path(cache or cache_dir()) / check_arch(arch)


def read_manifest(root: Path) -> tuple[Manifest | None, str]:
    """(the manifest, "") when ``root`` is complete; else (None or the manifest, why the root is unusable).

    A root without a manifest, or missing a file the manifest names, was left half-built (a stopped
    preparation, a deleted folder): it must be rebuilt, never used.
    """
    path = root / MANIFEST
    if not root.is_dir():
        return None, f"{root} does not exist"
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None, f"{root} has no {MANIFEST} (a preparation that stopped half-way)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{path} is unreadable ({type(e).__name__}: {e})"
    for rel in (*manifest.base_files, *(f for w in manifest.wheels for f in w.files)):
        if not os.path.lexists(root / rel):
            return manifest, f"{root / rel}, which {MANIFEST} names, is missing (the root was changed or deleted " \
                             f"half-way)"
    return manifest, ""


@dataclass(frozen=True)
class Emulator:
    """A prepared root and the qemu that runs it: the runner's command line, and its results marked emulated."""

    arch: str
    root: Path
    qemu: str
    manifest: Manifest

    @property
    def cpu(self) -> str:
        return self.manifest.qemu_cpu

    def command(self, args: Sequence[str], runner: Path = RUNNER) -> list[str]:
        """``qemu -cpu <cpu> -L <root> <root>/usr/bin/python3 -I runner.py <args>``: the same standalone runner,
        by its host path. ``-I`` keeps the host's PYTHONPATH and user site (x86 packages) out of the guest."""
        self._has_runtime_for(args)
        for arg in (str(runner), *args):
            if arg.startswith("/") and os.path.exists(arg) and os.path.lexists(self.root / arg.lstrip("/")):
                raise EdgeCompressError(f"{arg} also exists inside the emulated device's root {self.root}, so the "
                                        f"device would read that file instead; move it (or the root) elsewhere")
        return [self.qemu, "-cpu", self.cpu, "-L", str(self.root), str(self.root / ROOT_PYTHON), "-I", str(runner),
                *args]

    def _has_runtime_for(self, args: Sequence[str]) -> None:
        """One clear line, before any run, when the root has no runtime for ``--model``'s format (an .onnx on
        armv7, where none can be installed), instead of the runner's 'pip install onnxruntime'."""
        model = next((b for a, b in zip(args, args[1:]) if a == "--model"), None)
        need = MODEL_RUNTIMES.get(Path(model).suffix, ()) if model else ()
        if need and not set(need) & set(self.manifest.runtimes):
            absent = [n for n in need if n in NO_WHEEL.get(self.arch, ())]
            verb = "publishes" if len(absent) == 1 else "publish"
            why = (f"; {' and '.join(absent)} {verb} no {MACHINE[self.arch]} wheel, so run it on a real board "
                   f"(ssh://) or an aarch64 device" if absent == list(need) else
                   f"; add one: edgecompress device prepare --arch {self.arch} --runtime NAME==VERSION")
            raise EdgeCompressError(f"{model} needs {' or '.join(need)}, which the emulated {self.arch} device does "
                                    f"not have (it has {', '.join(self.manifest.runtimes)}){why}")

    def mark(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` (a runner's JSON or probe) with its fingerprint saying it was emulated, and by what."""
        fp = result.setdefault("fingerprint", {})
        fp.update({"emulated": True, "emulator": f"qemu-{QEMU_NAME[self.arch]} {self.manifest.qemu_version}",
                   "qemu_version": self.manifest.qemu_version, "qemu_cpu": self.cpu,
                   "runtimes": self.manifest.runtimes, "device_root": str(self.root)})
        return result


def emulator(device: DeviceSpec, cache: str | Path | None = None) -> Emulator | None:
    """The prepared emulator for an ``emulate:<arch>`` device (None for any other device); one clear error when
    it was never prepared, was left half-built, or its qemu is gone."""
    if not device.emulated:
        return None
    arch = check_arch(str(device.arch))
    root = device_root(arch, cache)
    manifest, problem = read_manifest(root)
    if manifest is None or problem:
        raise EdgeCompressError(f"device {device.url} is not ready: {problem}; {PREPARE_HINT.format(arch=arch)}")
    qemu = manifest.qemu if os.access(manifest.qemu, os.X_OK) else find_qemu(arch)
    return Emulator(arch, root, qemu, manifest)


def runner_timeout(seconds: float, device: DeviceSpec) -> float:
    """``seconds`` for a runner call here, stretched by ``SLOWDOWN`` on an emulated device."""
    return seconds * SLOWDOWN if device.emulated else seconds
