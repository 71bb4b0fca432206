"""Target profiles: the shipped ones load, and every kind of mistake gives a pointed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.deploy.targets import (ArtifactSpec, Budgets, Hardware, RuntimeSpec, TargetProfile, load_target,
                                  load_targets)

TARGETS = Path(__file__).resolve().parent.parent / "targets"
SHIPPED = ("mobile-cpu", "raspberry-pi", "iot-camera", "gpu-server", "host")

GOOD = """\
name: t
hardware: {arch: any}
artifact: {format: onnx, precision: int8}
runtime: {engine: onnxruntime}
budgets:
  latency_ms: {p50: 1.0}
  min_accuracy: 0.88
"""


def test_shipped_profiles_load() -> None:
    profiles = load_targets([TARGETS / f"{n}.yaml" for n in SHIPPED])
    by_name = {p.name: p for p in profiles}
    assert set(by_name) == set(SHIPPED)
    # Every shipped profile searches; budgets, not a pinned artifact, decide what it ships.
    assert all(p.artifact is None and p.build is not None for p in profiles)
    assert by_name["mobile-cpu"].build.engines == ("litert",)  # type: ignore[union-attr]
    assert by_name["iot-camera"].budgets.size_mb == 0.0625 and by_name["iot-camera"].build.precisions == ("int8",)  # type: ignore[union-attr]
    assert by_name["mobile-cpu"].runtime.threads == 4 and by_name["mobile-cpu"].runtime.xnnpack
    assert by_name["raspberry-pi"].hardware.cores == 4
    assert by_name["gpu-server"].runtime.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert by_name["gpu-server"].hardware.gpu == "NVIDIA"
    assert by_name["host"].hardware.arch == "any" and by_name["host"].build.engines == ("onnxruntime",)  # type: ignore[union-attr]
    for p in profiles:
        assert p.is_local
        assert p.budgets.min_accuracy is not None and 0.85 <= p.budgets.min_accuracy <= 0.9


def test_defaults_and_name_from_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-target.yaml"
    path.write_text(GOOD.replace("name: t\n", ""))
    p = load_target(path)
    assert p.name == "my-target"
    assert p.runtime.providers == ("CPUExecutionProvider",) and p.runtime.threads is None
    assert (p.bench.warmup, p.bench.runs, p.bench.batch, p.bench.max_seconds) == (10, 100, 1, 60.0)
    assert p.device.url == "local" and p.device.is_local and str(p.device) == "local"


def test_fp16_tflite_and_ssh_device_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(GOOD.replace("format: onnx, precision: int8", "format: tflite, precision: fp16")
                    .replace("engine: onnxruntime", "engine: litert") + "device: ssh://pi@raspberrypi.local:2222\n")
    p = load_target(path)
    assert p.artifact.filename == "fp16.tflite" and not p.is_local
    assert (p.device.user, p.device.host, p.device.port) == ("pi", "raspberrypi.local", 2222)


@pytest.mark.parametrize("old, new, match", [
    ("name: t\n", "name: t\ncolour: red\n", r"field colour: unknown key; allowed keys: name, description"),
    ("runtime: {engine: onnxruntime}", "runtime: {engine: onnxruntime, thread: 2}",
     r"field runtime\.thread: unknown key; allowed keys: engine, threads"),
    ("engine: onnxruntime", "engine: tensorrt", r"field runtime\.engine: 'tensorrt' is not one of onnxruntime, litert"),
    ("precision: int8", "precision: int4", r"field artifact\.precision: 'int4' is not one of fp32, int8, fp16, dynamic"),
    ("arch: any", "arch: arm64", r"field hardware\.arch: 'arm64' is not one of x86_64, aarch64"),
    ("{p50: 1.0}", "{p50: -1.0}", r"field budgets\.latency_ms\.p50: -1\.0 must be > 0"),
    ("min_accuracy: 0.88", "min_accuracy: 0.88\n  size_mb: -2", r"field budgets\.size_mb: -2 must be > 0"),
    ("min_accuracy: 0.88", "min_accuracy: 0.88\n  download_mb: 0", r"field budgets\.download_mb: 0 must be > 0"),
    ("min_accuracy: 0.88", "min_accuracy: 0.88\n  size_mb: .inf", r"field budgets\.size_mb: inf must be a finite number"),
    ("{p50: 1.0}", "{p95: 1.0}", r"field budgets\.latency_ms\.p95: 'p95' is not one of p50, p90, p99, mean"),
    ("format: onnx", "format: tflite", r"field runtime\.engine: 'onnxruntime' cannot run artifact\.format 'tflite'; use litert"),
    ("min_accuracy: 0.88", "min_accuracy: 88", r"field budgets\.min_accuracy: 88 must be a fraction between 0 and 1"),
    ("min_accuracy: 0.88", "min_accuracy: 1.2", r"field budgets\.min_accuracy: 1\.2 must be a fraction"),
    ("min_accuracy: 0.88", "min_accuracy: 0.88\n  max_drop: -1", r"field budgets\.max_drop: -1 must be accuracy points"),
    ("runtime: {engine: onnxruntime}", "runtime: {engine: onnxruntime, threads: two}",
     r"field runtime\.threads: 'two' must be an integer or null >= 1"),
    ("runtime: {engine: onnxruntime}", "runtime: {engine: onnxruntime, threads: 0}", r"field runtime\.threads: 0 must be >= 1"),
    ("runtime: {engine: onnxruntime}", "runtime: {engine: onnxruntime, providers: [CUDA]}",
     r"field runtime\.providers: 'CUDA' is not an onnxruntime provider name"),
    ("runtime: {engine: onnxruntime}", "runtime: {engine: onnxruntime, xnnpack: false}",
     r"field runtime\.xnnpack: applies only to engine litert"),
    ("name: t\n", "name: t\nbench: {runs: 0}\n", r"field bench\.runs: 0 must be >= 1"),
    ("name: t\n", "name: t\nbench: {runs: true}\n", r"field bench\.runs: True must be an integer"),
    ("name: t\n", "name: t\ndevice: pi.local\n", r"field device: 'pi\.local' is not 'local' or 'ssh://user@host\[:port\]'"),
    ("runtime: {engine: onnxruntime}\n", "", r"field runtime: is required"),
    ("budgets:\n  latency_ms: {p50: 1.0}\n  min_accuracy: 0.88\n", "budgets: {}\n", r"field budgets: no budget is set"),
    ("latency_ms: {p50: 1.0}\n  min_accuracy: 0.88\n", "latency_ms: {}\n", r"field budgets: no budget is set"),
    ("hardware: {arch: any}", "hardware: x86_64", r"field hardware: must be a mapping"),
    ("name: t\n", "name: t\n  bad: [indent\n", r"not valid YAML"),
])
def test_profile_errors(tmp_path: Path, old: str, new: str, match: str) -> None:
    assert old in GOOD
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(EdgeCompressError, match=match) as info:
        load_target(path)
    assert str(path) in str(info.value)  # every error names the file


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeCompressError, match=r"nope\.yaml: target profile not found"):
        load_target(tmp_path / "nope.yaml")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(EdgeCompressError, match="must be a mapping"):
        load_target(path)


def test_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(EdgeCompressError, match="'t' is already used"):
        load_targets([tmp_path / "a.yaml", tmp_path / "b.yaml"])


def test_dataclasses_validate_on_construction() -> None:
    with pytest.raises(EdgeCompressError, match="field engine: 'tensorrt'"):
        RuntimeSpec(engine="tensorrt")
    with pytest.raises(EdgeCompressError, match="field runtime.engine: 'litert' cannot run artifact.format 'onnx'"):
        TargetProfile(name="x", description="", hardware=Hardware(), artifact=ArtifactSpec("onnx", "fp32"),
                      runtime=RuntimeSpec("litert"), budgets=Budgets(size_mb=1.0))



@pytest.mark.parametrize("key, runs, need", [("p99", 200, 368), ("p90", 35, 36), ("p50", 5, 6)])
def test_too_few_runs_to_bound_a_budgeted_percentile_are_refused(tmp_path: Path, key: str, runs: int,
                                                                 need: int) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(f"artifact: {{format: onnx, precision: fp32}}\nruntime: {{engine: onnxruntime}}\n"
                 f"bench: {{runs: {runs}}}\nbudgets: {{latency_ms: {{{key}: 1.0}}}}\n")
    with pytest.raises(EdgeCompressError, match=rf"bench\.runs: {runs} runs cannot bound latency_ms\.{key} .* at least "
                                                rf"{need} runs"):
        load_target(p)
    p.write_text(p.read_text().replace(f"runs: {runs}", f"runs: {need}"))
    assert load_target(p).bench.runs == need


def test_rounds_and_sustained_settings_are_validated(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    base = "artifact: {format: onnx, precision: fp32}\nruntime: {engine: onnxruntime}\nbudgets: {size_mb: 1.0}\n"
    for bench, match in (("{runs: 4, rounds: 5}", "rounds.*runs >= bench.rounds"), ("{sustained_s: -1}", "sustained_s"),
                         ("{sustained_intervals: 1}", "sustained_intervals")):
        p.write_text(base + f"bench: {bench}\n")
        with pytest.raises(EdgeCompressError, match=match):
            load_target(p)
    p.write_text(base + "bench: {runs: 3}\n")
    assert load_target(p).bench.round_count == 3
