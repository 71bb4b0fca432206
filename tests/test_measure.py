"""The host driver of interleaved measurements (issue #28): one runner process per candidate, rounds in turns
A B C A B C, extension rounds only for undecided jobs within max_seconds, no process left behind on errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tiny_export_dir
from edgecompress.deploy import measure
from edgecompress.deploy.measure import Job, Plan, interleave
from edgecompress.errors import EdgeCompressError

WHAT = "target t"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> list[Job]:
    """Three tiny ONNX candidates A, B, C, each scored on its own 40-image testset."""
    out = []
    for name, seed in (("A", 3), ("B", 4), ("C", 5)):
        d, testset, _ = tiny_export_dir(tmp_path_factory.mktemp(name), seed=seed)
        model = d / "fp32.onnx"
        out.append(Job(name, ["--model", str(model), "--data", str(testset), "--threads", "1",
                              "--accuracy-samples", "20"], model))
    return out


def _plan(**kw: Any) -> Plan:
    return Plan(**{"rounds": 2, "runs": 6, "warmup": 1, "round_warmup": 1, "max_seconds": 30.0, "timeout": 60.0,
                   **kw})


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    """Every command sent and every answer read, in order: (job, "send" | "read", command or event)."""
    events: list[tuple[str, str, Any]] = []
    send, read = measure._Runner.send, measure._Runner.read

    def spy_send(self: measure._Runner, cmd: dict[str, Any]) -> None:
        events.append((self.job.name, "send", cmd))
        send(self, cmd)

    def spy_read(self: measure._Runner) -> dict[str, Any]:
        ans = read(self)
        events.append((self.job.name, "read", ans.get("event", "result")))
        return ans

    monkeypatch.setattr(measure._Runner, "send", spy_send)
    monkeypatch.setattr(measure._Runner, "read", spy_read)
    return events


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[measure._Runner]:
    """Every runner process interleave starts."""
    runners: list[measure._Runner] = []
    init = measure._Runner.__init__

    def spy(self: measure._Runner, *args: Any) -> None:
        init(self, *args)
        runners.append(self)

    monkeypatch.setattr(measure._Runner, "__init__", spy)
    return runners


def test_rounds_go_a_b_c_a_b_c(jobs: list[Job], log: list[tuple[str, str, Any]],
                               started: list[measure._Runner]) -> None:
    res = interleave(jobs, _plan(runs=7, warmup=3), WHAT)
    rounds = [(name, cmd) for name, kind, cmd in log if kind == "send" and "runs" in cmd]
    assert rounds == [("A", {"runs": 4, "warmup": 3}), ("B", {"runs": 4, "warmup": 3}), ("C", {"runs": 4, "warmup": 3}),
                      ("A", {"runs": 3, "warmup": 1}), ("B", {"runs": 3, "warmup": 1}), ("C", {"runs": 3, "warmup": 1})]
    # Strictly in turns: every round is answered before the next job's is sent, so no two time at once.
    timed = [(name, kind) for name, kind, cmd in log
             if (kind == "send" and "runs" in cmd) or (kind == "read" and cmd == "round")]
    assert timed == [pair for n in "ABCABC" for pair in ((n, "send"), (n, "read"))]
    # All ready before the first round.
    assert [kind for _, kind, _ in log[:3]] == ["read"] * 3 and log[3][1] == "send"
    assert set(res) == {"A", "B", "C"}
    for job in jobs:
        r = res[job.name]
        assert r["runner_version"] == 6 and r["model"] == str(job.model)  # each job's own process and model
        assert [x["n"] for x in r["rounds"]] == [4, 3] and r["bench"]["rounds"] == 2
        assert r["latency_ms"]["n"] == 7 and r["bench"]["warmup"] == 3 and r["bench"]["round_warmup"] == 1
        assert r["accuracy_samples"] == 20 and r["conditions"]["end"] is not None
    assert all(p.proc.returncode == 0 for p in started)


def test_extension_rounds_only_for_jobs_more_flags(jobs: list[Job], log: list[tuple[str, str, Any]]) -> None:
    seen: list[tuple[str, list[np.ndarray]]] = []

    def more(name: str, rounds: list[np.ndarray]) -> bool:
        seen.append((name, rounds))
        return name in ("A", "C")

    res = interleave(jobs, _plan(), WHAT, more=more, extra_rounds=2)
    rounds = [name for name, kind, cmd in log if kind == "send" and "runs" in cmd]
    assert rounds == ["A", "B", "C", "A", "B", "C", "A", "C", "A", "C"]  # extensions stay interleaved
    assert [r["bench"]["rounds"] for r in (res["A"], res["B"], res["C"])] == [4, 2, 4]
    assert res["A"]["latency_ms"]["n"] == 12 and res["B"]["latency_ms"]["n"] == 6
    assert [x["warmup"] for x in res["A"]["rounds"]] == [1, 1, 1, 1]
    # more() sees one sorted sample array per round so far, in ms.
    first = {name: rounds for name, rounds in seen[:3]}
    assert set(first) == {"A", "B", "C"} and all(len(r) == 2 for r in first.values())
    for rounds in first.values():
        assert [len(r) for r in rounds] == [3, 3] and all(np.all(np.diff(r) >= 0) and r.min() > 0 for r in rounds)
    assert [len(r) for name, r in seen[3:] if name == "A"] == [3]  # asked again after its first extension


def test_extension_rounds_never_beyond_max_seconds(jobs: list[Job], log: list[tuple[str, str, Any]]) -> None:
    asked: list[str] = []

    def more(name: str, rounds: list[np.ndarray]) -> bool:
        asked.append(name)
        return True

    # A 1 us cap: the runner stops after its first timed run, so no job may get an extension round.
    res = interleave(jobs[:2], _plan(max_seconds=1e-6), WHAT, more=more, extra_rounds=3)
    assert [name for name, kind, cmd in log if kind == "send" and "runs" in cmd] == ["A", "B", "A", "B"]
    assert asked == []
    for r in res.values():
        assert r["bench"]["stopped_by"] == "max_seconds" and r["latency_ms"]["n"] == 1
        assert [x["n"] for x in r["rounds"]] == [1, 0]


def test_a_broken_model_fails_in_one_line_and_leaves_no_process(tmp_path: Path, jobs: list[Job],
                                                                 started: list[measure._Runner]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    Path(f"{bad}.json").write_text(Path(f"{jobs[0].model}.json").read_text())
    broken = Job("broken", ["--model", str(bad)], bad)
    with pytest.raises(EdgeCompressError) as e:
        interleave([jobs[0], broken, jobs[1]], _plan(), WHAT)
    msg = str(e.value)
    assert msg.startswith(f"{WHAT}: runner failed on {bad}: onnxruntime cannot load") and "\n" not in msg
    assert len(started) == 3 and all(p.proc.poll() is not None for p in started)  # every process is gone
    assert all(p.proc.stdout is not None and p.proc.stdout.closed for p in started)


def test_a_runner_that_dies_names_its_stderr(jobs: list[Job], started: list[measure._Runner]) -> None:
    dying = Job("dying", [*jobs[1].argv, "--no-such-flag"], jobs[1].model)
    with pytest.raises(EdgeCompressError, match=rf"runner failed on {jobs[1].model}: .*unrecognized arguments: "
                                                r"--no-such-flag") as e:
        interleave([jobs[0], dying], _plan(), WHAT)
    assert "\n" not in str(e.value)
    assert all(p.proc.poll() is not None for p in started)


def test_a_timeout_names_the_job_and_the_seconds(jobs: list[Job], started: list[measure._Runner]) -> None:
    with pytest.raises(EdgeCompressError, match=r"runner failed on .*: job A gave no answer within 0\.001 s"):
        interleave(jobs[:2], _plan(timeout=0.001), WHAT)
    assert len(started) == 2 and all(p.proc.poll() is not None for p in started)


@pytest.mark.parametrize("kw, message", [
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"rounds": 4, "runs": 3}, r"runs must be >= 4, got 3 \(every round needs a run\)"),
    ({"warmup": -1}, "warmup must be >= 0"),
    ({"round_warmup": -1}, "round_warmup must be >= 0"),
    ({"max_seconds": 0}, "max_seconds must be > 0"),
    ({"timeout": -1.0}, "timeout must be > 0"),
])
def test_plan_refuses_bad_values(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(EdgeCompressError, match=f"measurement plan: {message}"):
        _plan(**kw)


def test_runs_per_round_and_duplicate_names(jobs: list[Job]) -> None:
    assert measure.runs_per_round(10, 3) == [4, 3, 3] and measure.runs_per_round(6, 6) == [1] * 6
    with pytest.raises(EdgeCompressError, match="job names must be unique"):
        interleave([jobs[0], jobs[0]], _plan(), WHAT)


def test_the_runner_measures_at_raised_priority_where_permitted(jobs: list[Job]) -> None:
    """Background work takes the cores the runner leaves: it runs PRIORITY nice levels up where this user
    may raise priority (root here), and each result says at which."""
    import os

    from edgecompress.deploy.measure import PRIORITY

    res = interleave(jobs[:1], _plan(), WHAT)
    got = res[jobs[0].name]["priority"]
    if os.geteuid() == 0:
        assert got == {"nice": os.getpriority(os.PRIO_PROCESS, 0) + PRIORITY, "raised": True}
    else:
        assert got["raised"] is False
