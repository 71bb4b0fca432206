"""benchmarks/harness.py: the provenance every results file carries (command, commit, machine), the atomic
write, one way to load data; every benchmark answers --help; cheap benchmarks run end to end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edgecompress.data import DataConfig
from edgecompress.errors import EdgeCompressError

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# Scripts (a __main__ block); user_model.py is a user's network and harness.py the shared module.
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # as `python benchmarks/x.py` has it
    try:
        import harness as mod
    finally:
        sys.path.remove(str(BENCH))
    return mod


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_every_benchmark_script_is_found() -> None:
    assert len(SCRIPTS) == 18 and "user_model.py" not in SCRIPTS and "harness.py" not in SCRIPTS


def test_results_carry_command_commit_and_machine(harness: ModuleType, tmp_path: Path) -> None:
    argv = ["--limit", "600", "--out", "dir with space/x.md", "--name", "it's"]
    p = harness.parser("Doc line.\n\nmore")
    harness.add_limit(p)
    harness.add_out(p, "benchmarks/results")
    p.add_argument("--name")
    args, run = harness.parse(p, argv)
    assert (args.limit, args.out, args.name) == (600, "dir with space/x.md", "it's")
    assert p.description == "Doc line."
    payload = {"rows": [{"a": 1.5}], "fingerprint": {"cores": 2}}
    prov = harness.write_results(tmp_path / "r.json", payload, run, markdown="# Title\n\nbody\n")

    saved = json.loads((tmp_path / "r.json").read_text())
    assert list(saved) == ["rows", "fingerprint", "provenance"]  # the results as they were, provenance added
    assert saved["rows"] == payload["rows"] and saved["provenance"] == prov
    # The exact command line, quoted so that a shell gives back the same arguments.
    assert shlex.split(prov["command"]) == ["python", sys.argv[0], *argv]
    assert prov["argv"] == [sys.argv[0], *argv] and prov["cwd"] == os.getcwd()
    assert prov["commit"] == _git("rev-parse", "HEAD")
    assert prov["dirty"] == bool(_git("status", "--porcelain"))
    m = prov["machine"]
    assert {"hostname", "cpu_model", "cores", "os", "python"} <= set(m) and m["cores"] == os.cpu_count()
    import torch

    assert m["versions"]["torch"] == torch.__version__
    assert prov["started"].endswith("+00:00") and prov["wall_seconds"] >= 0

    md = (tmp_path / "r.md").read_text().split("\n")
    assert md[0].startswith(f"Provenance: `{prov['command']}` at commit {prov['commit'][:12]}")
    assert "\n".join(md[2:]) == "# Title\n\nbody\n"  # the report itself unchanged below the line


def test_markdown_path_and_json_fallbacks(harness: ModuleType, tmp_path: Path) -> None:
    import numpy as np

    run = harness.Run.start([])
    harness.write_results(tmp_path / "a.json", {"x": np.float32(0.5), "p": tmp_path}, run,
                          markdown="m\n", md_path=tmp_path / "b.md")
    assert json.loads((tmp_path / "a.json").read_text())["x"] == 0.5  # numpy and paths as fileio writes them
    assert (tmp_path / "b.md").exists() and not (tmp_path / "a.md").exists()
    harness.write_results(tmp_path / "c.json", {"o": object()}, run, default=str, newline=False)
    assert not (tmp_path / "c.json").read_text().endswith("\n")
    harness.write_results(tmp_path / "d.json", [1, 2], run)  # a list is wrapped, not changed
    assert json.loads((tmp_path / "d.json").read_text())["results"] == [1, 2]


def test_a_rerender_keeps_the_provenance_of_the_run_it_renders(harness: ModuleType, tmp_path: Path) -> None:
    first = harness.Run.start(["--measure"])
    harness.write_results(tmp_path / "r.json", {"rows": []}, first)
    saved = json.loads((tmp_path / "r.json").read_text())
    harness.write_results(tmp_path / "r.json", saved, harness.Run.start(["--from-json", "r.json"]))
    again = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert again["argv"][1:] == ["--from-json", "r.json"]
    assert again["rendered_from"]["argv"][1:] == ["--measure"]


def test_a_failed_write_leaves_the_old_results_and_no_temp_file(harness: ModuleType, tmp_path: Path) -> None:
    run = harness.Run.start([])
    harness.write_results(tmp_path / "r.json", {"ok": 1}, run, markdown="old\n")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError, match="not JSON serializable"):
        harness.write_results(tmp_path / "r.json", {"ok": object()}, run, markdown="new\n")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # both files whole, nothing beside them
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask  # an ordinary file, not mkstemp's 0600


def test_one_way_to_the_data(harness: ModuleType, tmp_path: Path) -> None:
    assert harness.data_config() == DataConfig()  # no params: the library's default data
    assert harness.data_config(limit=600) == DataConfig(limit=600)
    assert harness.data_config(limit=600, path="/x") == DataConfig(limit=600, path="/x")
    params_file = tmp_path / "p.yaml"
    params_file.write_text("data:\n  format: idx\n  path: /d\n  limit: 2000\n  seed: 3\n")
    params = harness.load_params(params_file)
    assert harness.data_config(params) == DataConfig(path="/d", limit=2000, seed=3)
    assert harness.data_config(params, 600) == DataConfig(path="/d", limit=600, seed=3)  # --limit wins
    assert harness.data_config(params, None) == harness.data_config(params, 0)  # unset: the section's
    params_file.write_text("data:\n  limt: 5\n")
    with pytest.raises(EdgeCompressError, match=r"p\.yaml:data.*limt.*did you mean 'limit'"):
        harness.data_config(harness.load_params(params_file), where=str(params_file))
    params_file.write_text("data: {}\ndata: {}\n")
    with pytest.raises(EdgeCompressError, match="appears twice"):
        harness.load_params(params_file)


# Runs each script as `python benchmarks/x.py --help` runs it (its folder first on sys.path, __main__), all in
# one process and one test (a parametrized one ran the whole driver on each pytest-xdist worker): each separate
# interpreter paid ~4 s importing torch, over a minute of CPU in the fast lane for 18 scripts.
_HELP_DRIVER = r"""
import contextlib, io, json, runpy, sys
sys.path.insert(0, sys.argv[1])
out = {}
for path in sys.argv[2:]:
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else str(e.code))
    except BaseException as e:  # noqa: BLE001 - recorded per script, so the test names every broken one
        code = f"{type(e).__name__}: {e}"
    out[path] = {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()[-2000:]}
sys.__stdout__.write(json.dumps(out))
"""


def test_every_benchmark_answers_help() -> None:
    r = subprocess.run([sys.executable, "-c", _HELP_DRIVER, str(BENCH), *(str(BENCH / s) for s in SCRIPTS)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    answers = json.loads(r.stdout)
    broken = {Path(path).name: (got["code"], got["stderr"][-500:]) for path, got in answers.items()
              if got["code"] != 0 or not got["stdout"].startswith("usage: ")}
    assert sorted(answers) == sorted(str(BENCH / s) for s in SCRIPTS)
    assert not broken, broken


def test_scale_rerenders_a_finished_run_with_provenance(tmp_path: Path) -> None:
    """A cheap run of a real benchmark: scale.py re-renders the committed scale.json (no measuring)."""
    committed = BENCH / "results" / "scale.json"
    src = tmp_path / "in.json"
    src.write_text(committed.read_text())
    r = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--from-json", str(src), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"[scale] wrote {tmp_path / 'o' / 'scale.md'}" in r.stderr  # the log line as it always read
    out = json.loads((tmp_path / "o" / "scale.json").read_text())
    old = json.loads(committed.read_text())
    assert out["rows"] == old["rows"] and out["meta"]["fingerprint"] == old["meta"]["fingerprint"]
    assert out["provenance"]["argv"][1:] == ["--from-json", str(src), "--out", str(tmp_path / "o")]
    md = (tmp_path / "o" / "scale.md").read_text()
    assert md.startswith("Provenance: `python ") and "\n\n# Scale benchmark" in md
    assert md.split("\n\n", 1)[1] == r.stdout  # the report printed is the report written


def test_compare_runs_finds_a_changed_metric(tmp_path: Path) -> None:
    for name, acc in (("a", 0.9), ("b", 0.9), ("c", 0.8)):
        (tmp_path / name / "metrics").mkdir(parents=True)
        (tmp_path / name / "models").mkdir()
        (tmp_path / name / "metrics" / "m.json").write_text(json.dumps({"accuracy": acc, "seconds": len(name)}))

    def compare(x: str, y: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(BENCH / "compare_runs.py"), str(tmp_path / x), str(tmp_path / y)],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)

    same, differ = compare("a", "b"), compare("a", "c")
    assert (same.returncode, differ.returncode) == (0, 1)
    assert "ALL MATCH" in same.stdout and ".accuracy 0.9 -> 0.8" in differ.stdout


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason="needs Fashion-MNIST (Debian package dataset-fashion-mnist)")
def test_active_learning_smoke_run(tmp_path: Path) -> None:
    """One strategy, one seed, one training step a round: the whole script, its files and their provenance."""
    out = tmp_path / "al.md"
    args = ["--seeds", "1", "--steps", "1", "--strategies", "random", "--limit", "3500", "--out", str(out)]
    r = subprocess.run([sys.executable, str(BENCH / "active_learning.py"), *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [c["labels"] for c in saved["runs"][0]["curve"]] == [200, 400, 700, 1000, 1500, 2000, 3000]
    assert list(saved)[-1] == "provenance" and saved["provenance"]["argv"][1:] == args
    assert out.read_text().startswith("Provenance: ") and out.with_suffix(".svg").exists()
    assert not out.with_suffix(".partial.json").exists()  # removed once the report is whole
