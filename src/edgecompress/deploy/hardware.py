"""Whether a measurement was taken on the profile's hardware, and the status a check's budgets then earn.

``pass``/``fail`` on the profile's hardware (over SSH the fingerprint is the board's own); ``emulated-*`` on an
emulated device of the profile's instruction set (the runtime's own kernels computed the outputs, so what it
judges stands as on the device; its latency and peak memory are the emulator's and are not judged);
``proxy-*`` anywhere else. The check and the build both read these.

Timings (latency, peak memory) decide only where they are the profile's kind of timings: not on an emulated
device (translated code on an x86 core), and not for a GPU profile measured without its GPU active (the CPU
provider's kernels say nothing of CUDA's: judging a 1 ms GPU budget on them shipped a different network from one
build to the next, #28). There they are recorded, labelled proxy, and decide nothing (``timings_judged``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

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
                           f"{', '.join(active) or 'none'} (no CUDA/TensorRT/ROCm): latency and peak memory are "
                           f"the CPU's, a proxy, recorded and not judged")
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


def gpu_inactive(hardware: Hardware, active_providers: Sequence[str] | None) -> bool:
    """The profile wants a GPU and none of ``active_providers`` runs on one."""
    return bool(hardware.gpu) and not any(p in GPU_PROVIDERS for p in active_providers or ())


def timings_judged(profile: TargetProfile, device: DeviceSpec, results: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the latency and peak memory in ``results`` (runner results on ``device``) may decide anything:
    not emulated, and a GPU profile's GPU really active in every one of them."""
    return not device.emulated and not any(gpu_inactive(profile.hardware, r.get("active_providers"))
                                           for r in results)


def local_gpu(profile: TargetProfile) -> bool:
    """Before measuring here: False when ``profile`` wants a GPU and this machine's onnxruntime offers none (its
    timings will decide nothing, so an undecided one gets no extension rounds)."""
    if not profile.hardware.gpu:
        return True
    try:
        import onnxruntime  # the local runner runs in this Python, so its providers are these
    except ImportError:
        return False
    return any(p in GPU_PROVIDERS for p in onnxruntime.get_available_providers())
