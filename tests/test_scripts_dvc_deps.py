"""dvc.yaml's code deps are generated (scripts/dvc_deps.py) and current; the generator finds every import."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "dvc_deps.py"


@pytest.fixture(scope="module")
def dvc_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dvc_deps", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny repository: one stage script over a package with every kind of import."""
    _write(tmp_path, {
        "stages/s.py": "from edgecompress import top\nimport json\n",
        "src/edgecompress/__init__.py": "",
        "src/edgecompress/top.py": (
            "import numpy\n"
            "from edgecompress.wing.near import thing\n"
            "def export():\n"
            "    from edgecompress.heavy import backend  # lazy: loads only when exporting\n"
            "    return backend\n"
            "CMD = ['python', '-m', 'edgecompress.runner']\n"),
        "src/edgecompress/heavy.py": "backend = 1\n",
        "src/edgecompress/runner.py": "import numpy\n",
        "src/edgecompress/unused.py": "from edgecompress import top\n",
        "src/edgecompress/wing/__init__.py": "",
        "src/edgecompress/wing/near.py": "from .. import leaf\nfrom . import sibling\nFILE = 'shipped.py'\nthing = 1\n",
        "src/edgecompress/wing/sibling.py": "",
        "src/edgecompress/wing/shipped.py": "",
        "src/edgecompress/wing/other.py": "",
        "src/edgecompress/leaf.py": "",
    })
    return tmp_path


def test_check_passes_on_the_repository() -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"dvc.yaml is stale: run `python scripts/dvc_deps.py`\n{run.stderr}"


def test_a_lazy_import_inside_a_function_is_a_dependency(dvc_deps: ModuleType, tree: Path) -> None:
    modules = dvc_deps.find_modules(tree / "src")
    found = dvc_deps.imported_by(tree / "src/edgecompress/top.py", "edgecompress.top", modules)
    assert "edgecompress.heavy" in found
    assert "src/edgecompress/heavy.py" in dvc_deps.stage_sources("python stages/s.py", tree)


def test_stage_sources_is_the_exact_closure(dvc_deps: ModuleType, tree: Path) -> None:
    # Packages above each module, relative imports, `-m` and sibling file names count; unimported
    # modules (unused, wing/other) and third-party ones (numpy, json) do not.
    assert dvc_deps.stage_sources("python stages/s.py --out x", tree) == [
        "stages/s.py",
        "src/edgecompress/__init__.py",
        "src/edgecompress/heavy.py",
        "src/edgecompress/leaf.py",
        "src/edgecompress/runner.py",
        "src/edgecompress/top.py",
        "src/edgecompress/wing/__init__.py",
        "src/edgecompress/wing/near.py",
        "src/edgecompress/wing/shipped.py",
        "src/edgecompress/wing/sibling.py",
    ]
    assert dvc_deps.stage_sources("echo no python here", tree) is None


DVC_YAML = """\
stages:
  one:
    cmd: python stages/s.py --out a
    deps:
      - ${data.path}  # the dataset
      - src/edgecompress/stale.py
      - models/x.pt
    # a comment about params stays with them
    params:
      - data
  many:
    foreach: [a, b]
    do:
      cmd: python stages/s.py --out ${item}
      deps:
        - targets/${item}.yaml
      outs:
        - out/${item}
"""


def test_render_rewrites_only_code_deps_and_is_idempotent(dvc_deps: ModuleType, tree: Path) -> None:
    text, stale, problems = dvc_deps.render(DVC_YAML, tree)
    assert (stale, problems) == (["one", "many"], [])
    stages = yaml.safe_load(text)["stages"]
    code = dvc_deps.stage_sources("python stages/s.py", tree)
    assert stages["one"]["deps"] == ["${data.path}", "models/x.pt", *code]
    assert stages["many"]["do"]["deps"] == ["targets/${item}.yaml", *code]
    assert stages["one"]["params"] == ["data"] and stages["many"]["do"]["outs"] == ["out/${item}"]
    assert "- ${data.path}  # the dataset\n" in text and "    # a comment about params stays with them\n" in text
    assert f"        {dvc_deps.MARKER}\n        - stages/s.py\n" in text  # the foreach stage's own indent
    assert dvc_deps.render(text, tree) == (text, [], [])


def test_a_stage_without_deps_is_a_problem(dvc_deps: ModuleType, tree: Path) -> None:
    _, _, problems = dvc_deps.render("stages:\n  bare:\n    cmd: python stages/s.py\n", tree)
    assert problems == ["stage bare runs stages/s.py but has no `deps:` list to write its code into"]


def test_check_names_the_stale_stage(dvc_deps: ModuleType, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = dvc_deps.render((ROOT / "dvc.yaml").read_text())[0]  # current, whatever the checkout's state
    prune = text.index("\n  prune:\n")
    line = "      - src/edgecompress/stage.py\n"
    stale = text[:prune] + text[prune:].replace(line, "", 1)
    assert stale != text
    path = tmp_path / "dvc.yaml"
    path.write_text(stale)
    assert dvc_deps.main(["--check", "--dvc-yaml", str(path)]) == 1
    assert "stages prune;" in capsys.readouterr().err
    assert path.read_text() == stale  # --check writes nothing
    assert dvc_deps.main(["--dvc-yaml", str(path)]) == 0
    assert path.read_text() == text


def test_validate_depends_on_every_params_section() -> None:
    # validate_params reads every section, so a change in any of them must re-validate.
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    listed = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["validate"]["params"])
    assert sections <= listed, f"validate's params miss {sorted(sections - listed)}"
