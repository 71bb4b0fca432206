"""Checks on an SSH device, against a real OpenSSH server on 127.0.0.1 (no mocks).

The session fixture starts Debian's sshd as a non-daemon child with throwaway host and client
keys; the "device" is this machine, so its python is this venv's interpreter.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import tiny_export_dir
from edgecompress.deploy.check import check_target
from edgecompress.verdict import check_and_report as main_check
from edgecompress.errors import EdgeCompressError
from edgecompress.deploy.devices import DeviceSpec, resolve_device
from edgecompress.deploy.targets import (ArtifactSpec, BenchSpec, Budgets, Hardware, RuntimeSpec, TargetProfile,
                                         load_target)

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (Path(SSHD).is_file() and shutil.which("ssh") and shutil.which("scp")
                                     and shutil.which("ssh-keygen")),
                                reason="needs OpenSSH (apt-get install openssh-server openssh-client)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgecompress-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


class Server:
    """A running sshd: where it listens and the keys/files a DeviceSpec needs."""

    def __init__(self, root: Path, port: int, key: Path, other_key: Path, known_hosts: Path) -> None:
        self.root, self.port, self.key, self.other_key, self.known_hosts = root, port, key, other_key, known_hosts
        self.url = f"ssh://{getpass.getuser()}@127.0.0.1:{port}"

    def device(self, work_dir: Path, **kw: Any) -> DeviceSpec:
        args: dict[str, Any] = {"url": self.url, "key_file": str(self.key), "known_hosts": str(self.known_hosts),
                                "python": sys.executable, "work_dir": str(work_dir), "timeout": 30,
                                "connect_timeout": 5}
        return DeviceSpec(**{**args, **kw})


@contextlib.contextmanager
def serve_sshd(root: Path, sftp: bool = True) -> Iterator[Server]:
    """A real sshd on a free loopback port in ``root`` (keys, config, log), up until the block ends.

    ``sftp=False`` leaves out the SFTP subsystem, as on many small boards (dropbear, minimal images)."""
    host_key, key, other = _keygen(root / "host_key"), _keygen(root / "id_test"), _keygen(root / "id_other")
    (root / "authorized_keys").write_text((root / "id_test.pub").read_text())  # not id_other
    port = _free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "StrictModes no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
        "PermitRootLogin prohibit-password", f"AllowUsers {getpass.getuser()}",
        *(["Subsystem sftp internal-sftp"] if sftp else []),  # scp uses SFTP by default since OpenSSH 9
        "LogLevel VERBOSE", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation dir, missing without systemd
    with open(root / "sshd.log", "w") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:  # poll until it listens (a start takes tens of ms; give up after 10 s)
                if proc.poll() is not None:
                    pytest.fail(f"sshd exited with {proc.returncode}: {(root / 'sshd.log').read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"sshd did not listen on port {port}: {(root / 'sshd.log').read_text()}")
                    time.sleep(0.05)
            yield Server(root, port, key, other, root / "known_hosts")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """fp32.onnx (Flatten + Gemm, 1x4x4 -> 3) with its sidecar, and a 40-image testset.npz."""
    return tiny_export_dir(tmp_path_factory.mktemp("export"), seed=3, n_acc=25)  # accuracy on the first 25


def _profile(device: DeviceSpec | str = "local", accuracy_samples: int | None = 25) -> TargetProfile:
    return TargetProfile(name="pi-over-ssh", description="", hardware=Hardware(),
                         artifact=ArtifactSpec("onnx", "fp32"), runtime=RuntimeSpec("onnxruntime", threads=1),
                         budgets=Budgets(latency_ms={"p50": 1000.0}, size_mb=1.0, min_accuracy=0.0),
                         device=device, bench=BenchSpec(warmup=1, runs=8, max_seconds=5,
                                                        accuracy_samples=accuracy_samples))


def test_full_check_over_ssh(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    d, testset, acc = artifacts
    work = tmp_path / "remote"
    res = check_target(_profile(sshd.device(work)), d, testset)
    assert res.status == "pass" and res.device == sshd.url and res.device.startswith("ssh://")
    assert {"p50", "p90", "p99", "mean"} <= set(res.latency_ms) and res.latency_ms["n"] == 8
    # Only the 25 images of the seeded, class-stratified subset were copied and scored: the ones a local
    # check of the same profile scores.
    local = check_target(_profile("local"), d, testset)
    assert res.accuracy_samples == 25 and res.accuracy == pytest.approx(local.accuracy)
    assert res.fingerprint["hostname"] == socket.gethostname() and res.hardware_match is True
    assert res.artifact.path == str(d / "fp32.onnx")
    run_dir = res.remote["run_dir"]
    assert run_dir.startswith(f"{work}/run.") and not Path(run_dir).exists() and res.remote["cleaned_up"]
    assert work.is_dir() and not any(work.iterdir())  # the per-run dir is gone, nothing else left


def test_main_check_device_override(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    """The CLI's path: a local profile, the device given as overrides (url + key + python)."""
    d, testset, _ = artifacts
    target = tmp_path / "pi.yaml"
    target.write_text("artifact: {format: onnx, precision: fp32}\nruntime: {engine: onnxruntime}\n"
                      "bench: {warmup: 0, runs: 3, max_seconds: 5}\nbudgets: {size_mb: 1.0}\n"
                      f"device: {{url: local, known_hosts: {sshd.known_hosts}, work_dir: {tmp_path / 'w'}}}\n")
    out_json, out_md = tmp_path / "pi.json", tmp_path / "pi.md"
    main_check(target, d, testset, out_json, out_md, strict=True,
               device={"url": sshd.url, "key_file": str(sshd.key), "python": sys.executable})
    saved = json.loads(out_json.read_text())
    assert saved["device"] == sshd.url and saved["status"] == "pass" and saved["accuracy_samples"] == 40
    assert f"device: {sshd.url}" in out_md.read_text()


def test_unreachable_port(artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    port = _free_port()  # nothing listens there
    dev = DeviceSpec(url=f"ssh://{getpass.getuser()}@127.0.0.1:{port}", known_hosts=str(tmp_path / "kh"),
                     timeout=10, connect_timeout=3)
    t0 = time.monotonic()
    with pytest.raises(EdgeCompressError, match=rf"cannot reach 127\.0\.0\.1 port {port} \(.*Connection refused"):
        check_target(_profile(dev), d, testset)
    assert time.monotonic() - t0 < dev.timeout + 5  # a bound on the error path, not a speed test


def test_refused_key(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    dev = sshd.device(tmp_path / "remote", key_file=str(sshd.other_key))
    with pytest.raises(EdgeCompressError) as info:
        check_target(_profile(dev), d, testset)
    msg = str(info.value)
    assert "Permission denied" in msg and str(sshd.other_key) in msg and "ssh-copy-id" in msg
    assert msg.startswith(f"device {sshd.url}:")


def test_missing_remote_python(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    work = tmp_path / "remote"
    dev = sshd.device(work, python="/nonexistent/bin/python3")
    with pytest.raises(EdgeCompressError, match=r"remote python '/nonexistent/bin/python3' was not found.*"
                                                r"set device\.python"):
        check_target(_profile(dev), d, testset)
    assert not any(work.iterdir())  # cleaned up on the error path too


@pytest.mark.skipif(not Path("/usr/bin/python3").is_file()
                    or subprocess.run(["/usr/bin/python3", "-c", "import numpy"], capture_output=True).returncode == 0,
                    reason="needs a system python3 without numpy")
def test_remote_python_without_numpy(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    with pytest.raises(EdgeCompressError, match=r"numpy is missing for /usr/bin/python3 on the device; "
                                                r"run /usr/bin/python3 -m pip install numpy"):
        check_target(_profile(sshd.device(tmp_path / "remote", python="/usr/bin/python3")), d, testset)


def _python_with_numpy_only() -> str | None:
    """An interpreter that has numpy but not onnxruntime (a device without the runtime), if any."""
    for name in (os.path.join(sys.base_prefix, "bin", "python3"), "/usr/local/bin/python3", "/usr/bin/python3"):
        if Path(name).is_file() and subprocess.run(
                [name, "-c", "import numpy, importlib.util as u; exit(u.find_spec('onnxruntime') is not None)"],
                capture_output=True).returncode == 0:
            return name
    return None


@pytest.mark.skipif(_python_with_numpy_only() is None, reason="needs a python3 with numpy but without onnxruntime")
def test_remote_runtime_missing(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    py = _python_with_numpy_only()
    with pytest.raises(EdgeCompressError, match=rf"onnxruntime is not installed .* for {py} on the device; "
                                                rf"run {py} -m pip install onnxruntime there"):
        check_target(_profile(sshd.device(tmp_path / "remote", python=py)), d, testset)


def test_missing_key_file(artifacts: Any, tmp_path: Path) -> None:
    d, testset, _ = artifacts
    dev = DeviceSpec(url="ssh://pi@127.0.0.1", key_file=str(tmp_path / "nokey"))
    with pytest.raises(EdgeCompressError, match=r"key file .*nokey does not exist; fix device\.key_file"):
        check_target(_profile(dev), d, testset)


# --- schema of the mapping form (no server needed) -----------------------------------------------

BASE = ("artifact: {format: onnx, precision: int8}\nruntime: {engine: onnxruntime}\n"
        "budgets: {size_mb: 1.0}\n")


def test_device_mapping_accepted(tmp_path: Path) -> None:
    path = tmp_path / "pi.yaml"
    path.write_text(BASE + "device:\n  url: ssh://pi@10.0.0.7:2222\n  key_file: ~/.ssh/id_ed25519\n"
                           "  python: /home/pi/venv/bin/python\n  work_dir: /tmp/ec\n  timeout: 90\n"
                           "  connect_timeout: 4\n")
    p = load_target(path)
    dev = p.device
    assert not p.is_local and (dev.user, dev.host, dev.port) == ("pi", "10.0.0.7", 2222)
    assert (dev.key_file, dev.python, dev.work_dir, dev.timeout, dev.connect_timeout) == \
        ("~/.ssh/id_ed25519", "/home/pi/venv/bin/python", "/tmp/ec", 90, 4)
    assert str(dev) == "ssh://pi@10.0.0.7:2222" and p.source == str(path)
    # The string form still works and means the defaults.
    path.write_text(BASE + "device: ssh://pi@raspberrypi.local\n")
    dev = load_target(path).device
    assert dev.port is None and dev.python == "python3" and dev.timeout == 120


@pytest.mark.parametrize("device, match", [
    ("{url: 'ssh://pi@-oProxyCommand=x'}", r"field device\.url: .* is not 'local' or 'ssh://user@host\[:port\]'"),
    ("{url: 'pi@10.0.0.7'}", r"field device\.url: 'pi@10\.0\.0\.7' is not 'local'"),
    ("{url: 'ssh://pi@h:99999'}", r"field device\.url: .*port 99999 must be between 1 and 65535"),
    ("{url: 'ssh://pi@h', timeout: 0}", r"field device\.timeout: 0 must be > 0"),
    ("{url: 'ssh://pi@h', timeout: -5}", r"field device\.timeout: -5 must be > 0"),
    ("{url: 'ssh://pi@h', timeout: 30}", r"field device\.timeout: 30 must be larger than bench\.max_seconds \(60\)"),
    ("{url: 'ssh://pi@h', connect_timeout: 0}", r"field device\.connect_timeout: 0 must be >= 1"),
    ("{url: 'ssh://pi@h', host: h}", r"field device\.host: unknown key; allowed keys: url, key_file"),
    ("{url: 'ssh://pi@h', work_dir: 'tmp/ec'}", r"field device\.work_dir: 'tmp/ec' must be an absolute path"),
    ("{url: 'ssh://pi@h', work_dir: '/tmp/a b'}", r"field device\.work_dir: '/tmp/a b' must be an absolute path"),
    ("{url: 'ssh://pi@h', python: 'python3 -u'}", r"field device\.python: 'python3 -u' must be one interpreter"),
    ("{timeout: 60}", r"field device\.url: is required in the mapping form"),
    ("[ssh://pi@h]", r"field device: \['ssh://pi@h'\] must be 'local', 'ssh://user@host\[:port\]' or a mapping"),
])
def test_device_mapping_rejected(tmp_path: Path, device: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + f"device: {device}\n")
    with pytest.raises(EdgeCompressError, match=match) as info:
        load_target(path)
    assert str(info.value).startswith(f"{path}: ")


def test_resolve_device_overrides() -> None:
    base = DeviceSpec(url="ssh://pi@h", key_file="/k", timeout=300)
    assert resolve_device(base, None) is base
    dev = resolve_device(base, "ssh://root@other:2200")
    assert (dev.url, dev.key_file, dev.timeout) == ("ssh://root@other:2200", "/k", 300)  # only the url changes
    assert resolve_device(DeviceSpec(), {"url": "ssh://pi@h", "python": "python3.11"}).python == "python3.11"
    with pytest.raises(EdgeCompressError, match=r"device override: field url: 'pi\.local' is not 'local'"):
        resolve_device(base, "pi.local")
    with pytest.raises(EdgeCompressError, match=r"key_file applies only to an ssh device; also give --device"):
        resolve_device(DeviceSpec(), {"key_file": "/k"})


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
def test_remote_timeout_kills_and_cleans_up(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    """A run longer than device.timeout: clear error within the bound, runner stopped, dir removed."""
    d, testset, _ = artifacts
    work = tmp_path / "remote"
    # 3 s of timed runs plus ssh/scp set-up cannot fit in 3.5 s.
    prof = replace(_profile(), device=sshd.device(work, timeout=3.5),
                   bench=BenchSpec(warmup=0, runs=10**9, max_seconds=3))
    t0 = time.monotonic()
    with pytest.raises(EdgeCompressError, match=rf"device {sshd.url}: the remote run did not finish within 3\.5 s; "
                                                r"raise device\.timeout in the target profile pi-over-ssh"):
        check_target(prof, d, testset)
    assert time.monotonic() - t0 < 3.5 + 10
    assert not any(work.iterdir())
    # The remote runner's command line names only relative files; SIGTERM takes a moment to land.
    for _ in range(20):
        busy = subprocess.run(["pgrep", "-f", "runner.py --model fp32.onnx"],
                              capture_output=True, text=True).stdout.split()
        if not busy:
            break
        time.sleep(0.1)
    assert not busy, f"the remote runner was left running: {busy}"


def test_select_scores_the_pool_on_the_device(sshd: Server, artifacts: Any, tmp_path: Path) -> None:
    """`edgecompress select --artifact --device ssh://`: the runner scores every pool image there."""
    import csv

    import numpy as np

    from edgecompress.active.device import select_on_device

    d, testset, _ = artifacts
    x = np.load(testset)["x"]
    np.savez(tmp_path / "pool.npz", x=x)
    out = tmp_path / "to_label.csv"
    summary = select_on_device(tmp_path / "pool.npz", d / "fp32.onnx", _profile(accuracy_samples=5),
                               sshd.device(tmp_path / "remote"), "entropy", 6, out, tmp_path / "sheet.png")
    assert summary["pool_size"] == 40 and summary["device"] == sshd.url  # all 40, not the profile's 5
    rows = list(csv.DictReader(out.open()))
    scores = [float(r["score"]) for r in rows]
    assert len(rows) == 6 and scores == sorted(scores, reverse=True) and (tmp_path / "sheet.png").is_file()
    with pytest.raises(EdgeCompressError, match=r"bald on a device needs an artifact with per-head outputs"):
        select_on_device(tmp_path / "pool.npz", d / "fp32.onnx", _profile(), DeviceSpec(url="local"), "bald", 3, out)
    with pytest.raises(EdgeCompressError, match=r"strategy 'kcenter' needs the model on this machine"):
        select_on_device(tmp_path / "pool.npz", d / "fp32.onnx", _profile(), DeviceSpec(url="local"), "kcenter", 3, out)
