"""Agreement across devices (#29): the same artifact's outputs on the profile's agreement device against this
host's, the min_agreement budget in the build and the check, and the profile's validation. The emulated device
here is this Python (``_HostEmulator``): the code path of emulate:aarch64 without qemu; a crafted device whose
kernels flip predictions is this host with its outputs changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tiny_export_dir
from edgecompress.deploy import agreement as agree
from edgecompress.deploy import emulate, outputs
from edgecompress.deploy.agreement import Agreement, compare
from edgecompress.deploy.build import MeasurementCache, build_target, load_index
from edgecompress.deploy.build_report import render_markdown as build_markdown
from edgecompress.deploy.check import CheckResult, check_target, run_target_check
from edgecompress.deploy.check_report import render_markdown as check_markdown
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError
from tests.test_build import _profile, pool, pool_inputs  # noqa: F401 (fixtures)
from tests.test_emulate import _fake_root, _HostEmulator, fake_qemu  # noqa: F401 (fixture)


def test_compare_counts_flips_and_the_largest_probability_gap() -> None:
    host = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    dev = np.array([[0.9, 0.1], [0.4, 0.6], [0.25, 0.75], [0.5, 0.5]])
    a = compare(host, dev, np.array([0, 0, 1, 1]), "emulate:aarch64")
    assert a.images == 4 and a.top1 == 0.75 and a.max_prob_diff == pytest.approx(0.2)
    assert a.accuracy == 0.5 and a.host_accuracy == 0.75  # the device got image 1 wrong; argmax ties go to 0
    assert a.nll == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.75, 0.5])))
    assert Agreement.from_json(a.to_json()) == a and "75.00% top-1 (3/4 images)" in a.text
    with pytest.raises(EdgeCompressError, match="cannot be compared"):
        compare(host, dev[:3], None, "emulate:aarch64")


def test_the_subset_is_seeded_and_stratified() -> None:
    y = np.repeat(np.arange(4), 25)
    a, b = agree.subset(y, 20), agree.subset(y, 20)
    assert np.array_equal(a, b) and np.bincount(y[a]).tolist() == [5, 5, 5, 5]
    assert len(agree.subset(y, None)) == 100


@pytest.mark.parametrize("section, budgets, error", [
    ("", "{min_agreement: 0.99}", "field budgets.min_agreement: needs an agreement section"),
    ("agreement: {device: local}\n", "{min_agreement: 0.99}", "field agreement.device: 'local' compares"),
    ("agreement: {device: emulate:sparc}\n", "{min_agreement: 0.99}", "field agreement.device:"),
    ("agreement: {samples: 100}\n", "{min_agreement: 0.99}", "field agreement.device: is required"),
    ("agreement: {device: emulate:aarch64, samples: 3}\n", "{min_agreement: 0.99}", "field agreement.samples"),
    ("agreement: {device: emulate:aarch64, images: 3}\n", "{min_agreement: 0.99}", "agreement.images: unknown key"),
    ("agreement: {device: emulate:aarch64}\n", "{min_agreement: 1.5}", "field budgets.min_agreement"),
])
def test_profile_errors_name_the_key_and_the_fix(tmp_path: Path, section: str, budgets: str, error: str) -> None:
    path = _profile(tmp_path, budgets)
    path.write_text(path.read_text() + section)
    with pytest.raises(EdgeCompressError, match=error.replace("(", r"\(")):
        load_target(path)


@pytest.fixture
def host_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_qemu: Path) -> dict[str, Any]:
    """emulate:aarch64 runs on this Python; ``state["flip"]`` (a fraction) makes its kernels change that share
    of the predictions (the top two classes swapped), as a device whose kernels differ would."""
    root = _fake_root(tmp_path / "cache", fake_qemu)
    manifest, _ = emulate.read_manifest(root)
    emu = _HostEmulator("aarch64", root, str(fake_qemu), manifest)
    state: dict[str, Any] = {"flip": 0.0, "device_runs": 0}
    real = outputs.score_on_device

    def scored(artifact: Any, x: np.ndarray, profile: Any, device: Any, probs: bool = False) -> dict[str, Any]:
        r = real(artifact, x, profile, device, probs)
        if device.emulated:
            state["device_runs"] += 1
            p = np.asarray(r["probs"])
            for i in range(int(round(state["flip"] * len(p)))):
                top = np.argsort(p[i])[-2:]
                p[i, top] = p[i, top[::-1]]
            r["probs"] = p.tolist()
        return r

    for module in (agree, outputs):
        monkeypatch.setattr(module, "emulator", lambda device, cache=None: emu if device.emulated else None)
    monkeypatch.setattr(agree, "score_on_device", scored)
    return state


def _agreeing(tmp_path: Path, name: str, floor: float, samples: int = 40) -> Path:
    path = _profile(tmp_path, f"{{latency_ms: {{p50: 1000}}, min_agreement: {floor}}}", name=name)
    path.write_text(path.read_text() + f"agreement: {{device: emulate:aarch64, samples: {samples}}}\n")
    return path


def test_a_candidate_whose_device_outputs_differ_is_ruled_out_with_the_reason(
        pool: Path, tmp_path: Path, host_device: dict[str, Any]) -> None:  # noqa: F811
    cache = MeasurementCache(tmp_path / "c")
    same = build_target(load_target(_agreeing(tmp_path, "same", 0.5)), pool, tmp_path / "same", cache)
    first = same.chosen.name
    row = next(c for c in same.candidates if c.name == first)
    assert row.agreement["top1"] == 1.0 and row.agreement["images"] == 40 and row.agreement["max_prob_diff"] == 0
    assert "compared with emulate:aarch64 on 40 validation images" in same.agreement
    assert "| agreement (images), max Δp |" in build_markdown(same)
    # The same pool, a device whose kernels flip a quarter of the predictions: the floor rules out whatever
    # it compares, with the reason in the record and the report; compared again (another device, another key).
    host_device["flip"] = 0.25
    flipped = build_target(load_target(_agreeing(tmp_path, "flip", 0.9)), pool, tmp_path / "flip",
                           MeasurementCache(tmp_path / "c2"))
    rows = {c.name: c for c in flipped.candidates}
    assert rows[first].fate == "rejected" and rows[first].agreement["top1"] == 0.75
    assert any(w.startswith("agreement with this host 75.00% < 90.00%") for w in rows[first].why)
    assert flipped.status in ("proxy-infeasible", "infeasible", "built", "proxy-built")
    assert "agreement with this host 75.00% < 90.00%" in build_markdown(flipped)
    # A record is cached like a measurement: the same build again runs nothing on the device.
    runs = host_device["device_runs"]
    build_target(load_target(_agreeing(tmp_path, "same", 0.5)), pool, tmp_path / "same", cache)
    assert host_device["device_runs"] == runs


def test_without_the_device_the_build_says_so_and_goes_on(pool: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nothing-prepared"))
    record = build_target(load_target(_agreeing(tmp_path, "none", 0.99)), pool, tmp_path / "none",
                          MeasurementCache(tmp_path / "c"))
    assert record.status in ("built", "proxy-built") and record.chosen.val_accuracy == max(
        c.accuracy for c in load_index(pool).candidates if c.engine == "onnxruntime")
    assert "not compared with emulate:aarch64" in record.agreement and "device prepare --arch aarch64" in record.agreement
    assert all(c.agreement is None for c in record.candidates)


def test_the_check_judges_the_devices_outputs(tmp_path: Path, host_device: dict[str, Any]) -> None:
    d, testset, acc = tiny_export_dir(tmp_path, seed=2)
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nhardware: {arch: aarch64}\nartifact: {format: onnx, precision: fp32}\n"
                    "runtime: {engine: onnxruntime, threads: 1}\nbench: {warmup: 1, runs: 20}\n"
                    "budgets: {min_accuracy: 0.01, min_agreement: 0.8}\nagreement: {device: emulate:aarch64}\n")
    res = check_target(load_target(path), d, testset)
    assert res.agreement["top1"] == 1.0 and res.agreement["images"] == 40 and res.accuracy == pytest.approx(acc)
    assert res.status == "emulated-pass" and [r.budget.name for r in res.budgets][-1] == "agreement"
    md = check_markdown(res)
    assert "outputs on emulate:aarch64 vs this host: top-1 agreement 100.00% (40/40 images)" in md
    assert "this host's, a **proxy** for the device's" in md
    assert CheckResult.from_json(res.to_json()).agreement == res.agreement
    host_device["flip"] = 0.5  # half the predictions changed by the device's kernels: a hard failure
    bad = check_target(load_target(path), d, testset)
    assert bad.status == "emulated-fail" and bad.failed and bad.agreement["top1"] == 0.5
    assert "agreement with this host 50.00% < 80.00%" in " ".join(r.reason for r in bad.budgets)


@pytest.mark.slow  # CI prepares the device beside the tests (scripts/setup-and-test.sh) and runs this on it
def test_build_and_check_on_the_real_emulated_device(pool: Path, tmp_path: Path) -> None:  # noqa: F811
    from tests.test_emulate import _ready_emulator

    emu = _ready_emulator()
    path = _profile(tmp_path, "{latency_ms: {p50: 0.000001}, min_accuracy: 0.01, min_agreement: 0.85}", name="arm")
    path.write_text(path.read_text().replace("hardware: {arch: any}", "hardware: {arch: aarch64}")
                    + "device: {emulate: aarch64}\nagreement: {device: emulate:aarch64, samples: null}\n")
    record = build_target(load_target(path), pool, tmp_path / "arm", MeasurementCache(tmp_path / "c"))
    # Latency was measured under qemu and not judged: a budget no machine meets ruled nothing out.
    assert record.status == "proxy-built" and record.fingerprint["arch"] == "aarch64"
    assert record.fingerprint["emulated"] is True and record.fingerprint["qemu_version"] == emu.manifest.qemu_version
    chosen = next(c for c in record.candidates if c.fate == "chosen")
    assert chosen.latency_ms["p50"] > 0.000001 and not any("latency" in w for w in chosen.why)
    assert chosen.agreement["images"] == 48 and chosen.agreement["fingerprint"]["emulated"] is True
    res = run_target_check(path, tmp_path / "arm", pool / "testset.npz", strict=False)
    assert res.status == "emulated-pass" and res.fingerprint["arch"] == "aarch64" and res.fingerprint["emulated"]
    assert [r.budget.name for r in res.budgets] == ["accuracy", "agreement"]  # latency recorded, not judged
    assert res.latency_ms["p50"] > 0.000001 and res.agreement["top1"] >= 0.85


def test_a_candidate_that_cannot_change_the_choice_is_not_compared(
        pool: Path, tmp_path: Path, host_device: dict[str, Any]) -> None:  # noqa: F811
    record = build_target(load_target(_agreeing(tmp_path, "lazy", 0.5)), pool, tmp_path / "lazy",
                          MeasurementCache(tmp_path / "c"))
    rows = {c.name: c for c in record.candidates}
    assert rows[record.chosen.name].agreement is not None  # what ships was compared
    fit = [c for c in record.candidates if c.fate in ("chosen", "feasible, less accurate")]
    uncompared = sorted(c.name for c in fit if c.agreement is None)
    assert host_device["device_runs"] == len(fit) - len(uncompared)
    assert uncompared  # the tiny pool's tied variants: only the one that ships is compared
    assert f"not ({', '.join(uncompared)}): neither outcome of theirs could change the choice" in record.agreement
