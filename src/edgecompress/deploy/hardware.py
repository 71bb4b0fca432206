"""Whether a measurement was taken on the profile's hardware, and the status a check's budgets then earn.

``pass``/``fail`` on the profile's hardware (over SSH the fingerprint is the board's own); ``emulated-*`` on an
emulated device of the profile's instruction set (the runtime's own kernels computed the outputs, so what it
judges stands as on the device; its latency and peak memory are the emulator's and are not judged);
``proxy-*`` anywhere else. The check and the build both read these.
"""

from __future__ import annotations

from typing import Any, Mapping

from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.targets import Hardware, TargetProfile

# Active providers that count as "running on a GPU" for hardware.gpu.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider")


def hardware_matches(hardware: Hardware, fingerprint: dict[str, Any],
                     active_providers: list[str] | None = None) -> tuple[bool, list[str]]:
    """Whether the measuring machine is the profile's hardware; reasons list every mismatch.

    ``active_providers`` defaults to ``fingerprint["active_providers"]``; a GPU only counts when the
    runtime really ran on it, not when one is merely installed.
    """
    reasons: list[str] = []
    if fingerprint.get("emulated"):  # the instruction set and runtime are the device's; the timings are not
        reasons.append(f"emulated by {fingerprint.get('emulator')} (-cpu {fingerprint.get('qemu_cpu')}) on this "
                       f"machine: latency and peak memory are a proxy, recorded and not judged")
    arch = fingerprint.get("arch") or "unknown"
    if hardware.arch != "any" and arch != hardware.arch:
        reasons.append(f"arch is {arch}, profile wants {hardware.arch}")
    if hardware.cpu:
        seen = " / ".join(filter(None, [fingerprint.get("cpu_model"), fingerprint.get("board")])) or "unknown"
        if hardware.cpu.lower() not in seen.lower():
            reasons.append(f"cpu is {seen!r}, profile wants one containing {hardware.cpu!r}")
    if hardware.gpu:
        active = list(active_providers if active_providers is not None else fingerprint.get("active_providers") or [])
        if not any(p in GPU_PROVIDERS for p in active):
            reasons.append(f"profile wants GPU {hardware.gpu!r} but the active providers are "
                           f"{', '.join(active) or 'none'} (no CUDA/TensorRT/ROCm)")
    if hardware.cores is not None:
        cores = fingerprint.get("cores")
        if not isinstance(cores, int) or cores < hardware.cores:
            reasons.append(f"{cores} cores, profile wants at least {hardware.cores}")
    return not reasons, reasons


def fails(status: str, strict: bool) -> bool:
    """The verdict: whether a check with ``status`` fails the run (a real miss, one on an emulated device, whose
    judged budgets stand as on the device, or with ``strict`` a proxy one)."""
    return status in ("fail", "emulated-fail") or (strict and status == "proxy-fail")


def status_of(ok: bool, match: bool, emulated: bool) -> str:
    """pass/fail on the profile's hardware; emulated-* on an emulated device of its instruction set; else proxy-*."""
    return ("" if match else "emulated-" if emulated else "proxy-") + ("pass" if ok else "fail")


def emulates(profile: TargetProfile, device: DeviceSpec, fingerprint: Mapping[str, Any]) -> bool:
    """Whether ``device`` emulates ``profile``'s instruction set (an emulated x86 profile is only a proxy)."""
    return device.emulated and profile.hardware.arch in ("any", fingerprint.get("arch"))
