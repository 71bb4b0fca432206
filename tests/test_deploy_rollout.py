"""Deployments over a real loopback sshd (test_remote.serve_sshd): two install dirs stand in for two devices.

The build output is a tiny ONNX classifier (fp32.onnx, its sidecar with class names, its .ecpk and a
build.json); a second model with other weights plays the next release and, packaged under the first's
name, the swapped artifact the smoke test must catch. The tests with several rollouts are marked slow
(the fast lane keeps the unreachable device, the dry run and the unwritable dir).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml

from conftest import tiny_export_dir
from test_records import build_record_json
from test_remote import SSHD, Server, _free_port, serve_sshd
from edgecompress.cli import main as cli
from edgecompress.deploy import rollout
from edgecompress.deploy.ledger import read_ledger
from edgecompress.deploy.pack import pack_file
from edgecompress.deploy.release import prepare_release
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError

pytestmark = pytest.mark.skipif(not (Path(SSHD).is_file() and shutil.which("ssh") and shutil.which("scp")),
                                reason="needs OpenSSH (apt-get install openssh-server openssh-client)")
NAMES = ["T-shirt", "Trouser", "Bag"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _build(d: Path, seed: int, package_of: Path | None = None) -> Path:
    """A build output in ``d``: fp32.onnx (weights from ``seed``), sidecar, build.json and the .ecpk
    (of ``package_of`` instead when given: the swapped artifact)."""
    d.mkdir(parents=True)
    tiny_export_dir(d, seed=seed)
    side = json.loads((d / "fp32.onnx.json").read_text())
    (d / "fp32.onnx.json").write_text(json.dumps({**side, "class_names": NAMES}))
    (d / "build.json").write_text(json.dumps(build_record_json("edge", "student/fp32.onnx", "fp32.onnx")))
    (d / "fp32.onnx.ecpk").write_bytes(pack_file(package_of or d / "fp32.onnx"))
    return d


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builds")
    a, b = _build(root / "a", 3), _build(root / "b", 7)
    return {"a": a, "b": b, "swapped": _build(root / "swapped", 3, package_of=b / "fp32.onnx")}


def _sha(build: Path) -> str:
    import hashlib

    return hashlib.sha256((build / "fp32.onnx").read_bytes()).hexdigest()


@pytest.fixture
def repo(sshd: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root (cwd) with targets/edge.yaml deploying to dev1 and dev2 on the loopback sshd."""
    monkeypatch.chdir(tmp_path)
    _profile(sshd, tmp_path, [tmp_path / "dev1", tmp_path / "dev2"])
    return tmp_path


def _profile(sshd: Server, root: Path, dirs: list[Path], urls: list[str] | None = None, **deploy: Any) -> Path:
    devices = [{"url": (urls or [sshd.url] * len(dirs))[i], "key_file": str(sshd.key),
                "known_hosts": str(sshd.known_hosts), "python": sys.executable, "dir": str(d),
                "connect_timeout": 5, "timeout": 60} for i, d in enumerate(dirs)]
    profile = {"name": "edge", "description": "two loopback devices", "build": {"engines": ["onnxruntime"]},
               "runtime": {"threads": 1}, "budgets": {"min_accuracy": 0.0},
               "deploy": {"devices": devices, "canary": 1, "parallel": 2, "smoke_images": 30, **deploy}}
    (root / "targets").mkdir(exist_ok=True)
    path = root / "targets" / "edge.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _deploy(build: Path, images: Path, *extra: str) -> None:
    cli(["deploy", "--target", "edge", "--artifacts", str(build), "--images", str(images), *extra])


def _current(d: Path) -> str | None:
    return Path(os.readlink(d / "current")).name if (d / "current").is_symlink() else None


def _previous(d: Path) -> str | None:
    return Path(os.readlink(d / "previous")).name if (d / "previous").is_symlink() else None


@pytest.mark.slow  # two or three rollouts over ssh, ~2.5 s each on a loaded 2-core machine
def test_deploy_switch_and_rollback(repo: Path, builds: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b, images = builds["a"], builds["b"], builds["a"] / "testset.npz"
    _deploy(a, images)
    for dev in ("dev1", "dev2"):
        d = repo / dev
        assert _current(d) == _sha(a) and _previous(d) is None
        assert (d / "current" / "fp32.onnx").read_bytes() == (a / "fp32.onnx").read_bytes()  # unpacked there
        assert not list((d / "releases").glob(".incoming-*")) and not (d / "current" / "smoke.npz").exists()
    ledger = json.loads((repo / "deploy" / "edge.json").read_text())
    assert [e["outcome"] for e in ledger["events"]] == ["switched", "switched"]
    first = ledger["events"][0]
    assert first["sha256"] == _sha(a) and first["artifact"] == "student/fp32.onnx"
    assert first["smoke"]["images"] == 30 and first["smoke"]["agreement"] == 1.0
    assert first["smoke"]["device_ms_per_image"] > 0 and first["device"].endswith("/dev1")

    # The on-device entry point, run from the installed release: class name and probability.
    x = np.load(images)["x"][0]
    np.save(repo / "img.npy", x[0])  # (H, W): one channel
    out = subprocess.run([sys.executable, str(repo / "dev1" / "current" / "classify.py"), str(repo / "img.npy")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    got = json.loads(out.stdout)
    side = json.loads((a / "fp32.onnx.json").read_text())
    import onnxruntime as ort

    logits = ort.InferenceSession(str(a / "fp32.onnx")).run(
        None, {"input": ((x[None].astype(np.float32) / 255 - 0.5) / 0.25)})[0][0]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert got["class"] == side["class_names"][int(p.argmax())] and got["probability"] == pytest.approx(p.max(), 1e-4)

    _deploy(b, images)  # the next release switches; the first stays as previous
    for dev in ("dev1", "dev2"):
        assert _current(repo / dev) == _sha(b) and _previous(repo / dev) == _sha(a)
    _deploy(b, images)  # again: nothing to do
    assert "unchanged" in capsys.readouterr().out and _current(repo / "dev1") == _sha(b)

    dev1 = load_target(repo / "targets" / "edge.yaml").deploy.devices[0].id  # type: ignore[union-attr]
    cli(["rollback", "--target", "edge", "--device", dev1])
    assert _current(repo / "dev1") == _sha(a) and _previous(repo / "dev1") == _sha(b)
    assert _current(repo / "dev2") == _sha(b)  # only the device named
    led = read_ledger(repo / "deploy" / "edge.json", "edge")
    assert led.events[-1].action == "rollback" and led.devices[dev1].current == _sha(a)
    cli(["status", "--target", "edge"])  # matches the ledger: no drift, exit 0
    assert capsys.readouterr().out.count(": ok,") == 2


@pytest.mark.slow  # two or three rollouts over ssh, ~2.5 s each on a loaded 2-core machine
def test_status_reports_a_hand_edit_as_drift(repo: Path, builds: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _deploy(builds["a"], builds["a"] / "testset.npz")
    side = repo / "dev2" / "current" / "fp32.onnx.json"
    side.write_text(side.read_text().replace("0.25", "0.3"))  # someone "fixed" the normalization by hand
    with pytest.raises(SystemExit):
        cli(["status", "--target", "edge"])
    out = capsys.readouterr()
    assert "dev1: ok" in out.out and "dev2: drift" in out.out and "fp32.onnx.json changed by hand" in out.out
    assert "1 device(s) differ from the ledger" in out.err


@pytest.mark.slow  # two or three rollouts over ssh, ~2.5 s each on a loaded 2-core machine
def test_a_corrupted_upload_is_caught_on_the_device(repo: Path, builds: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = builds["a"], builds["b"]
    _deploy(a, a / "testset.npz")
    real = rollout.copy_files

    def corrupt(s: Any, files: list[Path], remote: str) -> Any:  # a byte flipped on the way
        done = real(s, files, remote)
        pkg = Path(remote) / "fp32.onnx.ecpk"
        blob = bytearray(pkg.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        pkg.write_bytes(bytes(blob))
        return done

    monkeypatch.setattr(rollout, "copy_files", corrupt)
    with pytest.raises(SystemExit):
        _deploy(b, a / "testset.npz")
    for dev in ("dev1", "dev2"):
        assert _current(repo / dev) == _sha(a)  # unchanged
    assert not (repo / "dev1" / "releases" / _sha(b)).exists()
    assert not list((repo / "dev1" / "releases").glob(".incoming-*"))  # the bad upload removed
    events = read_ledger(repo / "deploy" / "edge.json", "edge").events
    assert [e.outcome for e in events[-2:]] == ["failed", "not tried"]
    assert "the upload of fp32.onnx.ecpk does not match what the host sent (sha256)" in str(events[-2].detail)


@pytest.mark.slow  # two or three rollouts over ssh, ~2.5 s each on a loaded 2-core machine
def test_a_swapped_artifact_fails_the_smoke_test(repo: Path, builds: dict[str, Path]) -> None:
    a = builds["a"]
    _deploy(a, a / "testset.npz")
    profile = load_target(repo / "targets" / "edge.yaml")
    with pytest.raises(EdgeCompressError, match=r"smoke test failed: the device agrees .* on \d+\.\d% of 30 images, "
                                                r"below deploy.min_agreement 99.0%") as e:
        _library_deploy(profile, builds["swapped"], a / "testset.npz", repo)
    assert "/dev1:" in str(e.value)
    for dev in ("dev1", "dev2"):
        assert _current(repo / dev) == _sha(a)
    events = read_ledger(repo / "deploy" / "edge.json", "edge").events
    assert [e.outcome for e in events[-2:]] == ["failed", "not tried"]  # dev2 was never tried
    assert events[-2].smoke["agreement"] < 0.99 and "rollout stopped" in events[-1].detail  # type: ignore


def _library_deploy(profile: Any, build: Path, images: Path, repo: Path) -> list[rollout.Outcome]:
    stage = repo / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    release = prepare_release(profile, build, images, stage, profile.deploy.smoke_images)
    return rollout.deploy(profile, release, repo / "deploy" / "edge.json")


def test_an_unreachable_device_is_skipped(sshd: Server, tmp_path: Path, builds: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dead = sshd.url.rsplit(":", 1)[0] + f":{_free_port()}"  # nothing listens there
    _profile(sshd, tmp_path, [tmp_path / "dev1", tmp_path / "dev2"], urls=[sshd.url, dead])
    out = _library_deploy(load_target(tmp_path / "targets" / "edge.yaml"), builds["a"],
                          builds["a"] / "testset.npz", tmp_path)
    assert [o.outcome for o in out] == ["switched", "unreachable"] and "cannot reach" in out[1].detail  # type: ignore
    assert _current(tmp_path / "dev1") == _sha(builds["a"]) and not (tmp_path / "dev2").exists()
    ledger = read_ledger(tmp_path / "deploy" / "edge.json", "edge")
    assert [(e.device.split("/")[-1], e.outcome) for e in ledger.events] == [("dev1", "switched"),
                                                                             ("dev2", "unreachable")]
    assert list(ledger.devices) == [out[0].device.id]  # only what a device was seen to run


def test_dry_run_touches_nothing(repo: Path, builds: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _deploy(builds["a"], builds["a"] / "testset.npz", "--dry-run")
    out = capsys.readouterr().out
    assert out.count("would copy") == 2 and "(canary)" in out and "switch current from none" in out
    assert not (repo / "dev1").exists() and not (repo / "dev2").exists() and not (repo / "deploy").exists()


def test_an_install_dir_that_cannot_be_written(sshd: Server, tmp_path: Path, builds: dict[str, Path]) -> None:
    (tmp_path / "a-file").write_text("")
    _profile(sshd, tmp_path, [tmp_path / "a-file" / "dev1"])
    with pytest.raises(EdgeCompressError, match=r"deploy.devices\[0\].dir in .*edge.yaml.*cannot write the install "
                                                r"directory .*a-file/dev1"):
        _library_deploy(load_target(tmp_path / "targets" / "edge.yaml"), builds["a"], builds["a"] / "testset.npz",
                        tmp_path)


@pytest.mark.slow  # two or three rollouts over ssh, ~2.5 s each on a loaded 2-core machine
def test_rollback_without_a_previous_release(repo: Path, builds: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _deploy(builds["a"], builds["a"] / "testset.npz")
    with pytest.raises(SystemExit):
        cli(["rollback", "--target", "edge"])
    assert "has no previous release to roll back to" in capsys.readouterr().err
    assert _current(repo / "dev1") == _sha(builds["a"])
