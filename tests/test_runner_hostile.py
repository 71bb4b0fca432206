"""Hostile and careless cascades for the runner and the SSH device (issue #26, part B).

An artifact folder must not supply the file that runs on the device (item 4), a cascade segment must not
reach outside its folder (item 6), a bad manifest or pool index is one line naming it, and a device without
an SFTP server still gets the files (scp -O). SSH cases run against a real local sshd, as tests/test_remote.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import tiny_export_dir
from edgecompress.deploy import remote, runner
from edgecompress.deploy.check import check_target
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.targets import ArtifactSpec, BenchSpec, Budgets, Hardware, RuntimeSpec, TargetProfile
from edgecompress.errors import EdgeCompressError
from test_records import CASCADE, INDEX_JSON, build_record_json
from test_remote import SSHD, Server, serve_sshd, sshd  # noqa: F401  (sshd: the shared fixture)

MANIFEST = "fp32.onnx.cascade.json"
HAVE_SSH = Path(SSHD).is_file() and all(shutil.which(t) for t in ("ssh", "scp", "ssh-keygen"))
needs_ssh = pytest.mark.skipif(not HAVE_SSH, reason="needs OpenSSH (apt-get install openssh-server openssh-client)")


def _cascade(d: Path, segments: list[Any] | None = None) -> Path:
    """A one-segment cascade in ``d`` (the tiny Gemm model as segment0.fp32.onnx) and its testset.npz;
    ``segments``: the manifest's segment file entries instead of the real one."""
    d.mkdir(parents=True, exist_ok=True)
    tiny_export_dir(d, seed=3)
    (d / "fp32.onnx").rename(d / "segment0.fp32.onnx")
    sidecar = json.loads((d / "fp32.onnx.json").read_text())
    (d / "fp32.onnx.json").unlink()
    files = ["segment0.fp32.onnx"] if segments is None else segments
    (d / MANIFEST).write_text(json.dumps({**sidecar, "kind": "cascade", "thresholds": [None] * (len(files) - 1),
                                          "segments": [{"file": f} for f in files]}))
    return d / MANIFEST


def _profile(device: DeviceSpec | str = "local") -> TargetProfile:
    return TargetProfile(name="cascade-target", description="", hardware=Hardware(),
                         artifact=ArtifactSpec("onnx", "fp32", cascade=True),
                         runtime=RuntimeSpec("onnxruntime", threads=1),
                         budgets=Budgets(latency_ms={"mean": 1000.0}, min_accuracy=0.0), device=device,
                         bench=BenchSpec(warmup=0, runs=3, batch=1, max_seconds=5, accuracy_samples=10))


def _hostile_runner(path: Path, marker: Path) -> None:
    """A runner.py that touches ``marker`` when run and then claims a perfect measurement."""
    path.write_text(f"open({str(marker)!r}, 'w').write('pwned')\n"
                    "print('{\"runner_version\": 4, \"latency_ms\": {\"mean\": 0.001}, \"accuracy\": 1.0}')\n")


def _secret(d: Path) -> Path:
    """A private-key-like file outside the artifact folder (an ONNX model, so loading it would succeed)."""
    d.mkdir(parents=True, exist_ok=True)
    tiny_export_dir(d, seed=4)
    (d / "fp32.onnx").rename(d / "id_ed25519")
    return d / "id_ed25519"


@pytest.fixture
def scp_spy(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every local file any scp was asked to copy (staged links resolved), however the copy went."""
    copied: list[Path] = []
    real = subprocess.run

    def spy(argv: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(argv, list) and argv and argv[0] == "scp":
            copied.extend(Path(a).resolve() for a in argv[1:] if os.path.exists(a))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    return copied


# --- item 4: the artifact folder cannot supply the runner -------------------------------------------


def test_a_segment_named_runner_py_is_staged_under_our_name(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    manifest = _cascade(tmp_path / "art", ["runner.py"])
    _hostile_runner(tmp_path / "art" / "runner.py", marker)
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = {p.name: p for p in remote._stage(stage, _profile(), manifest, None, None,
                                               [tmp_path / "art" / "runner.py"])}
    assert sorted(staged) == [MANIFEST, "runner.py", "segment0.fp32.onnx"]
    assert staged["runner.py"].resolve() == Path(runner.__file__).resolve()  # ours, not the folder's
    assert staged["segment0.fp32.onnx"].resolve() == (tmp_path / "art" / "runner.py").resolve()
    # The device reads a manifest rewritten to the names we chose.
    assert json.loads(staged[MANIFEST].read_text())["segments"] == [{"file": "segment0.fp32.onnx"}]
    # Only what the manifest names may be copied beside it.
    with pytest.raises(EdgeCompressError, match=r"asked to copy .*not the segments it names"):
        remote._stage(stage, _profile(), manifest, None, None, [tmp_path / "art" / "testset.npz"])


def test_a_runner_py_in_the_artifact_folder_never_runs_locally(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _cascade(tmp_path / "art", ["runner.py"])
    _hostile_runner(tmp_path / "art" / "runner.py", marker)
    with pytest.raises(EdgeCompressError, match=r"runner failed on .*onnxruntime cannot load .*runner\.py"):
        check_target(_profile(), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert not marker.exists()


@needs_ssh
def test_a_runner_py_in_the_artifact_folder_never_runs_on_the_device(sshd: Server, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    _cascade(tmp_path / "art", ["runner.py"])
    _hostile_runner(tmp_path / "art" / "runner.py", marker)
    work = tmp_path / "remote"
    with pytest.raises(EdgeCompressError, match=rf"device {re.escape(sshd.url)}: the runner failed on the device: "
                                                r"onnxruntime cannot load segment0\.fp32\.onnx"):
        check_target(_profile(sshd.device(work)), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert not marker.exists() and not any(work.iterdir())


@needs_ssh
def test_the_device_checks_the_runner_hash_before_running_it(sshd: Server, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner.py altered after staging (on the way, or on the device) is refused there, never run."""
    marker = tmp_path / "marker"
    _cascade(tmp_path / "art")
    staging = remote._stage

    def tampered(tmp: Path, *args: Any) -> list[Path]:
        files = staging(tmp, *args)
        (tmp / "runner.py").unlink()  # a link to our runner: replace the link, never its target
        _hostile_runner(tmp / "runner.py", marker)
        return files

    monkeypatch.setattr(remote, "_stage", tampered)
    work = tmp_path / "remote"
    with pytest.raises(EdgeCompressError, match=r"runner\.py on the device has sha256 [0-9a-f]{16}\.\.\., not that "
                                                r"of the copy sent \([0-9a-f]{16}\.\.\.\); it was not run"):
        check_target(_profile(sshd.device(work)), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert not marker.exists() and not any(work.iterdir())


@needs_ssh
def test_a_good_cascade_still_passes_on_the_device(sshd: Server, tmp_path: Path) -> None:
    _cascade(tmp_path / "art")
    res = check_target(_profile(sshd.device(tmp_path / "remote")), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert res.status == "pass" and res.latency_ms["n"] == 3 and res.accuracy_samples == 10
    assert res.artifact.path.endswith(MANIFEST) and res.remote["cleaned_up"]


# --- item 6: segments stay inside the artifact's folder ----------------------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_segment_outside_the_folder_is_never_loaded(tmp_path: Path, how: str) -> None:
    secret = _secret(tmp_path / "secret")
    name = {"dotdot": "../secret/id_ed25519", "absolute": str(secret), "symlink": "segment0.fp32.onnx"}[how]
    manifest = _cascade(tmp_path / "art", [name])
    if how == "symlink":
        (tmp_path / "art" / "segment0.fp32.onnx").unlink()
        (tmp_path / "art" / "segment0.fp32.onnx").symlink_to(secret)
    with pytest.raises(runner.RunnerError, match=rf"cascade manifest {re.escape(str(manifest))}: segment 0: file "
                                                 rf"'{re.escape(name)}' lies outside the cascade's folder"):
        runner.run(manifest, data=tmp_path / "art" / "testset.npz", runs=2, warmup=0)
    # The standalone runner's own exit: one JSON error, exit 2, no traceback.
    proc = subprocess.run([sys.executable, runner.__file__, "--model", str(manifest), "--runs", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lies outside the cascade's folder" in json.loads(proc.stdout)["error"]
    with pytest.raises(EdgeCompressError, match=r"segment 0: file .* lies outside the cascade's folder"):
        check_target(_profile(), tmp_path / "art", tmp_path / "art" / "testset.npz")
    # The library's own segment runner (export verification, pool scoring) reads manifests the same way.
    from edgecompress.compression.cascade import run_segments

    with pytest.raises(EdgeCompressError, match=r"segment 0: file .* lies outside the cascade's folder"):
        run_segments(manifest, np.zeros((1, 1, 4, 4), np.float32))


@needs_ssh
def test_a_segment_outside_the_folder_is_never_copied(sshd: Server, tmp_path: Path, scp_spy: list[Path]) -> None:
    secret = _secret(tmp_path / "secret")
    manifest = _cascade(tmp_path / "art", ["../secret/id_ed25519"])
    work = tmp_path / "remote"
    with pytest.raises(EdgeCompressError) as info:
        check_target(_profile(sshd.device(work)), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert secret.resolve() not in scp_spy  # never sent to the device
    assert re.search(r"segment 0: file '\.\./secret/id_ed25519' lies outside", str(info.value))
    # The remote layer refuses on its own too, whoever calls it with the segment.
    with pytest.raises(EdgeCompressError, match=r"segment 0: file '\.\./secret/id_ed25519' lies outside"):
        remote.run_remote(_profile(sshd.device(work)), sshd.device(work), manifest, None, None,
                          ["--model", MANIFEST], [secret])
    assert secret.resolve() not in scp_spy
    assert not work.exists() or not any(work.iterdir())


# --- crashes: one line naming the input, exit 1, no traceback -----------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgecompress: error: ")]
    assert len(lines) == 1 and "\n" not in lines[0]
    return lines[0]


def _check_cli(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    target = tmp_path / "t.yaml"
    target.write_text("artifact: {format: onnx, precision: fp32}\nruntime: {engine: onnxruntime, threads: 1}\n"
                      "bench: {warmup: 0, runs: 2, batch: 1, max_seconds: 5}\nbudgets: {latency_ms: {mean: 1000}}\n")
    # A build record pins the cascade, as a build that chose it writes.
    (tmp_path / "art" / "build.json").write_text(json.dumps(build_record_json("t", "m/fp32.onnx", MANIFEST)))
    return _cli("check", "--target", str(target), "--artifacts", str(tmp_path / "art"),
                "--testset", str(tmp_path / "art" / "testset.npz"), "--out-json", str(tmp_path / "o.json"),
                "--out-md", str(tmp_path / "o.md"), cwd=tmp_path)


@pytest.mark.parametrize("manifest, match", [
    ("5", r"cascade manifest .*fp32\.onnx\.cascade\.json is a JSON int, not an object; re-export the cascade"),
    ("[]", r"cascade manifest .*fp32\.onnx\.cascade\.json is a JSON list, not an object"),
    (None, r"cascade manifest .*fp32\.onnx\.cascade\.json: segment 0: file 5 must be a file name \(a string\); "
           r"re-export the cascade"),
    ("../../outside.onnx", r"segment 0: file '\.\./\.\./outside\.onnx' lies outside the cascade's folder .*"
                           r"re-export the cascade"),
])
def test_a_broken_cascade_manifest_is_one_line(tmp_path: Path, manifest: str | None, match: str) -> None:
    path = _cascade(tmp_path / "art", [5 if manifest is None else "segment0.fp32.onnx"])
    if manifest is not None and manifest.endswith(".onnx"):
        path.write_text(path.read_text().replace("segment0.fp32.onnx", manifest))
    elif manifest is not None:
        path.write_text(manifest)
    assert re.search(match, _one_line_error(_check_cli(tmp_path)))


@pytest.mark.parametrize("segment, match", [
    ("../../secret.onnx", r"index\.json: candidate 'm/fp32\.onnx' segment 0: file '\.\./\.\./secret\.onnx' lies "
                          r"outside the cascade's folder"),
    (7, r"index\.json: candidate 'm/fp32\.onnx' segment 0: file 7 must be a file name"),
])
def test_a_pool_index_segment_outside_its_folder_is_one_line(tmp_path: Path, segment: Any, match: str) -> None:
    pool = tmp_path / "pool"
    (pool / "m").mkdir(parents=True)
    _secret(tmp_path)
    (tmp_path / "id_ed25519").rename(tmp_path / "secret.onnx")
    (pool / "m" / MANIFEST).write_text("{}")
    (pool / "index.json").write_text(json.dumps({**INDEX_JSON, "candidates": [{
        **CASCADE, "name": "m/fp32.onnx", "model": "m", "path": f"m/{MANIFEST}", "segments": [segment],
        "size_bytes": 1, "accuracy": 0.9}]}))
    target = tmp_path / "t.yaml"
    target.write_text("build: {models: all, precisions: [fp32], engines: [onnxruntime]}\n"
                      "runtime: {threads: 1}\nbench: {warmup: 0, runs: 2, max_seconds: 5}\n"
                      "budgets: {latency_ms: {mean: 1000}}\n")
    line = _one_line_error(_cli("build", "--target", str(target), "--candidates", str(pool), "--out",
                                str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                                "--out-md", str(tmp_path / "b.md"), cwd=tmp_path))
    assert re.search(match, line) and "re-run the candidates stage" in line
    assert not (tmp_path / "out").exists()


# --- a device without an SFTP server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd_without_sftp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An sshd with no SFTP subsystem (many small boards: dropbear, minimal images)."""
    with serve_sshd(tmp_path_factory.mktemp("sshd-nosftp"), sftp=False) as server:
        yield server


@needs_ssh
def test_a_device_without_sftp_gets_the_files_by_scp_legacy(sshd_without_sftp: Server, tmp_path: Path) -> None:
    # The premise: plain scp fails there with nothing but "Connection closed".
    probe = tmp_path / "probe.txt"
    probe.write_text("x")
    dev = sshd_without_sftp.device(tmp_path / "remote")
    plain = subprocess.run(["scp", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={dev.known_hosts}",
                            "-o", "StrictHostKeyChecking=accept-new", "-i", str(dev.key_file), "-P", str(dev.port),
                            str(probe), f"{dev.user}@{dev.host}:{tmp_path}/copied.txt"],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "Connection closed" in plain.stderr
    _cascade(tmp_path / "art")
    res = check_target(_profile(dev), tmp_path / "art", tmp_path / "art" / "testset.npz")
    assert res.status == "pass" and res.remote["cleaned_up"]
    assert any("copied with scp -O (legacy protocol)" in w and "has no SFTP server" in w for w in res.warnings)
