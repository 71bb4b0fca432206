"""Prepare an emulated device once: an arm64 (or armhf) Debian root with python3, numpy and the runtimes' wheels.

``edgecompress device prepare --arch aarch64`` (or ``--arch armv7``) runs ``prepare``. The steps, and why each
odd one is there:

1. The runtimes' wheels first (``pip download`` for the root's Python and glibc): a version with no
   wheel for the arch fails in seconds, naming the versions that have one, not after the long build.
2. ``debootstrap --foreign`` (minbase + python3, python3-numpy), then its second stage in a chroot,
   which runs the root's binaries through qemu registered with binfmt_misc (registered here when allowed).
3. Absolute symlinks become relative: runs use ``qemu -L <root>``, which maps a guest path into the root,
   but the host kernel follows an absolute link on the host (numpy's libblas.so.3 -> /etc/alternatives/...).
4. The root's own ``/proc/cpuinfo``, describing the CPU qemu emulates: through ``-L`` the guest would read
   the host's x86 one, with which onnxruntime's cpuinfo crashes (SIGSEGV) and LiteRT's XNNPACK turns
   itself off in silence (its builtin kernels then run, 20x slower, and they are not the device's).
5. The wheels unpacked into ``/opt/edgecompress/site`` (a .pth file puts it on python3's path, by a path
   relative to the .pth: see ``pth_line``), an import check under qemu, then the manifest, written last: a
   root without one is half-built and is rebuilt.

The root is built beside its final place (``<arch>.partial``) and moved there whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from edgecompress.deploy import emulate as em
from edgecompress.deploy.devices import EMULATED_ARCHES
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import write_json
from edgecompress.log import get_logger

log = get_logger("device")

# What the import check imports for each runtime (the runner imports the same).
IMPORTS = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert.interpreter",
           "tflite-runtime": "tflite_runtime.interpreter"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
STEP_TIMEOUT = 3600  # seconds for one debootstrap stage on a slow machine or mirror


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` did: ``ready`` (nothing to do), ``built``, ``rebuilt`` or ``runtimes replaced``."""

    root: Path
    manifest: em.Manifest
    action: str
    why: str = ""  # why it was rebuilt


def runtime_pins(overrides: Sequence[str] = (), arch: str = "aarch64") -> dict[str, str]:
    """``arch``'s pinned runtimes (``emulate.ARCH_RUNTIMES``) with ``name==version`` overrides applied."""
    pins = dict(em.ARCH_RUNTIMES[em.check_arch(arch)])
    for spec in overrides:
        name, sep, version = spec.partition("==")
        if name in em.NO_WHEEL.get(arch, ()):
            raise EdgeCompressError(f"--runtime {spec!r}: {name} publishes no {em.MACHINE[arch]} wheel for Python "
                                    f"{em.PYTHON} at any version, so the {arch} device cannot run it (it has "
                                    f"{', '.join(pins)}); for {name} use a real board (device: ssh://user@host) or "
                                    f"a 64-bit OS (--arch aarch64)")
        if not sep or not version or name not in pins:
            example = next(iter(pins.items()))
            raise EdgeCompressError(f"--runtime {spec!r}: give NAME==VERSION with NAME one of {', '.join(pins)} "
                                    f"(the {arch} device's runtimes), e.g. {example[0]}=={example[1]}")
        pins[name] = version
    return pins


def wheel_platforms(arch: str) -> list[str]:
    """Every manylinux tag a wheel for the root's glibc may carry (pip expands none of them itself)."""
    tag = em.MACHINE[arch]
    return [f"manylinux_2_{minor}_{tag}" for minor in range(17, em.GLIBC_MINOR + 1)] + [f"manylinux2014_{tag}"]


def pip_download_argv(name: str, version: str, arch: str, dest: Path) -> list[str]:
    """``pip download`` of exactly one binary wheel of ``name==version`` for the root's CPython and arch."""
    abi = "cp" + em.PYTHON.replace(".", "")
    platforms = [a for p in wheel_platforms(arch) for a in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "--python-version", em.PYTHON, "--implementation", "cp", "--abi", abi, *platforms, "-d", str(dest),
            f"{name}=={version}"]


def missing_wheel(name: str, version: str, arch: str, stderr: str) -> str:
    """The one-line error for a failed ``pip download``: the versions that have a wheel, when pip named them."""
    m = re.search(r"\(from versions: ([^)]*)\)", stderr)
    tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-2:])
    if m is None:
        return (f"pip could not download {name}=={version} for {arch} ({tail or 'no message'}); check the network "
                f"and the package index (pip config list)")
    versions = m.group(1).strip()
    where = f"for {arch} Linux and Python {em.PYTHON} (glibc <= 2.{em.GLIBC_MINOR})"
    if versions == "none":
        return f"{name} publishes no wheel {where} at any version, so it cannot run on this device"
    return (f"{name} {version} has no wheel {where}; versions that have one: {versions}; pin one with "
            f"--runtime {name}==<version> (or in emulate.RUNTIMES)")


def download_wheel(name: str, version: str, arch: str, dest: Path) -> Path:
    """The wheel file of ``name==version`` for ``arch`` in ``dest`` (pip reuses one already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(pip_download_argv(name, version, arch, dest), capture_output=True, text=True,
                          timeout=STEP_TIMEOUT)
    if proc.returncode != 0:
        raise EdgeCompressError(missing_wheel(name, version, arch, proc.stderr))
    prefix = name.replace("-", "_") + f"-{version}-"
    found = sorted(p for p in dest.glob("*.whl") if p.name.startswith(prefix) and f"_{em.MACHINE[arch]}." in p.name)
    if not found:
        raise EdgeCompressError(f"pip reported {name}=={version} downloaded but {dest} holds no {arch} wheel of it")
    return found[-1]


def ensure_binfmt(arch: str) -> None:
    """qemu registered with binfmt_misc (with the F flag, so a chroot finds it), registering it when allowed."""
    qemu = f"qemu-{em.QEMU_NAME[arch]}"
    entry = BINFMT / qemu
    fix = (f"as root run: mount -t binfmt_misc binfmt_misc {BINFMT}; update-binfmts --enable {qemu} "
           f"(in a container, start it with --privileged)")
    if not entry.is_file():
        steps = ([] if (BINFMT / "register").exists() else [["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)]])
        for argv in (*steps, ["update-binfmts", "--enable", qemu]):
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            except FileNotFoundError:
                raise EdgeCompressError(f"{argv[0]} is not installed; apt-get install binfmt-support") from None
            if proc.returncode != 0:
                raise EdgeCompressError(f"no permission to register {qemu} with binfmt_misc ({' '.join(argv)}: "
                                        f"{proc.stderr.strip() or proc.returncode}); {fix}")
    text = entry.read_text() if entry.is_file() else ""
    flags = re.search(r"^flags: *(\S*)", text, re.MULTILINE)
    if "enabled" not in text or not flags or "F" not in flags.group(1):
        raise EdgeCompressError(f"{entry} is not an enabled entry with the F flag (it says "
                                f"{text.splitlines()[:1] or 'nothing'}); {fix}")


def _run(argv: list[str], step: str) -> float:
    """Run one preparation step; its wall time. A failure is one line with the step's last output."""
    t0 = time.monotonic()
    log.info(f"{step}: {' '.join(argv)}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise EdgeCompressError(f"{step} failed (exit {proc.returncode}): {tail}")
    return time.monotonic() - t0


def _mounts_under(path: Path) -> list[str]:
    """Mount points inside ``path`` (a second stage that stopped may leave /proc mounted in the root)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    prefix = str(path.resolve()) + "/"
    return [m for line in lines if (m := line.split()[1].replace("\\040", " ")).startswith(prefix)]


def _remove(path: Path) -> None:
    """Remove a root (or a half-built one); never through a mount point, whose files are not the root's."""
    if not os.path.lexists(path):
        return
    mounted = _mounts_under(path)
    if mounted:
        raise EdgeCompressError(f"{mounted[0]} is mounted inside {path}, left by a stopped preparation; "
                                f"unmount it (umount {mounted[0]}) and prepare again")
    shutil.rmtree(path)


def relative_links(root: Path) -> int:
    """Absolute symlinks whose target exists inside ``root`` made relative, so they resolve under ``qemu -L``."""
    n = 0
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            link = Path(folder) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith("/") and os.path.lexists(root / target.lstrip("/")):
                link.unlink()
                link.symlink_to(os.path.relpath(root / target.lstrip("/"), folder))
                n += 1
    return n


def cpuinfo_text(arch: str) -> str:
    """The root's /proc/cpuinfo: ``CPUINFO_ENTRIES`` processors of the CPU model qemu emulates."""
    c = em.CPUINFO[arch]
    model = f"model name\t: {c['model name']}\n" if "model name" in c else ""  # a 32-bit kernel names the core
    one = (f"{model}BogoMIPS\t: 50.00\nFeatures\t: {c['features']}\nCPU implementer\t: {c['implementer']}\n"
           f"CPU architecture: {c['architecture']}\nCPU variant\t: {c['variant']}\nCPU part\t: {c['part']}\n"
           f"CPU revision\t: {c['revision']}\n\n")
    return "".join(f"processor\t: {i}\n{one}" for i in range(em.CPUINFO_ENTRIES))


def pth_line() -> str:
    """The .pth line for the site folder, relative to the .pth's own folder (``../../../../opt/...``).

    python3 prepends its sitedir, which under ``qemu -L`` is the host path inside the root, so the entry exists
    on the host. An absolute ``/opt/...`` works on aarch64 but not on armhf: its glibc stats files with statx,
    which qemu 7.2 does not map into the root, so site.py thinks ``/opt/edgecompress/site`` is missing.
    """
    return os.path.relpath(f"/{em.SITE}", f"/{Path(em.PTH).parent}") + "\n"


def install_wheel(root: Path, wheel: Path, name: str, version: str) -> em.Wheel:
    """Unpack ``wheel`` into the root's site folder; the record of the files it put there."""
    site = root / em.SITE
    files = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or ".." in parts or info.filename.startswith("/"):
                continue
            rel = Path(*parts)
            if parts[0].endswith(".data"):  # purelib/platlib land on the path; scripts and headers are not needed
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                rel = Path(*parts[2:])
            dst = site / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
            files.append(str(Path(em.SITE) / rel))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return em.Wheel(name, version, wheel.name, digest, tuple(sorted(files)))


def import_check(qemu: str, root: Path, arch: str, runtimes: Sequence[str]) -> dict[str, str]:
    """Import numpy and ``runtimes`` under qemu in the root; the versions seen (python, numpy, runtimes)."""
    code = ("import json, platform, importlib\nfrom importlib import metadata\n"
            f"mods = {json.dumps({name: IMPORTS[name] for name in runtimes})}\n"
            "for m in mods.values(): importlib.import_module(m)\n"
            "import numpy\n"
            "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
            "'numpy': numpy.__version__, **{d: metadata.version(d) for d in mods}}))\n")
    argv = [qemu, "-cpu", em.QEMU_CPU[arch], "-L", str(root), str(root / em.ROOT_PYTHON), "-I", "-c", code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd="/")
    try:
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit {proc.returncode}"
        raise EdgeCompressError(f"the prepared {arch} root cannot import numpy and the runtimes under qemu "
                                f"({tail}); prepare again, or report the runtime versions that fail") from None
    if seen.get("machine") != em.MACHINE[arch]:
        raise EdgeCompressError(f"python3 in {root} says machine {seen.get('machine')!r}, not {em.MACHINE[arch]}: "
                                f"qemu did not run it")
    return seen


def _base(root: Path, arch: str, mirror: str) -> dict[str, float]:
    """debootstrap's two stages into ``root``, then the links and /proc/cpuinfo; each step's seconds."""
    debian = EMULATED_ARCHES[arch]
    seconds = {"debootstrap": _run(["debootstrap", f"--arch={debian}", "--variant=minbase", "--foreign",
                                    "--include=python3,python3-numpy", em.SUITE, str(root), mirror],
                                   f"debootstrap {em.SUITE} {debian} (first stage)")}
    seconds["second_stage"] = _run(["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"],
                                   "debootstrap second stage under qemu")
    log.info(f"{relative_links(root)} absolute symlinks made relative")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(arch))
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)  # the .debs: ~60 MB nobody reads again
    return seconds


def prepare(arch: str, cache: str | Path | None = None, runtimes: Mapping[str, str] | None = None,
            mirror: str = em.MIRROR) -> Prepared:
    """Make the emulated ``arch`` device ready under ``cache`` (default ``emulate.cache_dir()``).

    A complete root with the same runtimes is left as it is; one that is half-built (no manifest, a file it
    names missing) is rebuilt; other runtime versions are replaced in the same root. Needs root (debootstrap,
    chroot) and qemu-user-static; the runs afterwards need neither root nor binfmt.
    """
    t0 = time.monotonic()
    root = em.device_root(arch, cache)
    pins = dict(runtimes or em.ARCH_RUNTIMES[arch])
    manifest, problem = em.read_manifest(root)
    if manifest is not None and not problem and manifest.runtimes == pins:
        return Prepared(root, manifest, "ready")
    qemu = em.find_qemu(arch)
    for tool, package in (("debootstrap", "debootstrap"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            raise EdgeCompressError(f"{tool} is not installed; apt-get install {package}")
    if os.geteuid() != 0:
        raise EdgeCompressError(f"preparing the {arch} device needs root (debootstrap and chroot); run it once as "
                                f"root: sudo edgecompress device prepare --arch {arch}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{arch}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second prepare waits, then finds the root ready
        manifest, problem = em.read_manifest(root)
        if manifest is not None and not problem and manifest.runtimes == pins:
            return Prepared(root, manifest, "ready")
        seconds: dict[str, float] = {}
        t = time.monotonic()
        wheels = {name: download_wheel(name, version, arch, root.parent / "wheels") for name, version in pins.items()}
        seconds["wheels_download"] = time.monotonic() - t
        if manifest is not None and not problem:
            problem = "; ".join(f"{n} {manifest.runtimes.get(n)} -> {v}" for n, v in pins.items()
                                if manifest.runtimes.get(n) != v)
        base_ok = manifest is not None and all(os.path.lexists(root / f) for f in manifest.base_files)
        binfmt = manifest.binfmt if base_ok and manifest is not None else False
        if base_ok:  # only the runtimes differ or lost a file: replace them in place, manifest first
            action, work = "runtimes replaced", root
            (root / em.MANIFEST).unlink()
            shutil.rmtree(root / em.SITE, ignore_errors=True)
        else:
            action = "rebuilt" if os.path.lexists(root) else "built"
            work = root.with_name(f"{arch}.partial")
            _remove(work)
            ensure_binfmt(arch)
            binfmt = True
            seconds.update(_base(work, arch, mirror))
        t = time.monotonic()
        installed = tuple(install_wheel(work, wheels[name], name, version) for name, version in pins.items())
        (work / em.PTH).write_text(pth_line())
        seconds["wheels_install"] = time.monotonic() - t
        t = time.monotonic()
        seen = import_check(qemu, work, arch, list(pins))
        seconds["import_check"] = time.monotonic() - t
        wrong = {n: seen.get(n) for n, v in pins.items() if seen.get(n) != v}
        if wrong:
            raise EdgeCompressError(f"the root imports other runtime versions than pinned: {wrong}; prepare again")
        seconds["total"] = time.monotonic() - t0
        manifest = em.Manifest(arch=arch, suite=em.SUITE, mirror=mirror, python=seen["python"], numpy=seen["numpy"],
                               qemu=qemu, qemu_version=em.qemu_version(qemu), qemu_cpu=em.QEMU_CPU[arch],
                               binfmt=binfmt, wheels=installed, base_files=em.BASE_FILES,
                               seconds={k: round(v, 1) for k, v in seconds.items()},
                               prepared_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        write_json(work / em.MANIFEST, manifest.to_json())
        if work != root:
            _remove(root)
            work.rename(root)
    return Prepared(root, manifest, action, problem)
