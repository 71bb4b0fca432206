"""Run the standalone runner on an SSH device: copy it and the artifact over, run, parse, clean up.

Only the system ``ssh`` and ``scp`` binaries are used, always with argument lists (no local shell).
ssh joins the remote command into one string for the remote user's shell, so every word of it is
quoted with ``shlex.quote``. The device needs python3 with numpy and the runtime, nothing else.

Every name on the device is ours: an artifact folder cannot supply a file that lands on the runner's
(or the test set's) name, and the device's python checks the runner's sha256 before it runs it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecompress.artifacts import CASCADE_SUFFIX
from edgecompress.data import load_npz_split
from edgecompress.errors import EdgeCompressError
from edgecompress.deploy.bench import RUNNER, parse_runner_output
from edgecompress.deploy.devices import DeviceSpec
from edgecompress.deploy.runner import (ENGINE_FOR_SUFFIX, RunnerError, is_cascade, read_cascade, segment_path,
                                        stratified_subset)
from edgecompress.deploy.targets import TargetProfile
from edgecompress.fileio import write_json

# ssh's own failures (exit 255) that mean "the host or port cannot be reached".
UNREACHABLE = ("Connection refused", "timed out", "No route to host", "Could not resolve hostname",
                "Network is unreachable", "Connection reset", "Connection closed by remote host")
_RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert (tflite-runtime on older boards)"}
_CLEANUP_TIMEOUT = 15.0  # seconds; cleanup runs even after the run's deadline has passed
# What scp (SFTP mode, OpenSSH >= 9's default) prints when the device runs no SFTP server.
_NO_SFTP = re.compile(r"^scp: Connection closed\s*$", re.MULTILINE)
# Run by the device's python: read runner.py once, compare its sha256 with argv[1], run those same bytes
# as __main__ with the rest of argv (a file swapped in after the check cannot run).
_VERIFY_AND_RUN = (
    "import hashlib, json, sys\n"
    "src = open('runner.py', 'rb').read()\n"
    "got = hashlib.sha256(src).hexdigest()\n"
    "if got != sys.argv[1]:\n"
    "    print(json.dumps({'error': 'runner.py on the device has sha256 ' + got[:16] + '..., not that of the copy '\n"
    "                      'sent (' + sys.argv[1][:16] + '...); it was not run. Check who else writes to the '\n"
    "                      'device work_dir'}))\n"
    "    sys.exit(2)\n"
    "sys.argv = sys.argv[2:]\n"
    "exec(compile(src, 'runner.py', 'exec'), {'__name__': '__main__', '__file__': 'runner.py'})\n")


class Session:
    """ssh/scp argument lists and a deadline for one remote run on ``device``."""

    def __init__(self, profile: TargetProfile, device: DeviceSpec) -> None:
        self.profile, self.device = profile, device
        self.deadline = time.monotonic() + device.timeout
        self.timed_out = False  # set once a step ran out of time: cleanup then stops the runner
        self.dest = f"{device.user}@{device.host}"
        self.key = str(Path(device.key_file).expanduser()) if device.key_file else None
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={device.connect_timeout}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        if device.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={Path(device.known_hosts).expanduser()}"]
        if self.key:
            # Only the named key: an agent's or ~/.ssh's keys must not make a wrong key_file "work".
            opts += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        self.ssh_opts = opts + (["-p", str(device.port)] if device.port else [])
        self.scp_opts = ["-q", *opts] + (["-P", str(device.port)] if device.port else [])

    def fail(self, what: str) -> EdgeCompressError:
        return EdgeCompressError(f"device {self.device.url}: {what}")

    def setting(self, field: str) -> str:
        """Where the user sets ``field``: the by-hand flag when it overrode the profile, else the profile."""
        flags = {"url": "--device", "key_file": "--key-file", "python": "--remote-python"}
        if field in flags and getattr(self.device, field) != getattr(self.profile.device, field):
            return flags[field]
        return f"device.{field} in {self.profile.where}"

    def run(self, argv: list[str], step: str, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` within the remaining time; ssh's own failures (exit 255) become clear errors
        (``check`` False: the caller reads the exit code and stderr itself)."""
        left = self.deadline - time.monotonic() if timeout is None else timeout
        if left <= 0:
            raise self._timeout()
        try:
            # stdin from /dev/null: ssh must not read the stdin of dvc or of an interactive shell.
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child already
            raise self._timeout() from None
        except FileNotFoundError:
            raise self.fail(f"{argv[0]} is not installed on this machine; install openssh-client "
                            f"(apt-get install openssh-client)") from None
        if check and (proc.returncode == 255 or (argv[0] == "scp" and proc.returncode != 0)):
            self._connection_error(proc.stderr, step)
        return proc

    def ssh(self, script: str, step: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``script`` (already quoted) in the remote user's shell."""
        return self.run(["ssh", *self.ssh_opts, "--", self.dest, script], step, timeout)

    def _timeout(self) -> EdgeCompressError:
        self.timed_out = True
        return self.fail(f"the remote run did not finish within {self.device.timeout:g} s; raise device.timeout "
                         f"in {self.profile.where} or check the board (load, throttling, network)")

    def _connection_error(self, stderr: str, step: str) -> None:
        d, msg = self.device, last_lines(stderr)
        where = f"{d.host} port {d.port or 22}"
        if any(s in stderr for s in UNREACHABLE):
            raise self.fail(f"cannot reach {where} ({msg}); check that the board is on and on the network, that "
                            f"sshd runs there, and the host/port of {self.setting('url')}")
        if "UNPROTECTED PRIVATE KEY" in stderr or "bad permissions" in stderr:
            raise self.fail(f"ssh ignores key file {self.key} because others can read it; run chmod 600 {self.key}")
        if "Permission denied" in stderr:
            key = f"key file {self.key}" if self.key else "your default ssh keys (no device.key_file set)"
            port = f"-p {d.port} " if d.port else ""
            ident = f"-i {self.key}.pub " if self.key else ""
            raise self.fail(f"{self.dest} refused {key} (Permission denied); authorize it once with "
                            f"ssh-copy-id {ident}{port}{self.dest}, or set {self.setting('key_file')}")
        if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
            kh = f" -f {d.known_hosts}" if d.known_hosts else ""
            # known_hosts keys a non-default port as [host]:port; -R needs that exact spelling.
            entry = d.host if d.port in (None, 22) else shlex.quote(f"[{d.host}]:{d.port}")
            raise self.fail(f"the host key of {d.host} does not match the known one; if the board was re-imaged, "
                            f"run ssh-keygen -R {entry}{kh} and retry")
        raise self.fail(f"{step} failed: {msg or 'no message from ssh/scp'}")


def _remote_command(*commands: list[str]) -> str:
    """One shell string for ssh: each command's words quoted, commands chained with '&&'."""
    return " && ".join(shlex.join(c) for c in commands)


def last_lines(text: str, n: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:] if line.strip())


def _cascade_files(tmp: Path, manifest: Path, segments: Sequence[Path]) -> dict[str, Path]:
    """{device name: local file} for a cascade: its segments as ``segment<k>.<format>`` and the manifest,
    rewritten into ``tmp`` to name them so. The names come from us, never from the manifest, so no segment
    can land on the runner, the test set or the manifest; ``segments`` must be the ones the manifest names."""
    try:
        m = read_cascade(manifest)  # segments checked to lie inside the manifest's folder
    except RunnerError as e:
        raise EdgeCompressError(str(e)) from None
    named = [segment_path(manifest.parent, seg["file"], str(manifest)) for seg in m["segments"]]
    if segments and [p.resolve() for p in segments] != [p.resolve() for p in named]:
        raise EdgeCompressError(f"cascade manifest {manifest}: asked to copy {[str(p) for p in segments]}, not the "
                                f"segments it names; copy only what the manifest names")
    stem = manifest.name[:-len(CASCADE_SUFFIX)] if manifest.name.endswith(CASCADE_SUFFIX) else ""
    files: dict[str, Path] = {}
    for k, (seg, src) in enumerate(zip(m["segments"], named)):
        # segment0.fp32.onnx as the export names them; the suffix tells the runner the engine.
        tail = f".{stem}" if stem else (src.suffix if src.suffix in ENGINE_FOR_SUFFIX else "")
        seg["file"] = f"segment{k}{tail}"
        files[seg["file"]] = src
    write_json(tmp / manifest.name, m)
    return {manifest.name: tmp / manifest.name, **files}


def _stage(tmp: Path, profile: TargetProfile, model: Path | None, sidecar: Path | None,
           testset: Path | None, extra: Sequence[Path] = ()) -> list[Path]:
    """Local files to copy, under the names the remote command uses; a test-set subset saves bandwidth.
    ``extra``: a cascade manifest's segments (checked against it; see ``_cascade_files``)."""
    files = {"runner.py": RUNNER}

    def add(name: str, src: Path) -> None:
        if name in files:  # e.g. an artifact called runner.py or testset.npz
            raise EdgeCompressError(f"{src}: its name {name!r} is taken on the device by {files[name]}; "
                                    f"rename the artifact")
        files[name] = src

    if model is not None and is_cascade(model):
        for name, src in _cascade_files(tmp, model, extra).items():
            add(name, src)
    elif model is not None:  # a --probe copies the runner alone
        if extra:
            raise EdgeCompressError(f"{model}: only a cascade manifest has segments to copy beside it")
        add(model.name, model)
        if sidecar is not None:
            add(f"{model.name}.json", sidecar)
    n = profile.bench.accuracy_samples
    if testset is not None and n is not None:
        x, y = load_npz_split(testset)
        if n < len(x):
            # The runner scores a seeded, class-stratified N; sending just those N (all of which it then
            # scores) saves bandwidth and gives the device the same images a local check scores.
            keep = stratified_subset(y, n)
            np.savez(tmp / "testset.npz", x=x[keep], y=y[keep])
            testset = tmp / "testset.npz"
    if testset is not None:
        add("testset.npz", testset)
    staged = []
    for name, src in files.items():
        dst = tmp / name
        if dst != src:
            try:
                os.symlink(src.resolve(), dst)  # scp copies the file a link points to
            except OSError:
                shutil.copyfile(src, dst)
        staged.append(dst)
    return staged


def run_remote(profile: TargetProfile, device: DeviceSpec, model: Path | None, sidecar: Path | None,
               testset: Path | None, runner_args: list[str], extra: Sequence[Path] = ()) -> dict[str, Any]:
    """Copy, run ``runner.py <runner_args>`` (its sha256 checked first) in a fresh remote dir, remove it;
    the runner's JSON.

    ``runner_args`` name the files by their bare names (runner.py, MODEL, MODEL.json, testset.npz; a
    cascade's segments are renamed in the copied manifest), as staged here; with no ``model`` only the runner is copied
    (``runner_args = ["--probe"]``). The result's ``remote`` entry says where it ran and whether the dir was removed.
    """
    s = Session(profile, device)
    if s.key and not Path(s.key).is_file():
        raise s.fail(f"key file {s.key} does not exist; fix {s.setting('key_file')}")
    for tool in ("ssh", "scp"):
        if shutil.which(tool) is None:
            raise s.fail(f"{tool} is not installed on this machine; apt-get install openssh-client")
    mkdir = _remote_command(["mkdir", "-p", device.work_dir], ["mktemp", "-d", f"{device.work_dir}/run.XXXXXXXX"])
    proc = s.ssh(mkdir, "creating the remote work dir")
    run_dir = proc.stdout.strip()
    # Exactly <work_dir>/run.XXXXXXXX: this is the path rm -rf gets, so nothing else may pass.
    if proc.returncode != 0 or not re.fullmatch(re.escape(device.work_dir.rstrip("/")) + r"/+run\.[A-Za-z0-9]{8}",
                                                run_dir):
        raise s.fail(f"cannot create a directory under {device.work_dir} ({last_lines(proc.stderr) or run_dir!r}); "
                     f"set device.work_dir in {profile.where} to a writable directory")
    result: dict[str, Any] | None = None
    fallback: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="edgecompress-ssh-") as tmp:
            files = _stage(Path(tmp), profile, model, sidecar, testset, extra)
            fallback = copy_files(s, files, run_dir)
        # `exec` keeps the runner's pid = the shell's, written first so a timed-out run can be killed;
        # the python that runs the runner first checks it is the file we sent (_VERIFY_AND_RUN).
        sha = hashlib.sha256(RUNNER.read_bytes()).hexdigest()
        command = shlex.join([device.python, "-c", _VERIFY_AND_RUN, sha, "runner.py", *runner_args])
        script = f"cd {shlex.quote(run_dir)} && echo $$ > runner.pid && exec {command}"
        proc = s.ssh(script, "running the runner")
        result = _result(s, proc, run_dir, parse_runner_output(proc.stdout))
    finally:
        problem = _cleanup(s, run_dir, kill=s.timed_out)
        if result is not None:
            result["remote"]["cleaned_up"] = problem is None
            for warning in filter(None, [fallback, problem]):
                result.setdefault("warnings", []).append(warning)
        elif problem:  # an error is on its way out; still say what is left on the device
            print(f"edgecompress: warning: {problem}", file=sys.stderr)
    return result


def copy_files(s: Session, files: list[Path], run_dir: str) -> str | None:
    """scp ``files`` into ``run_dir`` over SFTP (scp's default since OpenSSH 9); where the device has no SFTP
    server, over the legacy scp protocol (``scp -O``, which needs scp on the device). Returns a warning
    for the result when the fallback was used."""
    where = [*map(str, files), f"{s.dest}:{run_dir}/"]
    proc = s.run(["scp", *s.scp_opts, "--", *where], "copying the files", check=False)
    if proc.returncode == 0:
        return None
    if not _NO_SFTP.search(proc.stderr):
        s._connection_error(proc.stderr, "copying the files")
    step = ("copying the files (the device has no SFTP server, which scp uses by default, so the legacy protocol, "
            "scp -O, was tried; enable SFTP in the device's sshd_config or install scp there)")
    s.run(["scp", "-O", *s.scp_opts, "--", *where], step)
    return f"copied with scp -O (legacy protocol): {s.device.url} has no SFTP server"


def _result(s: Session, proc: subprocess.CompletedProcess[str], run_dir: str,
            result: dict[str, Any] | None) -> dict[str, Any]:
    """The runner's JSON, or a clear error for a missing python, numpy or runtime on the device."""
    d, engine = s.device, s.profile.runtime.engine
    pip = f"{d.python} -m pip install"
    err = (result or {}).get("error") or ""
    if proc.returncode in (126, 127) and result is None:
        raise s.fail(f"the remote python {d.python!r} was not found or cannot run "
                     f"({last_lines(proc.stderr, 2)}); install python3 on the device or set "
                     f"{s.setting('python')} to its path")
    if "No module named 'numpy'" in proc.stderr:
        raise s.fail(f"numpy is missing for {d.python} on the device; run {pip} numpy there "
                     f"(or apt-get install python3-numpy)")
    if "not installed" in err or "no TFLite runtime" in err:
        what = err.split("; pip install")[0]  # the runner's own hint lacks the device's interpreter
        raise s.fail(f"{what} for {d.python} on the device; run {pip} {_RUNTIME_PACKAGES[engine]} there")
    if result is None or err or proc.returncode != 0:
        why = err or last_lines(proc.stderr) or f"exit code {proc.returncode}"
        raise s.fail(f"the runner failed on the device: {why}")
    result["remote"] = {"host": d.host, "port": d.port or 22, "user": d.user, "python": d.python,
                        "run_dir": run_dir, "model": result.get("model")}
    return result


def _cleanup(s: Session, run_dir: str, kill: bool) -> str | None:
    """rm -rf exactly the dir mktemp made (its name was checked); after a timeout, stop the runner first.

    Returns a warning when the dir may be left behind: a failed cleanup must never hide the run's
    own result or error.
    """
    script = f"rm -rf -- {shlex.quote(run_dir)}"
    if kill:
        pid = shlex.quote(f"{run_dir}/runner.pid")
        # $(...) must reach the remote shell unquoted; the path inside it is quoted.
        script = f'test -f {pid} && kill "$(cat {pid})" 2>/dev/null; {script}'
    try:
        proc = s.ssh(script, "cleaning up", _CLEANUP_TIMEOUT)
    except EdgeCompressError as e:
        return f"could not remove {run_dir} on {s.device.url}: {e}"
    if proc.returncode != 0:
        return f"could not remove {run_dir} on {s.device.url}: {last_lines(proc.stderr) or proc.returncode}"
    return None
