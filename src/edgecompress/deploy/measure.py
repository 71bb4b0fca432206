"""Measure candidates side by side: one runner process each, driven in interleaved rounds (A B C A B C ...).

A build compares candidates whose latencies may differ by less than the machine's drift (a thermal ramp,
another process starting). Timing A fully, then B, then C lets that drift decide; timing them in turns lets
it hit all alike. Each candidate keeps its own process, so each loads its model once and its peak RSS stays
its own. The protocol (runner ``--interleave``): the runner says ``{"event": "ready"}``, answers each
``{"runs": n, "warmup": w}`` with a round of samples and ``{"done": true}`` with its usual result.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np

from edgecompress.deploy import bench, runner, stats
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger

log = get_logger("measure")

Command = Callable[[list[str]], list[str]]  # runner args -> the command line that runs the runner with them


@dataclass(frozen=True)
class Job:
    """One candidate to measure."""

    name: str  # the candidate's name, e.g. "student/int8.tflite"
    argv: list[str]  # runner args as deploy.bench.runner_args builds them (the plan's flags are appended)
    model: Path  # for error messages


@dataclass(frozen=True)
class Plan:
    """How every job is measured."""

    rounds: int  # rounds every job gets
    runs: int  # total timed runs per job over those rounds (split evenly)
    warmup: int  # before round 1
    round_warmup: int  # before each later round
    max_seconds: float  # cap on one job's timed runs in total (rounds plus extensions)
    timeout: float  # seconds without an answer before a process is killed and the measurement fails

    def __post_init__(self) -> None:
        for name, value, low in (("rounds", self.rounds, 1), ("runs", self.runs, self.rounds),
                                 ("warmup", self.warmup, 0), ("round_warmup", self.round_warmup, 0)):
            if value < low:
                raise EdgeCompressError(f"measurement plan: {name} must be >= {low}, got {value}"
                                        + (" (every round needs a run)" if name == "runs" else ""))
        for name, value in (("max_seconds", self.max_seconds), ("timeout", self.timeout)):
            if not value > 0:
                raise EdgeCompressError(f"measurement plan: {name} must be > 0 seconds, got {value}")


def runs_per_round(runs: int, rounds: int) -> list[int]:
    """``runs`` split into ``rounds`` as evenly as possible, larger slices first: the runner's own split."""
    try:
        return runner.runs_per_round(runs, rounds)
    except runner.RunnerError as e:
        raise EdgeCompressError(f"measurement plan: {e}") from None


# The runner measures as a latency-critical application runs: PRIORITY nice levels above the other work
# (where this user may raise priority: root or CAP_SYS_NICE). Background jobs then take the cores it
# leaves, not the ones it needs: one CPU-heavy process on these 2 cores made the host's build ship
# teacher/int8.onnx twice at normal priority and ensemble/int8.onnx (the quiet machine's choice) twice
# at -10. The result records the priority it got.
PRIORITY = -10


def _raise_priority() -> None:
    """In the child before exec: lower its nice value by PRIORITY's amount; left as is when not permitted."""
    try:
        os.nice(PRIORITY)
    except OSError:
        pass


def priority_of(pid: int) -> dict[str, Any]:
    """The nice value the runner ran at, and whether it is the raised one."""
    try:
        nice = os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return {"nice": None, "raised": False}
    return {"nice": nice, "raised": nice <= os.getpriority(os.PRIO_PROCESS, 0) + PRIORITY}


class _Runner:
    """One runner process in ``--interleave`` mode: send a command, read its one-line answer."""

    def __init__(self, job: Job, plan: Plan, what: str, command: Command = bench.local_command) -> None:
        self.job, self.plan, self.what = job, plan, what
        self.rounds: list[np.ndarray] = []  # per-round sorted samples (ms), as ``more`` sees them
        self.timed_s = 0.0  # timed runs so far, summed from the samples
        self.capped = False  # the runner hit max_seconds: no more rounds
        self.priority: dict[str, Any] | None = None
        # stderr to a file, not a pipe: runtime chatter filling a pipe nobody reads would block the child.
        self._stderr: IO[bytes] = tempfile.TemporaryFile(prefix="runner-stderr-")
        args = [*job.argv, "--interleave", "--runs", str(plan.runs), "--rounds", str(plan.rounds),
                "--warmup", str(plan.warmup), "--round-warmup", str(plan.round_warmup),
                "--max-seconds", str(plan.max_seconds)]  # argparse keeps the last of a repeated flag
        self.proc = subprocess.Popen(command(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=bench.runner_env(), preexec_fn=_raise_priority)
        self._buf = b""
        log.debug("started %s (pid %d)", job.name, self.proc.pid)

    def fail(self, reason: str) -> EdgeCompressError:
        return EdgeCompressError(f"{self.what}: runner failed on {self.job.model}: {reason}")

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self.fail(self._why_gone()) from None

    def read(self) -> dict[str, Any]:
        """The next JSON line; one clear error on a timeout, an exit or an ``{"error": ...}`` answer."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.plan.timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                line, nl, rest = self._buf.partition(b"\n")
                if nl:
                    self._buf = rest
                    obj = _parse(line)
                    if obj is None:  # not ours (a library wrote to stdout): skip it
                        continue
                    if "error" in obj:
                        raise self.fail(str(obj["error"]))
                    return obj
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise self.fail(f"job {self.job.name} gave no answer within {self.plan.timeout:g} s; "
                                    f"killed it (raise the timeout, or lower bench.runs)")
                data = os.read(fd, 1 << 16)
                if not data:
                    raise self.fail(self._why_gone())
                self._buf += data

    def round(self, runs: int, warmup: int) -> None:
        if self.priority is None:  # while it waits for the command: alive, at the priority it measures at
            self.priority = priority_of(self.proc.pid)
        self.send({"runs": runs, "warmup": warmup})
        ans = self.read()
        if ans.get("event") != "round":
            raise self.fail(f"expected a round, got {str(ans)[:200]}")
        samples = stats.expand(ans["samples_ms"], f"{self.job.name}: round samples_ms")
        self.rounds.append(samples)
        self.timed_s += float(samples.sum()) / 1000
        self.capped = self.capped or ans.get("stopped_by") == "max_seconds"
        log.debug("%s: round %d, %d runs, p50 %s ms", self.job.name, len(self.rounds), ans["n"], ans["p50"])

    def done(self) -> dict[str, Any]:
        self.send({"done": True})
        result = self.read()
        result["priority"] = self.priority
        try:
            code = self.proc.wait(timeout=self.plan.timeout)
        except subprocess.TimeoutExpired:
            raise self.fail(f"job {self.job.name} did not exit within {self.plan.timeout:g} s of its result") from None
        if code != 0:
            raise self.fail(f"exit code {code} after its result")
        return result

    def _why_gone(self) -> str:
        """Why the process stopped answering: its exit code and the last lines of its stderr."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        tail = bench.tail(self._stderr.read().decode(errors="replace"), 5).replace("\n", " | ")
        return tail or f"exit code {code} without an answer"

    def close(self) -> None:
        """Kill the process if it still runs (no orphans) and free its pipes and stderr file."""
        if self.proc.poll() is None:
            self.proc.kill()
            log.debug("killed %s (pid %d)", self.job.name, self.proc.pid)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:  # a broken stdin pipe: nothing left to flush
                    pass


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def interleave(jobs: Sequence[Job], plan: Plan, what: str,
               more: Callable[[str, list[np.ndarray]], bool] | None = None,
               extra_rounds: int = 0, command: Command = bench.local_command) -> dict[str, dict[str, Any]]:
    """Start one local runner process per job, wait for all to be ready, then for each round send every job its
    slice, in job order (A B C A B C ...). After ``plan.rounds``, while ``more`` says a job is still undecided
    (given its per-round sorted samples so far, ms) and it has run less than ``plan.max_seconds`` of timed runs,
    give those jobs (only those, still interleaved) up to ``extra_rounds`` more rounds of the same size. Then send
    done to all and return {name: final runner result}. Every process is killed on any error (one line naming
    ``what`` and the model) or interrupt. ``command`` makes each runner's command line (this Python by default;
    an emulated device's qemu, ``emulate.Emulator.command``)."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise EdgeCompressError(f"{what}: job names must be unique, got {names}")
    sizes = runs_per_round(plan.runs, plan.rounds)
    procs: list[_Runner] = []
    try:
        for job in jobs:  # all load at once: loading is not timed
            procs.append(_Runner(job, plan, what, command))
        for p in procs:
            ans = p.read()
            if ans.get("event") != "ready":
                raise p.fail(f"expected ready, got {str(ans)[:200]}")
        for k, n in enumerate(sizes):
            for p in procs:
                p.round(n, plan.warmup if k == 0 else plan.round_warmup)
        for k in range(extra_rounds):
            pending = [p for p in procs if more is not None and not p.capped and p.timed_s < plan.max_seconds
                       and more(p.job.name, list(p.rounds))]
            if not pending:
                break
            log.debug("extension round %d for %s", k + 1, ", ".join(p.job.name for p in pending))
            for p in pending:
                p.round(sizes[0], plan.round_warmup)
        return {p.job.name: p.done() for p in procs}
    finally:
        for p in procs:
            p.close()
