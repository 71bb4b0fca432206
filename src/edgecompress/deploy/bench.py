"""The one client of the on-device runner: its command line, its subprocess, its JSON answer.

The check stage (locally or over SSH, through ``deploy.remote``) and the report stage both measure
artifacts through here, so every figure comes from the same runner invocation and parsing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgecompress.deploy.targets import TargetProfile
from edgecompress.errors import EdgeCompressError

RUNNER = Path(__file__).with_name("runner.py")


def runner_args(profile: TargetProfile, model: str, sidecar: str | None, testset: str | None) -> list[str]:
    """The runner's flags for ``profile``; shared by the local and the SSH check so both measure alike.
    A cascade manifest is its own sidecar (``sidecar`` None)."""
    rt, b = profile.runtime, profile.bench
    args = ["--model", model, *(["--sidecar", sidecar] if sidecar else []), "--engine", rt.engine,
            "--warmup", str(b.warmup), "--runs", str(b.runs), "--batch", str(b.batch),
            "--max-seconds", str(b.max_seconds)]
    if b.round_count > 1:
        args += ["--rounds", str(b.round_count), "--round-warmup", str(max(1, b.warmup // 10))]
    if b.sustained_s:
        args += ["--sustained-s", str(b.sustained_s), "--sustained-intervals", str(b.sustained_intervals)]
    if testset is not None:
        args += ["--data", testset]
    if b.accuracy_samples is not None:
        args += ["--accuracy-samples", str(b.accuracy_samples)]
    if rt.threads is not None:
        args += ["--threads", str(rt.threads)]
    if rt.engine == "onnxruntime":
        args += ["--providers", ",".join(rt.providers)]
    elif not rt.xnnpack:
        args.append("--no-xnnpack")
    return args


def parse_runner_output(stdout: str) -> dict[str, Any] | None:
    """The runner's one JSON object from its stdout, or None."""
    # The runner prints one JSON object; take the last line that parses, in case a library wrote first.
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def local_command(args: list[str]) -> list[str]:
    """This Python running the runner module with ``args``."""
    return [sys.executable, "-m", "edgecompress.deploy.runner", *args]


def runner_env() -> dict[str, str]:
    """This environment with the package importable, so a checkout runs the runner without an install."""
    src = str(Path(__file__).resolve().parent.parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_local(cmd: list[str], model: Path, timeout: float, what: str, timeout_hint: str = "") -> dict[str, Any]:
    """Run ``cmd`` (from ``local_command``) here in a subprocess; its JSON result, or one clear error.

    A subprocess so the peak RSS it reports is the model's and the runtime's, not this process's.
    ``what`` names the run in errors ("target host: runner failed on ...").
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=runner_env())
    except subprocess.TimeoutExpired:
        raise EdgeCompressError(f"{what}: the runner did not finish within {timeout:g} s{timeout_hint}") from None
    result = parse_runner_output(proc.stdout)
    if result is None or "error" in result or proc.returncode != 0:
        why = (result or {}).get("error") or tail(proc.stderr) or f"exit code {proc.returncode}"
        raise EdgeCompressError(f"{what}: runner failed on {model}: {why}")
    return result
