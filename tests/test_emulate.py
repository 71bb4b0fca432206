"""The emulated aarch64 (and 32-bit armv7) device: its device kind, the prepared root and its manifest, the runner's
command line, what an emulated result may decide, the preparation's errors, and (slow) real runs under qemu."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from conftest import tiny_export_dir
from edgecompress.cli import main as cli_main
from edgecompress.deploy import check, emulate, prepare
from edgecompress.deploy.bench import RUNNER, local_command
from edgecompress.deploy.check import check_target, fails, hardware_matches, status_of
from edgecompress.deploy.check_report import render_markdown
from edgecompress.deploy.devices import DeviceSpec, parse_device, resolve_device
from edgecompress.deploy.fields import FieldError
from edgecompress.deploy.targets import ArtifactSpec, BenchSpec, Budgets, Hardware, RuntimeSpec, TargetProfile
from edgecompress.errors import EdgeCompressError

EMU = DeviceSpec(url="emulate:aarch64")
EMU7 = DeviceSpec(url="emulate:armv7")
PINS = dict(emulate.RUNTIMES)
PINS7 = dict(emulate.ARCH_RUNTIMES["armv7"])
ARMV7_PREPARE_MIN = 4  # minutes to prepare the armv7 root here: docs/targets-and-devices.md, "32-bit ARM (armv7)"


# --------------------------------------------------------------------------- the device kind


def test_device_kind_parses_both_forms() -> None:
    for form in ("emulate:aarch64", {"emulate": "aarch64"}, {"url": "emulate:aarch64"}):
        dev = parse_device(form)
        assert dev.emulated and dev.arch == "aarch64" and not dev.is_local and dev.host is None
    assert not parse_device("local").emulated and parse_device("ssh://pi@h").arch is None
    assert parse_device({"emulate": "armv7"}).arch == "armv7"  # 32-bit ARM: iot-camera's Cortex-A7


@pytest.mark.parametrize("value, match", [
    ("emulate:riscv64", r"unknown arch 'riscv64'; edgecompress can emulate: aarch64, armv7$"),
    ("emulate:armv7l", r"unknown arch 'armv7l'"),  # the device is named by the arch, not platform.machine()
    ("emulate:", r"unknown arch ''"),
    ({"emulate": "aarch64", "python": "python3"}, r"device.emulate.*takes no other keys"),
    ("qemu:aarch64", r"is not 'local' or 'ssh://user@host\[:port\]' \(or 'emulate:aarch64'\)"),
])
def test_device_kind_errors(value: Any, match: str) -> None:
    with pytest.raises(FieldError, match=match):
        parse_device(value)


def test_override_to_emulated_keeps_no_ssh_options() -> None:
    assert resolve_device(DeviceSpec(url="ssh://pi@h", key_file="/k"), "emulate:aarch64").emulated
    with pytest.raises(EdgeCompressError, match="key_file applies only to an ssh device"):
        resolve_device(DeviceSpec(), {"url": "emulate:aarch64", "key_file": "/k"})


def test_emulated_profile_needs_no_ssh_timeout() -> None:
    # An SSH device's timeout must exceed max_seconds; an emulated one has no remote timeout to respect.
    p = _profile(Budgets(min_accuracy=0.5), device="emulate:aarch64", max_seconds=500)
    assert p.device.emulated


# --------------------------------------------------------------------------- the root, its manifest, the command


def _fake_root(cache: Path, qemu: Path, runtimes: dict[str, str] = PINS, manifest: bool = True,
               arch: str = "aarch64") -> Path:
    """A root with the files a manifest names (no real binaries), as prepare leaves it."""
    root = cache / arch
    for rel in emulate.BASE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    wheels = []
    for name, version in runtimes.items():
        rel = f"{emulate.SITE}/{name}/__init__.py"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
        wheels.append(emulate.Wheel(name, version, f"{name}-{version}.whl", "0" * 64, (rel,)))
    if manifest:
        m = emulate.Manifest(arch, emulate.SUITE, emulate.MIRROR, "3.11.2", "1.24.2", str(qemu), "7.2.22",
                             emulate.QEMU_CPU[arch], True, tuple(wheels), emulate.BASE_FILES, {"total": 1.0},
                             "2026-01-01")
        (root / emulate.MANIFEST).write_text(json.dumps(m.to_json()))
    return root


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    q = tmp_path / "bin" / "qemu-aarch64-static"
    q.parent.mkdir()
    q.write_text("#!/bin/sh\necho 'qemu-aarch64 version 7.2.22 (Debian)'\n")
    q.chmod(0o755)
    return q


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert emulate.device_root("aarch64") == tmp_path / "edgecompress" / "devices" / "aarch64"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert emulate.cache_dir() == Path.home() / ".cache" / "edgecompress" / "devices"


def test_command_runs_the_same_runner_by_path(tmp_path: Path, fake_qemu: Path) -> None:
    root = _fake_root(tmp_path / "cache", fake_qemu)
    emu = emulate.emulator(EMU, tmp_path / "cache")
    assert emu is not None and emu.root == root and emu.qemu == str(fake_qemu)
    model = tmp_path / "m.onnx"
    model.write_text("")
    assert emu.command(["--model", str(model), "--runs", "5"]) == [
        str(fake_qemu), "-cpu", "cortex-a76", "-L", str(root), str(root / "usr/bin/python3"), "-I", str(RUNNER),
        "--model", str(model), "--runs", "5"]
    assert emulate.emulator(DeviceSpec()) is None  # local: no emulator


def test_command_refuses_a_path_the_root_shadows(tmp_path: Path, fake_qemu: Path) -> None:
    root = _fake_root(tmp_path / "cache", fake_qemu)
    model = tmp_path / "m.onnx"
    model.write_text("")
    shadow = root / str(model).lstrip("/")
    shadow.parent.mkdir(parents=True)
    shadow.write_text("")
    emu = emulate.emulator(EMU, tmp_path / "cache")
    with pytest.raises(EdgeCompressError, match=r"also exists inside the emulated device's root"):
        emu.command(["--model", str(model)])


def test_mark_says_emulated_with_versions(tmp_path: Path, fake_qemu: Path) -> None:
    _fake_root(tmp_path / "cache", fake_qemu)
    emu = emulate.emulator(EMU, tmp_path / "cache")
    fp = emu.mark({"fingerprint": {"arch": "aarch64"}})["fingerprint"]
    assert fp["emulated"] is True and fp["qemu_version"] == "7.2.22" and fp["qemu_cpu"] == "cortex-a76"
    assert fp["runtimes"] == PINS and fp["emulator"] == "qemu-aarch64 7.2.22" and fp["arch"] == "aarch64"


def test_armv7_device_runs_qemu_arm_as_a_cortex_a7(tmp_path: Path, fake_qemu: Path) -> None:
    root = _fake_root(tmp_path / "cache", fake_qemu, PINS7, arch="armv7")
    emu = emulate.emulator(EMU7, tmp_path / "cache")
    assert emu is not None and emu.root == root and emu.cpu == "cortex-a7"
    assert emu.command(["--runs", "5"])[:3] == [str(fake_qemu), "-cpu", "cortex-a7"]
    fp = emu.mark({"fingerprint": {"arch": "armv7l"}})["fingerprint"]
    assert fp["emulator"] == "qemu-arm 7.2.22" and fp["runtimes"] == {"tflite-runtime": "2.14.0"}
    with pytest.raises(EdgeCompressError, match=r"^device emulate:aarch64 is not ready: .*--arch aarch64$"):
        emulate.emulator(EMU, tmp_path / "cache")  # the armv7 root is not an aarch64 one


def test_armv7_refuses_an_onnx_model_in_one_line(tmp_path: Path, fake_qemu: Path) -> None:
    _fake_root(tmp_path / "cache", fake_qemu, PINS7, arch="armv7")
    emu = emulate.emulator(EMU7, tmp_path / "cache")
    with pytest.raises(EdgeCompressError, match=r"^/m/int8.onnx needs onnxruntime, which the emulated armv7 device "
                                                r"does not have \(it has tflite-runtime\); onnxruntime publishes no "
                                                r"armv7l wheel, so run it on a real board \(ssh://\) or an aarch64 "
                                                r"device$"):
        emu.command(["--model", "/m/int8.onnx", "--runs", "5"])
    assert emu.command(["--model", "/m/int8.tflite"])[-1] == "/m/int8.tflite"  # LiteRT: tflite-runtime runs it
    _fake_root(tmp_path / "c2", fake_qemu, {"onnxruntime": "1.32.0"})  # an aarch64 root without LiteRT
    only_ort = emulate.emulator(EMU, tmp_path / "c2")
    with pytest.raises(EdgeCompressError, match=r"needs ai-edge-litert or tflite-runtime, .* --runtime NAME==VERSION$"):
        only_ort.command(["--model", "/m/int8.tflite"])


def test_armv7_finds_qemu_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(shutil, "which", lambda name: asked.append(name) or None)
    with pytest.raises(EdgeCompressError, match=r"^qemu-arm-static is not installed, so armv7 cannot be emulated"):
        emulate.find_qemu("armv7")
    assert asked == ["qemu-arm-static", "qemu-arm"]


@pytest.mark.parametrize("damage, why", [
    (lambda root: (root / emulate.MANIFEST).unlink(), r"has no edgecompress-device.json .*half-way"),
    (lambda root: (root / emulate.ROOT_PYTHON).unlink(), r"usr/bin/python3, which edgecompress-device.json names, "
                                                          r"is missing"),
    (lambda root: shutil.rmtree(root / emulate.SITE), r"onnxruntime/__init__.py, which .* is missing"),
    (lambda root: (root / emulate.MANIFEST).write_text("{"), r"edgecompress-device.json is unreadable"),
    (lambda root: shutil.rmtree(root), r"aarch64 does not exist"),
])
def test_half_built_root_is_refused_with_the_fix(tmp_path: Path, fake_qemu: Path, damage: Any, why: str) -> None:
    damage(_fake_root(tmp_path / "cache", fake_qemu))
    with pytest.raises(EdgeCompressError, match=why) as e:
        emulate.emulator(EMU, tmp_path / "cache")
    assert str(e.value).startswith("device emulate:aarch64 is not ready: ")
    assert str(e.value).endswith("run: edgecompress device prepare --arch aarch64") and "\n" not in str(e.value)


def test_cpuinfo_names_the_emulated_cpu() -> None:
    # The runner reads the root's /proc/cpuinfo the way it reads a board's: it must say Cortex-A76.
    text = prepare.cpuinfo_text("aarch64")
    assert text.count("processor\t:") == emulate.CPUINFO_ENTRIES and "CPU part\t: 0xd0b" in text
    from edgecompress.deploy import runner

    assert runner.ARM_PARTS["0xd0b"] == "Cortex-A76"
    # A 32-bit kernel's cpuinfo for the Cortex-A7: it names the core and its ARMv7 features (NEON, VFPv4).
    text7 = prepare.cpuinfo_text("armv7")
    assert "CPU part\t: 0xc07" in text7 and "CPU architecture: 7" in text7 and runner.ARM_PARTS["0xc07"] == "Cortex-A7"
    assert text7.startswith("processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\n")
    assert {"neon", "vfpv4", "idiva"} <= set(text7.split("Features\t: ")[1].splitlines()[0].split())


def test_relative_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/blas").mkdir(parents=True)
    (root / "usr/lib/blas/libblas.so.3").write_text("x")
    (root / "etc/alternatives").mkdir(parents=True)
    alt = root / "etc/alternatives/libblas.so.3"
    alt.symlink_to("/usr/lib/blas/libblas.so.3")
    outside = root / "etc/mtab"
    outside.symlink_to("/proc/self/mounts")  # no such file inside the root: left alone
    assert prepare.relative_links(root) == 1
    assert os.readlink(alt) == "../../usr/lib/blas/libblas.so.3" and alt.read_text() == "x"
    assert os.readlink(outside) == "/proc/self/mounts"


# --------------------------------------------------------------------------- preparation: errors and re-runs


def test_unknown_arch_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["device", "prepare", "--arch", "riscv64"])
    assert capsys.readouterr().err.strip() == ("edgecompress: error: unknown arch 'riscv64'; edgecompress can "
                                               "emulate: aarch64, armv7")


def test_no_qemu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EdgeCompressError, match=r"^qemu-aarch64-static is not installed, so aarch64 cannot be "
                                                r"emulated; install it: apt-get install qemu-user-static$"):
        prepare.prepare("aarch64", tmp_path)


PIP_NO_VERSION = ("ERROR: Could not find a version that satisfies the requirement ai-edge-litert==9.9 (from versions: "
                  "1.3.0, 1.4.0, 2.3.0)\nERROR: No matching distribution found for ai-edge-litert==9.9\n")


@pytest.mark.parametrize("stderr, match", [
    (PIP_NO_VERSION, r"^ai-edge-litert 9.9 has no wheel for aarch64 Linux and Python 3.11 \(glibc <= 2.36\); versions "
                     r"that have one: 1.3.0, 1.4.0, 2.3.0; pin one with --runtime ai-edge-litert==<version>"),
    (PIP_NO_VERSION.replace("1.3.0, 1.4.0, 2.3.0", "none"), r"publishes no wheel .* at any version"),
    ("ERROR: Could not fetch URL https://pypi.org/simple/x/: connection refused\n", r"check the network"),
])
def test_missing_wheel_names_the_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stderr: str,
                                          match: str) -> None:
    seen: list[list[str]] = []

    def pip(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", stderr)

    monkeypatch.setattr(prepare.subprocess, "run", pip)
    with pytest.raises(EdgeCompressError, match=match):
        prepare.download_wheel("ai-edge-litert", "9.9", "aarch64", tmp_path)
    argv = seen[0]
    # One binary wheel for the root's CPython 3.11 and every glibc tag up to 2.36 (pip expands none itself).
    assert argv[-1] == "ai-edge-litert==9.9" and "--no-deps" in argv and "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11" and argv[argv.index("--abi") + 1] == "cp311"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms[0] == "manylinux_2_17_aarch64" and "manylinux_2_36_aarch64" in platforms
    assert "manylinux_2_37_aarch64" not in platforms and "manylinux2014_aarch64" in platforms


def test_armv7_wheels_are_asked_for_armv7l(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # tflite-runtime's last release: cp311-cp311-manylinux_2_34_armv7l, which bookworm's glibc 2.36 installs.
    argv = prepare.pip_download_argv("tflite-runtime", "2.14.0", "armv7", tmp_path)
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert "manylinux_2_34_armv7l" in platforms and "manylinux2014_armv7l" in platforms
    assert not [p for p in platforms if not p.endswith("_armv7l")]

    def pip(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        # pip leaves the wheel in -d; an aarch64 one of the same version beside it must not be taken
        dest = Path(argv[argv.index("-d") + 1])
        for tag in ("manylinux_2_34_armv7l", "manylinux_2_17_aarch64"):
            (dest / f"tflite_runtime-2.14.0-cp311-cp311-{tag}.whl").write_text("")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(prepare.subprocess, "run", pip)
    assert prepare.download_wheel("tflite-runtime", "2.14.0", "armv7", tmp_path).name.endswith("_armv7l.whl")


def test_armv7_pins_only_what_has_a_wheel() -> None:
    assert prepare.runtime_pins(arch="armv7") == {"tflite-runtime": "2.14.0"}
    assert prepare.runtime_pins(["tflite-runtime==2.13.0"], "armv7") == {"tflite-runtime": "2.13.0"}
    for name in ("onnxruntime", "ai-edge-litert"):
        with pytest.raises(EdgeCompressError, match=rf"^--runtime '{name}==1.0': {name} publishes no armv7l wheel "
                                                    r"for Python 3.11 at any version, so the armv7 device cannot "
                                                    r"run it \(it has tflite-runtime\); .*ssh://.*--arch aarch64\)$"):
            prepare.runtime_pins([f"{name}==1.0"], "armv7")


def test_armv7_binfmt_entry_is_qemu_arm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prepare, "BINFMT", tmp_path)
    (tmp_path / "register").write_text("")
    ran: list[list[str]] = []

    def update(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        (tmp_path / "qemu-arm").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: PF\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(prepare.subprocess, "run", update)
    prepare.ensure_binfmt("armv7")
    assert ran == [["update-binfmts", "--enable", "qemu-arm"]]


@pytest.mark.parametrize("spec", ["onnxruntime", "tensorflow==2.0", "onnxruntime=="])
def test_runtime_override_errors(spec: str) -> None:
    with pytest.raises(EdgeCompressError, match="give NAME==VERSION with NAME one of onnxruntime, ai-edge-litert"):
        prepare.runtime_pins([spec])
    assert prepare.runtime_pins(["ai-edge-litert==2.3.0"]) == {**PINS, "ai-edge-litert": "2.3.0"}


def test_prepare_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_qemu: Path) -> None:
    monkeypatch.setattr(emulate, "find_qemu", lambda arch: str(fake_qemu))
    monkeypatch.setattr(prepare.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(prepare.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(EdgeCompressError, match=r"needs root .*sudo edgecompress device prepare --arch aarch64$"):
        prepare.prepare("aarch64", tmp_path)


class _Steps:
    """The heavy steps of prepare, faked: which ran, and a root they build like the real ones would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, qemu: Path, tmp: Path) -> None:
        self.ran: list[str] = []
        monkeypatch.setattr(emulate, "find_qemu", lambda arch: str(qemu))
        monkeypatch.setattr(prepare.os, "geteuid", lambda: 0)
        monkeypatch.setattr(prepare.shutil, "which", lambda name: f"/usr/bin/{name}")
        monkeypatch.setattr(prepare, "ensure_binfmt", lambda arch: self.ran.append("binfmt"))
        monkeypatch.setattr(prepare, "download_wheel", self.download)
        monkeypatch.setattr(prepare, "_base", self.base)
        monkeypatch.setattr(prepare, "import_check", self.imports)
        self.tmp = tmp

    def download(self, name: str, version: str, arch: str, dest: Path) -> Path:
        self.ran.append(f"download {name}")
        wheel = self.tmp / f"{name.replace('-', '_')}-{version}-cp311-cp311-manylinux_2_17_{arch}.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"{name.replace('-', '_')}/__init__.py", "")
            z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", f"Version: {version}\n")
        return wheel

    def base(self, root: Path, arch: str, mirror: str) -> dict[str, float]:
        self.ran.append("base")
        for rel in emulate.BASE_FILES:
            if rel != emulate.PTH:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text("x")
        (root / emulate.PTH).parent.mkdir(parents=True, exist_ok=True)
        return {"debootstrap": 1.0, "second_stage": 2.0}

    def imports(self, qemu: str, root: Path, arch: str, runtimes: Sequence[str]) -> dict[str, str]:
        """The versions of the runtimes unpacked into the root, as the import under qemu reports them."""
        self.ran.append(f"imports {' '.join(runtimes)}")
        seen = {}
        for info in (root / emulate.SITE).glob("*.dist-info"):
            name, version = info.name[:-len(".dist-info")].split("-")
            seen[name.replace("_", "-")] = version
        return {"machine": emulate.MACHINE[arch], "python": "3.11.2", "numpy": "1.24.2", **seen}


def test_prepare_builds_then_is_a_no_op_then_repairs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     fake_qemu: Path) -> None:
    steps = _Steps(monkeypatch, fake_qemu, tmp_path)
    cache = tmp_path / "cache"
    first = prepare.prepare("aarch64", cache)
    assert first.action == "built" and steps.ran == ["download onnxruntime", "download ai-edge-litert", "binfmt",
                                                     "base", "imports onnxruntime ai-edge-litert"]
    m = json.loads((first.root / emulate.MANIFEST).read_text())
    assert [w["name"] for w in m["wheels"]] == list(PINS) and all(len(w["sha256"]) == 64 for w in m["wheels"])
    assert m["seconds"]["debootstrap"] == 1.0 and "total" in m["seconds"] and m["qemu_version"] == "7.2.22"
    pth = (first.root / emulate.PTH).read_text()  # relative, so it resolves inside the root under qemu -L
    assert pth == "../../../../opt/edgecompress/site\n"
    assert (first.root / emulate.PTH).parent.joinpath(pth.strip()).resolve() == (first.root / emulate.SITE).resolve()
    assert not (cache / "aarch64.partial").exists()

    steps.ran.clear()
    assert prepare.prepare("aarch64", cache).action == "ready" and steps.ran == []  # re-running: nothing to do

    (first.root / emulate.SITE / "onnxruntime" / "__init__.py").unlink()  # a runtime's file deleted
    again = prepare.prepare("aarch64", cache)
    assert again.action == "runtimes replaced" and "base" not in steps.ran and "onnxruntime/__init__.py" in again.why

    steps.ran.clear()
    (first.root / emulate.ROOT_PYTHON).unlink()  # the base itself damaged: rebuilt whole
    rebuilt = prepare.prepare("aarch64", cache)
    assert rebuilt.action == "rebuilt" and "base" in steps.ran and "usr/bin/python3" in rebuilt.why
    assert emulate.emulator(EMU, cache) is not None

    steps.ran.clear()
    other = prepare.prepare("aarch64", cache, {**PINS, "ai-edge-litert": "2.3.0"})  # another pinned version
    assert other.action == "runtimes replaced" and other.manifest.runtimes["ai-edge-litert"] == "2.3.0"
    assert other.why == f"ai-edge-litert {PINS['ai-edge-litert']} -> 2.3.0"
    assert "base" not in steps.ran


def test_prepare_armv7_holds_only_tflite_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 fake_qemu: Path) -> None:
    steps = _Steps(monkeypatch, fake_qemu, tmp_path)
    done = prepare.prepare("armv7", tmp_path / "cache")
    assert done.action == "built" and done.root == tmp_path / "cache" / "armv7"
    assert steps.ran == ["download tflite-runtime", "binfmt", "base", "imports tflite-runtime"]
    assert done.manifest.runtimes == PINS7 and done.manifest.qemu_cpu == "cortex-a7" and done.manifest.arch == "armv7"
    assert not (tmp_path / "cache" / "aarch64").exists()  # one root per arch
    assert prepare.prepare("armv7", tmp_path / "cache").action == "ready"


# --------------------------------------------------------------------------- what an emulated result decides


def _profile(budgets: Budgets, device: str = "local", max_seconds: float = 10,
             hardware: Hardware = Hardware(arch="aarch64", cpu="Cortex-A76")) -> TargetProfile:
    return TargetProfile(name="t", description="test target", hardware=hardware, artifact=ArtifactSpec("onnx", "fp32"),
                         runtime=RuntimeSpec("onnxruntime", threads=1), budgets=budgets, device=device,
                         bench=BenchSpec(warmup=1, runs=50, max_seconds=max_seconds))


def test_emulated_fingerprint_never_matches_the_hardware() -> None:
    fp = {"arch": "aarch64", "cpu_model": "Cortex-A76", "cores": 8, "emulated": True,
          "emulator": "qemu-aarch64 7.2.22", "qemu_cpu": "cortex-a76"}
    match, reasons = hardware_matches(Hardware(arch="aarch64", cpu="Cortex-A76"), fp)
    assert not match and reasons == ["emulated by qemu-aarch64 7.2.22 (-cpu cortex-a76) on this machine: latency "
                                     "and peak memory are a proxy, recorded and not judged"]
    assert hardware_matches(Hardware(arch="aarch64", cpu="Cortex-A76"), {**fp, "emulated": False})[0]


def test_status_and_verdict() -> None:
    assert [status_of(ok, False, True) for ok in (True, False)] == ["emulated-pass", "emulated-fail"]
    assert status_of(False, False, False) == "proxy-fail" and status_of(True, True, False) == "pass"
    # Accuracy and sizes judged on an emulated device stand as on the device: a miss fails the run.
    assert fails("emulated-fail", strict=False) and not fails("emulated-pass", strict=True)


class _HostEmulator(emulate.Emulator):
    """An emulator that runs the runner with this Python: the emulated code path without qemu."""

    def command(self, args: Sequence[str], runner: Path = RUNNER) -> list[str]:
        return local_command(list(args))

    def mark(self, result: dict[str, Any]) -> dict[str, Any]:
        result.setdefault("fingerprint", {})["arch"] = "aarch64"  # what the runner says inside the real root
        return super().mark(result)


@pytest.fixture
def host_emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_qemu: Path) -> None:
    root = _fake_root(tmp_path / "cache", fake_qemu)
    manifest, _ = emulate.read_manifest(root)
    emu = _HostEmulator("aarch64", root, str(fake_qemu), manifest)
    monkeypatch.setattr(check, "emulator", lambda device: emu if device.emulated else None)


def test_emulated_check_records_latency_and_does_not_judge_it(host_emulator: None, tmp_path: Path) -> None:
    d, testset, acc = tiny_export_dir(tmp_path, seed=2)
    # Latency and memory budgets no run could meet, and an accuracy floor it meets.
    budgets = Budgets(latency_ms={"p50": 1e-6}, peak_memory_mb=0.001, size_mb=1.0, min_accuracy=0.01)
    res = check_target(_profile(budgets), d, testset, device="emulate:aarch64")
    assert res.status == "emulated-pass" and not res.failed and res.device == "emulate:aarch64"
    assert [r.budget.name for r in res.budgets] == ["size", "accuracy"]  # latency, peak memory: not judged
    assert res.latency_ms["p50"] > 1e-6 and res.latency_ci["p50"]["n"] == 50  # ... but recorded
    assert res.fingerprint["emulated"] is True and res.fingerprint["runtimes"] == PINS
    md = render_markdown(res)
    assert "**EMULATED-PASS**" in md and "**proxy** (emulated): recorded, not judged" in md
    assert "emulated by qemu-aarch64 7.2.22 -cpu cortex-a76" in md
    # The same run on the profile's own hardware would fail on latency: the local check says so.
    assert check_target(_profile(budgets, hardware=Hardware()), d, testset).status == "fail"
    # Accuracy is judged as on the device: a floor it misses fails the check, not only a strict one.
    missed = check_target(_profile(replace(budgets, min_accuracy=0.999)), d, testset, device="emulate:aarch64")
    assert missed.status == "emulated-fail" and missed.failed
    # A profile of another instruction set is only a proxy when emulated.
    x86 = check_target(_profile(budgets, hardware=Hardware(arch="x86_64")), d, testset, device="emulate:aarch64")
    assert x86.status == "proxy-pass"


# --------------------------------------------------------------------------- slow: a real run under qemu


def _ready_emulator(arch: str = "aarch64", build: bool = True) -> emulate.Emulator:
    """The prepared device, preparing it when this machine can (and ``build``); a skip that says why when not."""
    root = emulate.device_root(arch)
    if emulate.read_manifest(root)[1]:
        how = f"edgecompress device prepare --arch {arch}"
        if not build:
            pytest.skip(f"the {arch} device is not prepared (CI does not build it: ~{ARMV7_PREPARE_MIN} minutes); "
                        f"run {how} as root once")
        if shutil.which(f"qemu-{emulate.QEMU_NAME[arch]}-static") is None:
            pytest.skip(f"cannot emulate {arch}: qemu-user-static is not installed (apt-get install qemu-user-static)")
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"the {arch} device is not prepared and preparing needs root and debootstrap: run "
                        f"{how} as root")
        try:
            prepare.prepare(arch)
        except EdgeCompressError as e:
            if "binfmt" in str(e):
                pytest.skip(f"cannot emulate {arch} here: {e}")
            raise
    emu = emulate.emulator(DeviceSpec(url=f"emulate:{arch}"))
    assert emu is not None
    return emu


@pytest.mark.slow
def test_runner_inside_the_emulated_device(tmp_path: Path) -> None:
    emu = _ready_emulator()
    d, testset, acc = tiny_export_dir(tmp_path, seed=2)
    args = ["--model", str(d / "fp32.onnx"), "--data", str(testset), "--runs", "20", "--warmup", "2", "--threads", "1"]
    proc = subprocess.run(emu.command(args), capture_output=True, text=True, timeout=600)
    result = emu.mark(json.loads(proc.stdout.strip().splitlines()[-1]))
    fp = result["fingerprint"]
    assert fp["arch"] == "aarch64" and fp["emulated"] is True and fp["runtime_version"] == PINS["onnxruntime"]
    assert fp["qemu_version"] == emu.manifest.qemu_version and fp["cpu_model"] == "Cortex-A76"
    assert result["accuracy"] == pytest.approx(acc)  # aarch64 kernels, same 40 answers as numpy on the host
    # The check on it: judged as emulated, latency not judged.
    budgets = Budgets(latency_ms={"p50": 1e-6}, size_mb=1.0, min_accuracy=0.01)
    res = check_target(_profile(budgets, device="emulate:aarch64"), d, testset)
    assert res.status == "emulated-pass" and [r.budget.name for r in res.budgets] == ["size", "accuracy"]
    assert res.fingerprint["arch"] == "aarch64" and res.fingerprint["emulated"] is True


@pytest.mark.slow
def test_runner_inside_the_emulated_armv7_device(tmp_path: Path) -> None:
    # 32-bit ARM runs LiteRT models only (tflite-runtime): a tiny TFLite model, converted here.
    emu = _ready_emulator("armv7", build=False)
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    model = tmp_path / "fp32.tflite"
    litert_torch.convert(module, (torch.randn(1, 4, 4, 1),)).export(str(model))
    sidecar = {"format": "tflite", "precision": "fp32", "input_name": "input", "output_name": "logits",
               "input_shape": [1, 4, 4, 1], "layout": "NHWC", "input_dtype": "float32", "output_dtype": "float32",
               "input_quant": None, "output_quant": None, "mean": [0.5], "std": [0.25], "num_classes": 3}
    Path(f"{model}.json").write_text(json.dumps(sidecar))
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, 40).astype(np.int64)
    np.savez(tmp_path / "testset.npz", x=x, y=y)
    lin = module[1]
    logits = ((x.astype(np.float32) / 255 - 0.5) / 0.25).reshape(40, -1) @ lin.weight.detach().numpy().T \
        + lin.bias.detach().numpy()
    args = ["--model", str(model), "--data", str(tmp_path / "testset.npz"), "--runs", "10", "--warmup", "2",
            "--threads", "1"]
    proc = subprocess.run(emu.command(args), capture_output=True, text=True, timeout=600)
    result = emu.mark(json.loads(proc.stdout.strip().splitlines()[-1]))
    fp = result["fingerprint"]
    assert fp["arch"] == "armv7l" and fp["emulated"] is True and fp["emulator"].startswith("qemu-arm ")
    assert fp["runtime"] == "tflite-runtime" and fp["runtime_version"] == PINS7["tflite-runtime"]
    assert "Cortex-A7" in fp["cpu_model"] and fp["qemu_cpu"] == "cortex-a7"
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))  # armv7 kernels, same answers
