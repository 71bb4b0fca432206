"""The house stays as drawn: every stage's dvc.yaml deps cover the code it runs, and params it reads.

The import closure of each ``stages/<name>.py`` (through grimp, the graph import-linter uses, so
imports inside functions count too) must be covered by that stage's deps in dvc.yaml: a file, or a
folder above it. A stage that starts the runner in a subprocess (``deploy.bench``) depends on it too,
and on the package ``__init__.py`` files above every module it imports (Python runs them first).
scripts/dvc_deps.py writes those deps from its own import scan; this is the independent check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("edgecompress")


def _direct_imports(script: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgecompress":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "edgecompress"}
    return found - {"edgecompress"}


def stage_closure(graph, script: Path) -> set[Path]:  # type: ignore[no-untyped-def]
    """Repository-relative source files the stage script imports, directly or not."""
    modules = set(graph.modules)
    closure = set()
    for m in _direct_imports(script, modules):
        closure |= {m, *graph.find_upstream_modules(m)}
    if "edgecompress.deploy.bench" in closure:
        closure.add("edgecompress.deploy.runner")  # run as `python -m edgecompress.deploy.runner`
    closure |= {".".join(m.split(".")[:i]) for m in closure for i in range(1, m.count(".") + 1)}  # packages above
    files = set()
    for m in closure:
        base = SRC / m.replace(".", "/")
        files.add((base / "__init__.py") if base.is_dir() else base.with_suffix(".py"))
    return {f.relative_to(ROOT) for f in files}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (s.get("do") or s) for name, s in stages.items()}


def _script(stage: dict) -> Path:
    return ROOT / stage["cmd"].split()[1]


@pytest.mark.parametrize("name", list(_stages()))
def test_stage_deps_cover_its_imports(graph, name: str) -> None:  # type: ignore[no-untyped-def]
    stage = _stages()[name]
    deps = [Path(d) for d in stage["deps"]]
    missing = sorted(str(f) for f in stage_closure(graph, _script(stage))
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage {name} imports code its deps do not list: {missing}"
    unused = [str(d) for d in deps if str(d).startswith("src/") and not any(
        f == d or d in f.parents for f in stage_closure(graph, _script(stage)))]
    assert not unused, f"dvc.yaml stage {name} depends on code it never imports: {unused}"


def test_every_stage_script_is_thin() -> None:
    for script in sorted((ROOT / "stages").glob("*.py")):
        body = [ln for ln in script.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(body) <= 40, f"{script.name} has {len(body)} lines of code: move the work into the library"


def test_no_module_over_400_lines() -> None:
    # The runner is copied alone onto devices (its sha256 checked there): one file by design.
    standalone = {SRC / "edgecompress" / "deploy" / "runner.py"}
    for path in sorted((SRC / "edgecompress").rglob("*.py")):
        n = len(path.read_text().splitlines())
        assert path in standalone or n <= 400, f"{path.relative_to(ROOT)} has {n} lines (split it by idea)"


def test_runner_engines_match_the_artifact_registry() -> None:
    # The runner cannot import the registry (it is copied alone to devices): the two must agree.
    from edgecompress.artifacts import ENGINE_FOR_FORMAT
    from edgecompress.deploy.runner import ENGINE_FOR_SUFFIX

    assert ENGINE_FOR_SUFFIX == {f".{fmt}": engine for fmt, engine in ENGINE_FOR_FORMAT.items()}


def test_normalisation_matches_the_runner() -> None:
    # Checks and reports normalise as the device does; the runner keeps its own copy (standalone).
    import numpy as np

    from edgecompress.data import normalize_images
    from edgecompress.deploy.runner import preprocess

    x = np.random.default_rng(0).integers(0, 256, (3, 2, 5, 5), dtype=np.uint8)
    side = {"mean": [0.2, 0.4], "std": [0.3, 0.25], "layout": "NCHW", "input_dtype": "float32"}
    assert np.array_equal(normalize_images(x, side["mean"], side["std"]), preprocess(x, side))


def test_stages_that_read_images_depend_on_the_dataset() -> None:
    # Images added or relabelled in place (edgecompress add-labels) must re-run what learns from them.
    stages = _stages()
    readers = [n for n, s in stages.items() if "data" in s.get("params", []) and n != "validate"]
    assert len(readers) >= 7
    for name in readers:
        assert "${data.path}" in stages[name]["deps"], f"dvc.yaml stage {name} reads the data but not ${{data.path}}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["data"]["path"], "dvc.yaml interpolates data.path: params.yaml must name the dataset"
