"""Budget evaluation, hardware matching, the verdict, and one end-to-end check on a tiny ONNX model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import tiny_export_dir
from edgecompress.deploy.check import (CheckResult, check_target, evaluate_budgets, fails, hardware_matches,
                                       teacher_accuracy)
from edgecompress.deploy.check_report import render_markdown
from edgecompress.errors import EdgeCompressError
from edgecompress.verdict import check_and_report as main_check
from edgecompress.deploy.targets import ArtifactSpec, BenchSpec, Budgets, Hardware, RuntimeSpec, TargetProfile

FP_X86 = {"hostname": "h", "arch": "x86_64", "cpu_model": "AMD EPYC 7B13", "board": None, "cores": 8,
          "os": "Linux", "python": "3.11", "numpy": "2.0"}
FP_PI = {**FP_X86, "arch": "aarch64", "cpu_model": "Cortex-A72", "board": "Raspberry Pi 4 Model B Rev 1.4", "cores": 4}


def _profile(budgets: Budgets, hardware: Hardware = Hardware(), device: str = "local", name: str = "t") -> TargetProfile:
    return TargetProfile(name=name, description="test target", hardware=hardware,
                         artifact=ArtifactSpec("onnx", "fp32"), runtime=RuntimeSpec("onnxruntime", threads=1),
                         budgets=budgets, device=device, bench=BenchSpec(warmup=1, runs=400, max_seconds=10))


def _result(p50: float = 0.1, p90: float = 0.2, size: int = 60_000, rss: float | None = 50.0,
            acc: float | None = 0.9) -> dict[str, Any]:
    return {"latency_ms": {"p50": p50, "p90": p90, "p99": 0.5, "mean": 0.12}, "model_size_bytes": size,
            "memory": {"peak_rss_mb": rss}, "accuracy": acc}


BUDGETS = Budgets(latency_ms={"p50": 0.25, "p90": 0.5}, size_mb=0.125, peak_memory_mb=128, min_accuracy=0.88)


def _rows(profile: TargetProfile, result: dict[str, Any], teacher: float | None = None) -> dict[str, dict[str, Any]]:
    """The check's JSON rows by name (what metrics/check/<target>.json holds)."""
    return {r["name"]: r for r in (row.to_json() for row in evaluate_budgets(profile, result, teacher))}


def test_evaluate_budgets_pass() -> None:
    rows = _rows(_profile(BUDGETS), _result())
    assert list(rows) == ["latency_p50", "latency_p90", "size", "peak_memory", "accuracy"]
    assert all(r["ok"] for r in rows.values())
    assert rows["latency_p50"]["margin"] == pytest.approx(0.1 - 0.25)
    assert rows["size"]["measured"] == pytest.approx(60_000 / 2**20)
    assert rows["accuracy"]["margin"] == pytest.approx(0.9 - 0.88) and rows["accuracy"]["kind"] == "min"


def test_evaluate_budgets_fail_and_unmeasured() -> None:
    rows = _rows(_profile(BUDGETS), _result(p90=0.8, acc=0.87, rss=None))
    assert not rows["latency_p90"]["ok"] and rows["latency_p90"]["margin"] == pytest.approx(0.3)
    assert not rows["accuracy"]["ok"] and rows["accuracy"]["margin"] == pytest.approx(-0.01)
    assert not rows["peak_memory"]["ok"] and rows["peak_memory"]["margin"] is None  # unmeasured never passes
    assert rows["latency_p50"]["ok"] and rows["size"]["ok"]


@pytest.mark.parametrize("hw, fp, providers, ok, reason", [
    (Hardware(), FP_X86, None, True, None),
    (Hardware(arch="aarch64"), FP_X86, None, False, "arch is x86_64, profile wants aarch64"),
    (Hardware(arch="aarch64", cpu="cortex-a72", cores=4), FP_PI, None, True, None),
    (Hardware(arch="aarch64", cpu="Raspberry Pi", cores=4), FP_PI, None, True, None),  # board name counts
    (Hardware(cpu="Cortex-A76"), FP_PI, None, False, "profile wants one containing 'Cortex-A76'"),
    (Hardware(cores=16), FP_X86, None, False, "8 cores, profile wants at least 16"),
    (Hardware(gpu="NVIDIA"), FP_X86, ["CPUExecutionProvider"], False, "no CUDA/TensorRT/ROCm"),
    (Hardware(gpu="NVIDIA"), FP_X86, ["CUDAExecutionProvider", "CPUExecutionProvider"], True, None),
    (Hardware(gpu="NVIDIA"), {**FP_X86, "active_providers": ["TensorrtExecutionProvider"]}, None, True, None),
])
def test_hardware_matches(hw: Hardware, fp: dict[str, Any], providers: list[str] | None, ok: bool,
                          reason: str | None) -> None:
    match, reasons = hardware_matches(hw, fp, providers)
    assert match is ok
    assert (not reasons) if ok else any(reason in r for r in reasons)


@pytest.mark.parametrize("status, strict, fails_run", [
    ("pass", False, False), ("pass", True, False), ("fail", False, True), ("fail", True, True),
    ("proxy-pass", True, False), ("proxy-fail", False, False), ("proxy-fail", True, True),
])
def test_verdict(status: str, strict: bool, fails_run: bool) -> None:
    assert fails(status, strict) is fails_run


# --- end to end on a tiny ONNX model -------------------------------------------------------------

@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """export-stage-like directory: fp32.onnx (Flatten + Gemm, 1x4x4 -> 3), sidecar, testset.npz."""
    return tiny_export_dir(tmp_path_factory.mktemp("export"), seed=2)


def test_check_target_end_to_end(artifacts: Any) -> None:
    d, testset, acc = artifacts
    from edgecompress.deploy.stats import wilson

    # A floor is judged on the lower end of the accuracy's 95% interval (40 images: about 13 points wide).
    floor = round(wilson(acc, 40).lo - 0.01, 3)
    budgets = Budgets(latency_ms={"p50": 1000.0, "p99": 1000.0}, size_mb=1.0, peak_memory_mb=100_000,
                      min_accuracy=floor)
    res = check_target(_profile(budgets), d, testset)
    assert res.status == "pass" and res.hardware_match is True and not fails(res.status, strict=True)
    assert res.accuracy == pytest.approx(acc) and res.accuracy_samples == 40
    assert res.artifact.size_bytes == (d / "fp32.onnx").stat().st_size
    assert res.latency_ms["n"] == 400 and res.runtime["name"] == "onnxruntime"
    assert res.budgets[-1].verdict == "met" and res.budgets[-1].interval.n == 40 and res.latency_ci["p99"]["n"] == 400
    # Above the interval's lower end but below the point: undecided, which fails (the conservative rule).
    undecided = check_target(_profile(replace(budgets, min_accuracy=round(acc - 0.02, 3))), d, testset)
    assert undecided.status == "fail" and undecided.budgets[-1].verdict == "undecided"
    assert [r.budget.name for r in res.budgets] == ["latency_p50", "latency_p99", "size", "peak_memory", "accuracy"]
    md = render_markdown(res)
    assert "**PASS**" in md and "p99 latency" in md and res.fingerprint["cpu_model"] in md
    # The record of a real run reads back to the same bytes.
    text = json.dumps(res.to_json(), indent=2)
    assert json.dumps(CheckResult.from_json(json.loads(text)).to_json(), indent=2) == text

    # Same measurement judged as a proxy: another arch than this machine's.
    other = "aarch64" if res.fingerprint["arch"] != "aarch64" else "x86_64"
    proxy = check_target(_profile(budgets, Hardware(arch=other)), d, testset)
    assert proxy.status == "proxy-pass" and proxy.hardware_reasons
    assert "PROXY-PASS" in render_markdown(proxy)

    # A download budget: the package of the checked file is what counts.
    from edgecompress.deploy.pack import pack_file

    shipped = len(pack_file(d / "fp32.onnx"))
    res = check_target(_profile(Budgets(download_mb=shipped / 2**20 * 0.99)), d, testset)
    assert res.artifact.package_bytes == shipped and res.status == "fail"
    assert res.budgets[0].budget.name == "download" and res.budgets[0].measured == shipped / 2**20


def test_main_check_writes_reports_then_fails(artifacts: Any, tmp_path: Path) -> None:
    d, testset, acc = artifacts
    target = tmp_path / "tight.yaml"
    target.write_text("artifact: {format: onnx, precision: fp32}\nruntime: {engine: onnxruntime}\n"
                      "bench: {warmup: 0, runs: 40}\nbudgets: {latency_ms: {p90: 0.000001}, min_accuracy: 0.0}\n")
    out_json, out_md = tmp_path / "m" / "tight.json", tmp_path / "r" / "tight.md"
    with pytest.raises(EdgeCompressError, match=r"target tight missed budget\(s\): p90 latency .* ms > 1e-06 ms"):
        main_check(target, d, testset, out_json, out_md, strict=False)
    saved = json.loads(out_json.read_text())  # the reports exist even though the gate failed
    assert saved["status"] == "fail" and saved["gate_failed"] is True
    assert "**MISSED**" in out_md.read_text()


def test_missing_artifact_and_ssh_key(artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    int8 = TargetProfile(name="t", description="", hardware=Hardware(), artifact=ArtifactSpec("onnx", "int8"),
                         runtime=RuntimeSpec("onnxruntime"), budgets=Budgets(size_mb=1.0))
    with pytest.raises(EdgeCompressError, match=r"int8\.onnx not found; run the stage that writes .* \(dvc repro build@.*, or export\)"):
        check_target(int8, d, testset)
    # A missing key file is reported before any connection is tried (test_remote.py covers real SSH).
    with pytest.raises(EdgeCompressError, match=r"device ssh://pi@raspberrypi\.local: key file .*nokey does not exist"):
        check_target(_profile(Budgets(size_mb=1.0)), d, testset,
                     device={"url": "ssh://pi@raspberrypi.local", "key_file": str(tmp_path / "nokey")})
    with pytest.raises(EdgeCompressError, match="test set .* not found"):
        check_target(_profile(Budgets(size_mb=1.0)), d, tmp_path / "none.npz")


def test_runner_args_shared_by_local_and_remote() -> None:
    """The local check and the SSH one use the same flags (rounds included); only the paths differ."""
    from edgecompress.deploy.check import runner_args

    prof = _profile(BUDGETS)
    local = runner_args(prof, "/abs/m/fp32.onnx", "/abs/m/fp32.onnx.json", "/abs/m/testset.npz")
    remote = runner_args(prof, "fp32.onnx", "fp32.onnx.json", "testset.npz")
    flags = [a for a in remote if a.startswith("--")]
    assert flags == [a for a in local if a.startswith("--")] and len(local) == len(remote)
    assert remote[remote.index("--threads") + 1] == "1" and remote[remote.index("--data") + 1] == "testset.npz"
    assert remote[remote.index("--rounds") + 1] == "5"  # 400 runs in 5 rounds by default


def test_max_drop_budget_compares_with_the_teacher() -> None:
    profile = TargetProfile(name="t", description="", hardware=Hardware(), artifact=ArtifactSpec("onnx", "int8"),
                            runtime=RuntimeSpec("onnxruntime"), budgets=Budgets(max_drop=2.0))
    ok = _rows(profile, {"accuracy": 0.91}, teacher=0.925)
    assert ok["accuracy_drop"]["ok"] and ok["accuracy_drop"]["measured"] == pytest.approx(1.5)
    bad = _rows(profile, {"accuracy": 0.90}, teacher=0.925)
    assert not bad["accuracy_drop"]["ok"] and bad["accuracy_drop"]["margin"] == pytest.approx(0.5)
    # Without a reference the drop is unmeasured, and an unmeasured budget fails.
    assert evaluate_budgets(profile, {"accuracy": 0.99})[0].missed


def test_calibration_budgets_judge_the_devices_ece_and_nll() -> None:
    profile = TargetProfile(name="t", description="", hardware=Hardware(), artifact=ArtifactSpec("onnx", "int8"),
                            runtime=RuntimeSpec("onnxruntime"), budgets=Budgets(max_ece=0.03, max_nll=0.3))
    rows = _rows(profile, {"ece": 0.02, "nll": 0.35})
    assert rows["ece"]["ok"] and rows["ece"]["margin"] == pytest.approx(-0.01)
    assert not rows["nll"]["ok"] and rows["nll"]["margin"] == pytest.approx(0.05)
    # An artifact whose calibration was not measured cannot pass a calibration budget.
    assert all(r.missed for r in evaluate_budgets(profile, {"accuracy": 0.9}))


def test_teacher_accuracy_on_the_runner_subset(tmp_path: Path, tiny_student) -> None:
    from edgecompress.checkpoint import save_checkpoint
    from edgecompress.models import arch_of

    save_checkpoint(tmp_path / "t.pt", tiny_student, arch_of(tiny_student),
                    {"data": {"mean": [0.5], "std": [0.25]}})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 1, 12, 12), dtype=np.uint8)
    with torch.no_grad():
        pred = tiny_student(torch.from_numpy((x.astype(np.float32) / 255 - 0.5) / 0.25)).argmax(1).numpy()
    y = pred.copy()
    y[:10] = (y[:10] + 1) % 4  # the first 10 are wrong
    np.savez(tmp_path / "test.npz", x=x, y=y)
    assert teacher_accuracy(tmp_path / "t.pt", tmp_path / "test.npz", None) == pytest.approx(20 / 30)
    # 10 samples: the runner's seeded, class-stratified subset, so the expected figure is computed on it
    from edgecompress.deploy.runner import stratified_subset

    keep = stratified_subset(y, 10)
    assert len(keep) == 10 and list(keep) != list(range(10))
    want = float((pred[keep] == y[keep]).mean())
    assert teacher_accuracy(tmp_path / "t.pt", tmp_path / "test.npz", 10) == pytest.approx(want)


def test_the_download_budget_judges_the_shipped_package(tmp_path: Path) -> None:
    from edgecompress.deploy.check import package_bytes

    rows = _rows(_profile(Budgets(download_mb=0.05)), {**_result(), "package_bytes": 40_000})
    assert rows["download"]["ok"] and rows["download"]["measured"] == pytest.approx(40_000 / 2**20)
    assert evaluate_budgets(_profile(Budgets(download_mb=0.05)), _result())[0].missed  # no package: not passed
    # The build's package beside the artifact is what ships; without one, the artifact is packed for the check.
    model = tmp_path / "fp32.onnx"
    torch.onnx.export(torch.nn.Linear(64, 8), (torch.zeros(1, 64),), str(model), dynamo=False)
    packed = package_bytes(model)
    assert 0 < packed < model.stat().st_size
    (tmp_path / "fp32.onnx.ecpk").write_bytes(b"ECPK" + bytes(10))
    assert package_bytes(model) == 14


def test_sustained_budget_judged_on_the_last_intervals(artifacts: Any) -> None:
    """bench.sustained_s runs the artifact continuously; latency_ms.sustained_p90 is judged on its last
    intervals with an interval of its own, and the check keeps the per-interval trend and the drift."""
    d, testset, _ = artifacts
    budgets = Budgets(latency_ms={"p50": 1000.0, "sustained_p90": 1000.0})
    bench = BenchSpec(warmup=1, runs=40, max_seconds=10, sustained_s=0.6, sustained_intervals=3)
    profile = replace(_profile(Budgets(size_mb=1.0)), budgets=budgets, bench=bench)
    res = check_target(profile, d, testset)
    row = next(r for r in res.budgets if r.budget.name == "latency_sustained_p90")
    assert row.verdict == "met" and row.interval is not None and row.interval.hi <= 1000.0
    assert res.sustained is not None and len(res.sustained["intervals"]) == 3 and res.sustained["drift_p90"] > 0
    assert "tail_samples_ms" not in res.sustained and res.latency_ci["sustained_p90"]["n"] == row.interval.n
    # The same budget far below the measurement misses; without a sustained run validation refuses it.
    tight = replace(profile, budgets=Budgets(latency_ms={"sustained_p90": 1e-6}))
    assert check_target(tight, d, testset).budgets[0].verdict == "missed"
    with pytest.raises(EdgeCompressError, match="bench.sustained_s"):
        replace(profile, bench=BenchSpec(runs=40))


def test_timings_judged_only_on_the_profiles_kind_of_timings() -> None:
    from edgecompress.deploy.devices import DeviceSpec
    from edgecompress.deploy.hardware import gpu_inactive, timings_judged

    cpu, gpu = {"active_providers": ["CPUExecutionProvider"]}, {"active_providers": ["CUDAExecutionProvider"]}
    local = DeviceSpec(url="local")
    plain, wants_gpu = _profile(BUDGETS), _profile(BUDGETS, Hardware(gpu="NVIDIA"))
    assert timings_judged(plain, local, [cpu]) and timings_judged(wants_gpu, local, [gpu])
    assert not timings_judged(wants_gpu, local, [gpu, cpu])  # one candidate on the CPU: none decide
    assert gpu_inactive(Hardware(gpu="NVIDIA"), None) and not gpu_inactive(Hardware(), None)
    assert not timings_judged(plain, DeviceSpec(url="emulate:aarch64"), [cpu])


def test_a_gpu_profile_checked_without_its_gpu_does_not_judge_the_cpus_latency(artifacts: Any) -> None:
    d, testset, acc = artifacts
    # A latency and memory no machine meets: on the CPU they are recorded, not judged; accuracy and size still are.
    budgets = Budgets(latency_ms={"p50": 1e-6}, peak_memory_mb=1e-6, size_mb=1.0, min_accuracy=0.0)
    res = check_target(_profile(budgets, Hardware(gpu="NVIDIA")), d, testset)
    assert res.status == "proxy-pass" and not res.timings_judged and res.latency_ms["p50"] > 1e-6
    assert [r.budget.name for r in res.budgets] == ["size", "accuracy"]
    assert any("not judged" in r for r in res.hardware_reasons)
    assert "GPU was not active: CPU kernels): recorded, not judged" in render_markdown(res)
    assert CheckResult.from_json(res.to_json()).timings_judged is False
    # Too small a size still fails it (as a proxy, so only strict fails the run).
    small = check_target(_profile(replace(budgets, size_mb=1e-6), Hardware(gpu="NVIDIA")), d, testset)
    assert small.status == "proxy-fail" and fails(small.status, strict=True)
