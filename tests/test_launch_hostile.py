"""Issue #26, round two: careless launches and settings are one line naming the input (exit 1, no traceback).

torchrun's environment (WORLD_SIZE without RANK, a WORLD_SIZE that is no number, a rendezvous nobody joins).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.errors import EdgeCompressError
from edgecompress.training.distributed import init_from_env

REPO = Path(__file__).resolve().parents[1]
LAUNCH = ("launch with `torchrun --nproc_per_node N stages/<stage>.py ...` (it sets WORLD_SIZE, RANK, LOCAL_RANK, "
          "MASTER_ADDR, MASTER_PORT), or unset WORLD_SIZE for one process")
DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "EDGECOMPRESS_RENDEZVOUS_TIMEOUT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_under(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A training stage started by hand with ``env`` as the launcher's variables (nothing else set)."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    out = tmp_path / "out"
    out.mkdir()
    return subprocess.run([sys.executable, str(REPO / "stages/train_teacher.py"), "--out", str(out / "teacher.pt"),
                           "--metrics", str(out / "teacher.json")], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**base, "PYTHONPATH": str(REPO / "src"), **env})


CASES = [
    ({"WORLD_SIZE": "2"}, f"RANK is not set but WORLD_SIZE=2 asks for several processes: {LAUNCH}"),
    ({"WORLD_SIZE": "two"}, f"WORLD_SIZE='two' is not a number: {LAUNCH}"),
    ({"WORLD_SIZE": "2", "RANK": "first"}, f"RANK='first' is not a number: {LAUNCH}"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, f"MASTER_ADDR is not set but WORLD_SIZE=2 asks for several processes: {LAUNCH}"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
      "EDGECOMPRESS_RENDEZVOUS_TIMEOUT": "soon"}, f"EDGECOMPRESS_RENDEZVOUS_TIMEOUT='soon' is not a number: {LAUNCH}"),
]


@pytest.mark.parametrize("env, line", CASES)
def test_a_partial_torchrun_environment_is_one_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict,
                                                                          line: str) -> None:
    for k in DIST_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(EdgeCompressError) as e:
        init_from_env()
    assert str(e.value) == line


def test_a_stage_started_in_a_partial_torchrun_environment_says_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # The stage process once (each start costs seconds of torch import); the messages are checked above.
    env, line = CASES[0]
    proc = _stage_under(tmp_path, env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"edgecompress: error: {line}"
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
def test_a_rendezvous_nobody_joins_times_out_naming_it(tmp_path: Path) -> None:
    # Before: WORLD_SIZE=2 with no second process waited silently (torch's default: 30 minutes) until killed.
    port = _free_port()
    proc = _stage_under(tmp_path, {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port), "EDGECOMPRESS_RENDEZVOUS_TIMEOUT": "2"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[0] == (f"[torchrun] rank 0 of 2: joining the rendezvous at 127.0.0.1:{port} (up to "
                                           f"2 s, EDGECOMPRESS_RENDEZVOUS_TIMEOUT)")
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edgecompress: error: rank 0 of WORLD_SIZE=2 gave up after 2 s at the rendezvous "
                           f"MASTER_ADDR:MASTER_PORT=127.0.0.1:{port}: the other processes never joined (")
    assert last.endswith(f"start all of them ({LAUNCH}), or raise EDGECOMPRESS_RENDEZVOUS_TIMEOUT")
    assert "Traceback" not in proc.stderr and not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- check.targets that leave the repository

def _copy_repo(tmp_path: Path, targets: list[str]) -> Path:
    """The pipeline's files in ``tmp_path/box/repo`` with ``check.targets`` set; the venv linked, install a no-op."""
    import shutil

    import yaml

    work = tmp_path / "box" / "repo"
    work.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, work / name)
    for name in ("stages", "targets", "src", "user", "scripts", ".dvc"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
    (work / "scripts/install.sh").write_text("true\n")
    (work / ".venv").symlink_to(Path(sys.executable).parents[1])
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["check"]["targets"] = targets
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".venv" not in p.parts}


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
@pytest.mark.parametrize("name", ["../../../x", "..", "a/b"])
def test_a_check_target_that_is_no_name_is_one_line_naming_check_targets(tmp_path: Path, name: str) -> None:
    work = _copy_repo(tmp_path, [name])
    before = _files(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # The README's run command validates before DVC expands check.targets into stage paths.
    run = subprocess.run(["bash", "scripts/setup-and-run.sh"], cwd=work, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.strip() == (f"edgecompress: error: params.yaml:check: invalid value targets: [{name!r}] are "
                                  f"not target names (letters, digits, '.', '_' or '-', naming targets/<name>.yaml)")
    assert "Traceback" not in run.stderr and run.stdout == ""
    # A plain `dvc repro` stops at DVC's load (its own words), and writes nothing outside the repository either.
    git_free = subprocess.run(["dvc", "init", "--no-scm", "-q", "-f"], cwd=work, env=env, capture_output=True)
    assert git_free.returncode == 0, git_free.stderr
    repro = subprocess.run(["dvc", "repro"], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    assert repro.returncode != 0
    if ".." not in name:  # DVC could expand it: the validate stage runs first and says it
        assert "params.yaml:check: invalid value targets" in repro.stdout + repro.stderr
    assert {p for p in _files(tmp_path) - before if work not in p.parents} == set()


# ---------------------------------------------------------------- dvc plots show offline

RENDER_JS = r"""
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[2], 'utf8');
const ctx = {console, setTimeout, clearTimeout, Promise}; ctx.globalThis = ctx; ctx.self = ctx; vm.createContext(ctx);
for (const m of html.matchAll(/<script type="text\/javascript">\n([\s\S]*?)\n    <\/script>/g)) vm.runInContext(m[1], ctx);
const spec = JSON.parse(html.match(/var spec = (\{[\s\S]*?\});\n\s*vegaEmbed/)[1]);
const view = new ctx.vega.View(ctx.vega.parse(ctx.vegaLite.compile(spec).spec), {renderer: 'none'});
view.toSVG().then(svg => console.log(typeof ctx.vegaEmbed, svg.includes('<path') ? 'drawn' : 'empty'));
"""


def test_dvc_plots_show_needs_no_network(tmp_path: Path) -> None:
    import re
    import shutil

    work = tmp_path / "repo"
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    assert subprocess.run(["git", "init", "-q"], cwd=work).returncode == 0  # what a clone has: .dvc/ from git
    curve = work / "dvclive/teacher/plots/metrics/test/accuracy.tsv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step\taccuracy\n0\t0.5\n1\t0.7\n2\t0.8\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["dvc", "plots", "show", "dvclive/teacher/plots/metrics", "-o", "out"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    page = (work / "out/index.html").read_text()
    # Before: DVC's page had <script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"> (and vega-lite, vega-embed).
    assert re.findall(r"<script[^>]*\bsrc\s*=", page, flags=re.I) == []
    assert not re.search(r"https?://[^\"'\s]*\.js\b", page) and "vegaEmbed('#" in page
    assert (REPO / ".dvc/plots.html").stat().st_size < 1_200_000  # the three minified builds, no source maps
    if shutil.which("node"):  # the inlined libraries really draw the chart
        (tmp_path / "render.js").write_text(RENDER_JS)
        drawn = subprocess.run(["node", str(tmp_path / "render.js"), str(work / "out/index.html")],
                               capture_output=True, text=True, timeout=120)
        assert drawn.stdout.split() == ["function", "drawn"], drawn.stderr[-2000:]
