"""The runner measures samples in rounds (issue #28): rounds and re-warms, compact samples, conditions, sustained
mode, the stratified accuracy subset and the ``--interleave`` protocol. Tiny ONNX models from conftest."""

from __future__ import annotations

import io
import json
import math
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import tiny_export_dir
from edgecompress.deploy import runner
from edgecompress.deploy.runner import Artifact, RunnerError


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fp32.onnx with its sidecar, its 40-image testset.npz)."""
    d, testset, _ = tiny_export_dir(tmp_path_factory.mktemp("export"), seed=3)
    return d / "fp32.onnx", testset


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-segment cascade manifest (the tiny model as its only segment) and its testset."""
    d = tmp_path_factory.mktemp("cascade")
    tiny_export_dir(d, seed=5)
    (d / "fp32.onnx").rename(d / "segment0.fp32.onnx")
    sidecar = json.loads((d / "fp32.onnx.json").read_text())
    manifest = d / "fp32.onnx.cascade.json"
    manifest.write_text(json.dumps({**sidecar, "kind": "cascade", "thresholds": [],
                                    "segments": [{"file": "segment0.fp32.onnx"}]}))
    return manifest, d / "testset.npz"


def _reference_accuracy(model: Path, testset: Path, idx: np.ndarray) -> float:
    with np.load(testset) as z:
        x, y = z["x"], z["y"]
    sc = runner.read_sidecar(f"{model}.json")
    logits = runner.postprocess(runner.load_session(model).run(runner.preprocess(x[idx], sc)), sc)
    return float((logits.argmax(1) == y[idx]).mean())


# --- rounds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runs, rounds, want", [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (5, 1, [5]), (4, 4, [1] * 4)])
def test_runs_per_round_splits_evenly(runs: int, rounds: int, want: list[int]) -> None:
    assert runner.runs_per_round(runs, rounds) == want


@pytest.mark.parametrize("runs, rounds", [(3, 4), (5, 0)])
def test_runs_per_round_refuses_rounds_without_runs(runs: int, rounds: int) -> None:
    with pytest.raises(RunnerError, match=r"--rounds .* must be between 1 and --runs"):
        runner.runs_per_round(runs, rounds)


def test_rounds_rewarm_briefly_before_each_later_round() -> None:
    calls: list[int] = []  # the run index of every call: warm-ups count from 0, timed runs continue across rounds
    art = Artifact(calls.append, lambda: {}, batch=1)
    res = runner.measure(art, warmup=25, runs=10, rounds=3)  # default re-warm: max(1, 25 // 10) = 2
    assert calls == [*range(25), 0, 1, 2, 3, 0, 1, 4, 5, 6, 0, 1, 7, 8, 9]
    assert [r["n"] for r in res["rounds"]] == [4, 3, 3] and [r["warmup"] for r in res["rounds"]] == [25, 2, 2]
    assert res["bench"]["rounds"] == 3 and res["bench"]["round_warmup"] == 2 and res["bench"]["runs_requested"] == 10
    assert res["latency_ms"]["n"] == 10
    calls.clear()
    runner.measure(art, warmup=3, runs=4, rounds=2, round_warmup=0)
    assert calls == [0, 1, 2, 0, 1, 2, 3]  # no re-warm asked: none done
    calls.clear()
    runner.measure(art, warmup=0, runs=2, rounds=2)
    assert calls == [0, 0, 1]  # at least one re-warm run even without a warm-up


def test_run_in_rounds_on_a_real_model(export: tuple[Path, Path]) -> None:
    model, testset = export
    res = runner.run(model, data=testset, threads=1, warmup=2, runs=11, rounds=3)
    assert res["runner_version"] == runner.RUNNER_VERSION == 6
    assert [r["n"] for r in res["rounds"]] == [4, 4, 3] and res["bench"]["rounds"] == 3
    assert res["bench"]["round_warmup"] == 1 and res["bench"]["stopped_by"] == "runs"
    assert res["latency_ms"]["n"] == 11 and sum(c for _, c in res["samples_ms"]) == 11
    for r in res["rounds"]:
        ms = runner.expand(r["samples_ms"])
        assert len(ms) == r["n"] and r["p50"] <= r["p90"]
        assert ms.min() <= r["p50"] * 1.001 and r["p90"] <= ms.max() * 1.001
    # The rounds' samples together are the result's samples.
    merged = np.sort(np.concatenate([runner.expand(r["samples_ms"]) for r in res["rounds"]]))
    np.testing.assert_array_equal(merged, runner.expand(res["samples_ms"]))
    assert res["sustained"] is None and "sustained_p90" not in res["latency_ms"]


def test_max_seconds_caps_all_rounds_together() -> None:
    art = Artifact(lambda i: time.sleep(0.02), lambda: {}, batch=1)
    res = runner.measure(art, warmup=0, runs=20, rounds=4, round_warmup=0, max_seconds=0.05)
    first, *later = res["rounds"]
    # Every run sleeps >= 20 ms, so the 50 ms cap is spent within round 1's five runs; later rounds time nothing.
    assert first["stopped_by"] == "max_seconds" and 1 <= first["n"] <= 3
    assert all(r["n"] == 0 and r["p50"] is None and r["samples_ms"] == [] for r in later)
    assert res["bench"]["stopped_by"] == "max_seconds" and res["latency_ms"]["n"] == first["n"]
    assert any(f"stopped after {first['n']} of 20 runs at the 0.05 s cap" in w for w in res["warnings"])


def test_cascade_in_rounds(cascade: tuple[Path, Path]) -> None:
    manifest, testset = cascade
    res = runner.run(manifest, data=testset, threads=1, warmup=1, runs=9, rounds=3, accuracy_samples=12)
    assert res["kind"] == "cascade" and [r["n"] for r in res["rounds"]] == [3, 3, 3]
    assert res["bench"]["images_cycled"] == 9 and res["timed_exit_fractions"] == [1.0]
    assert res["accuracy_samples"] == 12 and res["accuracy_subset"]["rule"] == "class-stratified"
    assert res["conditions"]["start"] is not None and res["conditions"]["end"] is not None


# --- compact samples -------------------------------------------------------------------------------------------


def test_compact_sorts_rounds_and_run_length_codes() -> None:
    ns = [3_000_000, 1_234_567, 1_234_612, 1_000_000, 3_000_000, 12_345_678, 999]
    assert runner.compact(ns) == [[0.000999, 1], [1.0, 1], [1.235, 2], [3.0, 2], [12.35, 1]]
    assert runner.compact([2.5, 0.12345, 2.5]) == [[0.1235, 1], [2.5, 2]]  # floats are milliseconds already
    assert runner.compact([]) == [] and runner.expand([]).size == 0


def test_compact_round_trips_counts() -> None:
    ns = np.random.default_rng(0).lognormal(13, 0.4, 5000).astype(np.int64)
    packed = runner.compact(ns)
    assert sum(c for _, c in packed) == 5000 and all(isinstance(c, int) for _, c in packed)
    values = [v for v, _ in packed]
    assert values == sorted(values) and len(set(values)) == len(values) < 5000
    ms = runner.expand(packed)
    np.testing.assert_allclose(ms, np.sort(ns) / 1e6, rtol=5e-4)  # 4 significant digits
    assert runner.compact(ms) == packed  # coding coded samples changes nothing
    json.dumps(packed)  # plain JSON


# --- conditions ------------------------------------------------------------------------------------------------


def _fake_machine(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A /proc and /sys with two cores and three thermal zones (two of one type), pointed at by the runner."""
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "loadavg").write_text("0.50 1.25 2.00 1/123 4567\n")
    (root / "proc" / "cpuinfo").write_text("processor\t: 0\ncpu MHz\t\t: 999.0\n")
    for cpu, khz in (("cpu0", 1_200_000), ("cpu1", 1_800_000)):
        (root / "cpu" / cpu / "cpufreq").mkdir(parents=True)
        (root / "cpu" / cpu / "cpufreq" / "scaling_cur_freq").write_text(f"{khz}\n")
    (root / "cpu" / "cpu0" / "cpufreq" / "scaling_governor").write_text("powersave\n")
    for k, (kind, milli) in enumerate([("cpu-thermal", 45000), ("gpu", 51500), ("cpu-thermal", 47250)]):
        (root / "thermal" / f"thermal_zone{k}").mkdir(parents=True)
        (root / "thermal" / f"thermal_zone{k}" / "type").write_text(kind + "\n")
        (root / "thermal" / f"thermal_zone{k}" / "temp").write_text(f"{milli}\n")
    monkeypatch.setattr(runner, "PROC", root / "proc")
    monkeypatch.setattr(runner, "SYS_CPU", root / "cpu")
    monkeypatch.setattr(runner, "SYS_THERMAL", root / "thermal")


def test_conditions_read_proc_and_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_machine(tmp_path, monkeypatch)
    assert runner.conditions() == {"loadavg": [0.5, 1.25, 2.0], "governor": "powersave",
                                   "cpu_mhz": {"min": 1200.0, "max": 1800.0, "mean": 1500.0},
                                   "thermal_c": {"cpu-thermal": 45.0, "gpu": 51.5, "cpu-thermal_1": 47.25}}
    # No cpufreq driver (most VMs): the clock comes from /proc/cpuinfo.
    for cpu in ("cpu0", "cpu1"):
        (tmp_path / "cpu" / cpu / "cpufreq" / "scaling_cur_freq").unlink()
    assert runner.conditions()["cpu_mhz"] == {"min": 999.0, "max": 999.0, "mean": 999.0}


def test_conditions_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_machine(tmp_path, monkeypatch)
    (tmp_path / "proc" / "loadavg").write_text("garbage\n")
    (tmp_path / "proc" / "cpuinfo").unlink()
    (tmp_path / "proc" / "cpuinfo").mkdir()  # a directory where a file should be
    for cpu in ("cpu0", "cpu1"):
        (tmp_path / "cpu" / cpu / "cpufreq" / "scaling_cur_freq").write_text("fast\n")
    (tmp_path / "cpu" / "cpu0" / "cpufreq" / "scaling_governor").unlink()
    for k in range(3):
        (tmp_path / "thermal" / f"thermal_zone{k}" / "temp").write_text("hot\n")
    assert runner.conditions() == {"loadavg": None, "cpu_mhz": None, "governor": None, "thermal_c": None}

    def no_loadavg() -> tuple[float, float, float]:
        raise OSError("not here")

    monkeypatch.setattr(runner, "PROC", tmp_path / "absent")
    monkeypatch.setattr(runner, "SYS_CPU", tmp_path / "absent")
    monkeypatch.setattr(runner, "SYS_THERMAL", tmp_path / "absent")
    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    assert runner.conditions() == {"loadavg": None, "cpu_mhz": None, "governor": None, "thermal_c": None}


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="Linux /proc")
def test_conditions_on_this_machine_and_in_the_result(export: tuple[Path, Path]) -> None:
    now = runner.conditions()
    assert set(now) == {"loadavg", "cpu_mhz", "governor", "thermal_c"}
    assert len(now["loadavg"]) == 3 and all(v >= 0 for v in now["loadavg"])
    res = runner.run(export[0], warmup=0, runs=3)
    assert set(res["conditions"]) == {"start", "end"}
    assert set(res["conditions"]["start"]) == set(res["conditions"]["end"]) == set(now)


# --- sustained mode --------------------------------------------------------------------------------------------


def test_sustained_mode_on_a_short_run(export: tuple[Path, Path]) -> None:
    res = runner.run(export[0], threads=1, warmup=1, runs=5, sustained_s=0.5, sustained_intervals=4)
    s = res["sustained"]
    assert set(s) == {"seconds", "intervals", "drift_p50", "drift_p90", "tail_intervals", "tail_samples_ms"}
    rows = s["intervals"]
    assert 1 <= len(rows) <= 4 and rows[0]["t0"] == 0.0 and rows[-1]["t1"] == 0.5
    assert all(a["t1"] == b["t0"] for a, b in zip(rows, rows[1:]))  # contiguous, empty ones merged
    assert all(r["n"] >= 1 and r["p50"] <= r["p90"] for r in rows)
    assert s["seconds"] >= 0.5
    assert s["drift_p50"] == pytest.approx(rows[-1]["p50"] / rows[0]["p50"])
    assert s["drift_p90"] == pytest.approx(rows[-1]["p90"] / rows[0]["p90"])
    assert s["tail_intervals"] == min(math.ceil(4 / 3), len(rows))
    tail = runner.expand(s["tail_samples_ms"])
    assert len(tail) == sum(r["n"] for r in rows[-s["tail_intervals"]:])
    assert res["latency_ms"]["sustained_p90"] == pytest.approx(np.percentile(tail, 90), rel=1e-3)
    assert res["latency_ms"]["n"] == 5  # sustained runs are not timed runs


def test_sustained_summary_merges_empty_intervals() -> None:
    # 1 s in 4 intervals of 0.25 s; a 0.6 s run outlasts interval 1, the last run outlasts interval 3.
    record, p90 = runner.sustained_summary([0, 600_000_000], [600_000_000, 500_000_000], 1.0, 4, 1.1)
    assert [(r["t0"], r["t1"], r["n"]) for r in record["intervals"]] == [(0.0, 0.25, 1), (0.25, 1.0, 1)]
    assert record["drift_p50"] == pytest.approx(500 / 600) and record["tail_intervals"] == 2
    assert record["tail_samples_ms"] == [[500.0, 1], [600.0, 1]] and p90 == pytest.approx(590.0)
    assert record["seconds"] == 1.1
    with pytest.raises(RunnerError, match="--sustained-intervals must be >= 2"):
        runner.sustain(lambda i: None, 0.1, 1)


# --- stratified accuracy subset --------------------------------------------------------------------------------


def test_stratified_subset_keeps_class_shares() -> None:
    y = np.random.default_rng(1).permutation(np.repeat([7, 3, 5], [50, 30, 20]))
    idx = runner.stratified_subset(y, 10, seed=0)
    assert idx.dtype == np.int64 and list(idx) == sorted(set(idx.tolist())) and len(idx) == 10
    assert {c: int((y[idx] == c).sum()) for c in (7, 3, 5)} == {7: 5, 3: 3, 5: 2}


def test_stratified_subset_takes_exactly_n_by_largest_remainder() -> None:
    y = np.random.default_rng(2).integers(0, 7, 203)
    counts = np.bincount(y, minlength=7)
    for n in (1, 2, 9, 50, 101, 202):
        idx = runner.stratified_subset(y, n)
        assert len(idx) == n and len(np.unique(idx)) == n
        got = np.bincount(y[idx], minlength=7)
        share = n * counts / len(y)
        assert np.all((got == np.floor(share)) | (got == np.ceil(share)))
    # Equal remainders go to the lower class.
    assert runner.stratified_subset(np.array([2, 0, 1]), 2).tolist() == [1, 2]


def test_stratified_subset_is_seeded_and_deterministic() -> None:
    y = np.random.default_rng(3).integers(0, 10, 1000)
    a = runner.stratified_subset(y, 100, seed=0)
    np.random.seed(123)  # global numpy state plays no part
    np.testing.assert_array_equal(a, runner.stratified_subset(y, 100, seed=0))
    assert not np.array_equal(a, runner.stratified_subset(y, 100, seed=1))
    assert not np.array_equal(a, np.arange(100))  # not the first N
    np.testing.assert_array_equal(runner.stratified_subset(y, 1000), np.arange(1000))
    np.testing.assert_array_equal(runner.stratified_subset(y, 5000), np.arange(1000))
    with pytest.raises(ValueError, match="n >= 1"):
        runner.stratified_subset(y, 0)


def test_accuracy_scores_the_seeded_subset(export: tuple[Path, Path], capfd: pytest.CaptureFixture[str]) -> None:
    model, testset = export
    y = np.load(testset)["y"]
    rc = runner.main(["--model", str(model), "--data", str(testset), "--runs", "2", "--warmup", "0",
                      "--accuracy-samples", "15", "--subset-seed", "4"])
    res = json.loads(capfd.readouterr().out)
    assert rc == 0 and res["accuracy_samples"] == 15
    assert res["accuracy_subset"] == {"n": 15, "seed": 4, "rule": "class-stratified"}
    assert res["accuracy"] == pytest.approx(_reference_accuracy(model, testset, runner.stratified_subset(y, 15, 4)))


@pytest.mark.parametrize("flags, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--runs", "3", "--rounds", "4"], "--rounds 4 must be between 1 and --runs"),
    (["--round-warmup", "-1"], "--round-warmup must be >= 0"),
    (["--sustained-intervals", "1"], "--sustained-intervals must be >= 2"),
    (["--sustained-s", "-1"], "--sustained-s must be >= 0"),
    (["--subset-seed", "-2"], "--subset-seed must be >= 0"),
])
def test_cli_refuses_bad_round_flags(export: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                     flags: list[str], message: str) -> None:
    assert runner.main(["--model", str(export[0]), *flags]) == 2
    assert message in json.loads(capsys.readouterr().out)["error"]


# --- the --interleave protocol -----------------------------------------------------------------------------------


class Proc:
    """A runner in --interleave mode, read line by line with a timeout (a hung runner fails the test)."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "edgecompress.deploy.runner", "--interleave", *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def line(self, timeout: float = 60) -> dict[str, Any] | None:
        """The next stdout line as JSON; None at EOF."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                assert sel.select(timeout), "the runner did not answer"
                data = os.read(fd, 1 << 16)
                if not data:
                    assert not self.buf.strip(), self.buf
                    return None
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def wait(self) -> int:
        try:
            return self.p.wait(timeout=60)
        finally:
            if self.p.poll() is None:
                self.p.kill()
            for f in (self.p.stdin, self.p.stdout, self.p.stderr):
                if f is not None and not f.closed:
                    f.close()


def test_interleave_protocol_ready_rounds_done(export: tuple[Path, Path]) -> None:
    model, testset = export
    p = Proc("--model", str(model), "--data", str(testset), "--threads", "1", "--accuracy-samples", "20",
             "--max-seconds", "30")
    assert p.line() == {"event": "ready"}
    p.send(json.dumps({"runs": 5, "warmup": 3}))
    r1 = p.line()
    assert r1 is not None and r1["event"] == "round" and r1["n"] == 5 and r1["stopped_by"] == "runs"
    assert sum(c for _, c in r1["samples_ms"]) == 5 and r1["p50"] <= r1["p90"]
    p.send("")  # blank lines are ignored
    p.send(json.dumps({"runs": 4, "warmup": 1}))
    r2 = p.line()
    assert r2 is not None and r2["n"] == 4
    p.send(json.dumps({"done": True}))
    res = p.line()
    assert p.line() is None and p.wait() == 0
    assert res is not None and res["runner_version"] == runner.RUNNER_VERSION == 6
    assert [r["n"] for r in res["rounds"]] == [5, 4] and res["latency_ms"]["n"] == 9
    assert res["rounds"][0]["samples_ms"] == r1["samples_ms"] and res["rounds"][1]["samples_ms"] == r2["samples_ms"]
    assert res["bench"]["rounds"] == 2 and res["bench"]["warmup"] == 3 and res["bench"]["round_warmup"] == 1
    assert res["bench"]["runs_requested"] == 9 and sum(c for _, c in res["samples_ms"]) == 9
    assert res["accuracy_samples"] == 20 and res["accuracy_subset"]["seed"] == 0
    assert res["accuracy"] == pytest.approx(
        _reference_accuracy(model, testset, runner.stratified_subset(np.load(testset)["y"], 20)))


def test_interleave_on_a_cascade(cascade: tuple[Path, Path]) -> None:
    manifest, testset = cascade
    p = Proc("--model", str(manifest), "--data", str(testset), "--runs", "6", "--threads", "1")
    assert p.line() == {"event": "ready"}
    for _ in range(2):
        p.send(json.dumps({"runs": 4, "warmup": 1}))
        assert p.line()["n"] == 4  # type: ignore[index]
    p.send(json.dumps({"done": True}))
    res = p.line()
    assert p.wait() == 0 and res is not None
    assert res["kind"] == "cascade" and res["latency_ms"]["n"] == 8 and res["bench"]["images_cycled"] == 6
    assert res["timed_exit_fractions"] == [1.0] and res["exit_fractions"] == [1.0]


def test_interleave_eof_before_done_exits_3_without_a_result(export: tuple[Path, Path]) -> None:
    p = Proc("--model", str(export[0]))
    assert p.line() == {"event": "ready"}
    p.send(json.dumps({"runs": 2}))
    assert p.line()["event"] == "round"  # type: ignore[index]
    assert p.p.stdin is not None
    p.p.stdin.close()  # the host died
    assert p.line() is None
    assert p.wait() == 3


def test_interleave_malformed_command_is_an_error(export: tuple[Path, Path]) -> None:
    p = Proc("--model", str(export[0]))
    assert p.line() == {"event": "ready"}
    p.send('{"runs": 0, "warmup": 1}')
    err = p.line()
    assert err is not None and set(err) == {"error"} and "malformed command" in err["error"]
    assert p.line() is None and p.wait() == 2


def test_interleave_broken_model_is_one_error_and_no_ready(tmp_path: Path, export: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    Path(f"{bad}.json").write_text(Path(f"{export[0]}.json").read_text())
    p = Proc("--model", str(bad))
    err = p.line()
    assert err is not None and "onnxruntime cannot load" in err["error"]
    assert p.line() is None and p.wait() == 2


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '{"runs": 0}', '{"runs": 2, "warmup": -1}', '{"runs": true}',
                                  '{"runs": 2.5}', '{"runs": 2, "extra": 1}', '{"done": false}', '{"warmup": 2}'])
def test_serve_refuses_malformed_commands(line: str) -> None:
    art = Artifact(lambda i: None, lambda: {}, batch=1)
    out = io.StringIO()
    with pytest.raises(RunnerError, match="malformed command"):
        runner.serve(art, out, io.StringIO(line + "\n"))
    assert out.getvalue() == '{"event": "ready"}\n'


def test_serve_answers_in_order_and_exits_3_at_eof() -> None:
    calls: list[int] = []
    art = Artifact(calls.append, lambda: {"accuracy": None}, batch=1)
    out = io.StringIO()
    assert runner.serve(art, out, io.StringIO('{"runs": 3, "warmup": 2}\n{"runs": 2}\n')) == 3
    lines = [json.loads(s) for s in out.getvalue().splitlines()]
    assert [x.get("event") for x in lines] == ["ready", "round", "round"]  # no result without done
    assert [x["n"] for x in lines[1:]] == [3, 2] and calls == [0, 1, 0, 1, 2, 3, 4]
    out = io.StringIO()
    with pytest.raises(RunnerError, match="nothing was timed"):
        runner.serve(art, out, io.StringIO('{"done": true}\n'))


def test_threads_capped_at_the_cores_the_runner_may_use(export: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """More runtime threads than cores time the scheduler: the runner runs as many as it has cores, says so in a
    warning and records both counts; within the cores (or the runtime's default) nothing changes."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert runner.usable_threads(2) == (2, None) and runner.usable_threads(None) == (None, None)
    used, warning = runner.usable_threads(4)
    assert used == 2 and "runtime.threads 4" in warning and "measured with 2 threads" in warning
    session = runner.load_session(export[0], threads=4)
    assert session.info["threads"] == 2 and session.info["threads_requested"] == 4
    assert any("measured with 2 threads" in w for w in session.warnings)
    plain = runner.load_session(export[0], threads=1)
    assert plain.info["threads"] == 1 and plain.info["threads_requested"] == 1 and plain.warnings == []


def test_threads_text_names_the_cap() -> None:
    from edgecompress.deploy.check_report import threads_text

    assert threads_text({"threads": 2, "threads_requested": 4}) == "2 (runtime.threads 4, capped at this machine's cores)"
    assert threads_text({"threads": 4, "threads_requested": 4}) == "4"
    assert threads_text({"threads": None}) == "default"  # records from before the cap have no threads_requested
