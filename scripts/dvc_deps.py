#!/usr/bin/env python
"""Write the code deps of every dvc.yaml stage from what its script imports; never by hand.

A stage that runs ``python stages/<x>.py`` depends on that script and on every module of
``src/edgecompress`` it imports, directly or through other modules. Counted as imports:

- ``import`` statements anywhere in a module, not only at the top: heavy backends load inside the
  functions that need them (STYLE.md), and such a module runs when the stage calls that function;
- the packages above each module (``import edgecompress.training.loop`` runs
  ``edgecompress/__init__.py`` and ``edgecompress/training/__init__.py`` first);
- a string that names one of our modules: ``[sys.executable, "-m", "edgecompress.deploy.runner"]``
  runs it, and ``Path(__file__).with_name("runner.py")`` ships a sibling file to a device.

Files are listed one per line, never as a folder: a folder would also re-run the stage for modules
it never imports (``distill`` depends on the training modules it imports, not the whole folder) and
for the ``__pycache__`` files Python writes beside them.

Each stage's generated entries follow the marker line in its ``deps:`` list; every other line of
dvc.yaml (data, models, user/, params keys, comments) stays as it is.

    python scripts/dvc_deps.py          # rewrite dvc.yaml
    python scripts/dvc_deps.py --check  # exit 1 naming the stale stages (tests/test_scripts_dvc_deps.py runs it)
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "edgecompress"
MARKER = "# code the stage runs: written by scripts/dvc_deps.py from its imports (do not edit below)"
SOURCE_PREFIXES = ("src/", "stages/")  # where the code deps the generator owns live

_STAGE = re.compile(r"^  ([A-Za-z0-9_.-]+):\s*(#.*)?$")
_DEPS = re.compile(r"^( {4,})deps:\s*(#.*)?$")
_ITEM = re.compile(r"^(\s*)- (.*)$")


def find_modules(src: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``src``: dotted name -> file (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_by(path: Path, name: str | None, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``path`` (module ``name``; None for a script) imports or names, anywhere in it."""
    is_package = path.name == "__init__.py"
    here = (name if is_package else name.rpartition(".")[0]) if name else ""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, here)
            if base in modules:
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text in modules:  # `python -m edgecompress.deploy.runner`
                found.add(text)
            elif here and text.endswith(".py") and f"{here}.{text[:-3]}" in modules:  # with_name("runner.py")
                found.add(f"{here}.{text[:-3]}")
    return found - ({name} if name else set())


def _resolve(module: str | None, level: int, here: str) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in package ``here``."""
    if level == 0:
        return module or ""
    parts = here.split(".") if here else []
    base = parts[:len(parts) - (level - 1)] if level - 1 <= len(parts) else []
    return ".".join([*base, *([module] if module else [])])


def with_packages(names: set[str], modules: dict[str, Path]) -> set[str]:
    """``names`` and every package above them (Python runs a package's ``__init__`` before its modules)."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules}
    return out


def closure(roots: set[str], modules: dict[str, Path], memo: dict[str, set[str]] | None = None) -> set[str]:
    """Every module that importing ``roots`` can run (imports of imports, packages above them).

    ``memo`` (module -> what it imports) is shared between the stages of one dvc.yaml."""
    memo = {} if memo is None else memo
    seen: set[str] = set()
    todo = with_packages(roots, modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in memo:
            memo[name] = with_packages(imported_by(modules[name], name, modules), modules)
        todo |= memo[name] - seen
    return seen


def stage_sources(cmd: str, root: Path = ROOT, modules: dict[str, Path] | None = None,
                  memo: dict[str, set[str]] | None = None) -> list[str] | None:
    """Repository-relative code files a stage command runs: its script first, then the modules, sorted.

    None when the command runs no Python script of ours (the stage then has no generated deps)."""
    words = cmd.split()
    modules = find_modules(root / "src") if modules is None else modules
    if len(words) >= 3 and words[0].startswith("python") and words[1] == "-m" and words[2] in modules:
        script, roots = None, {words[2]}
    elif len(words) >= 2 and words[0].startswith("python") and words[1].endswith(".py"):
        script = words[1]
        if not (root / script).is_file():
            raise FileNotFoundError(f"{root / script} (the script of `{cmd}`) not found")
        roots = imported_by(root / script, None, modules)
    else:
        return None
    files = sorted(modules[m].relative_to(root).as_posix() for m in closure(roots, modules, memo))
    return ([script] if script else []) + files


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_source(line: str, root: Path) -> bool:
    """A deps entry that is code (a .py file or a Python package folder), so the generator's to write."""
    m = _ITEM.match(line)
    value = m.group(2).split(" #")[0].strip() if m else ""
    return value.startswith(SOURCE_PREFIXES) and (value.endswith(".py") or (root / value / "__init__.py").is_file())


def render(text: str, root: Path = ROOT) -> tuple[str, list[str], list[str]]:
    """``text`` (a dvc.yaml) with every stage's code deps rewritten: (new text, stale stages, problems).

    Inside a stage's ``deps:`` list, the lines other than code entries and the marker are kept in
    their order; the marker and the sorted code entries follow them."""
    stages = (yaml.safe_load(text) or {}).get("stages") or {}
    modules = find_modules(root / "src")
    memo: dict[str, set[str]] = {}  # module -> what it imports, shared by the stages
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stale: list[str] = []
    problems: list[str] = []
    done: set[str] = set()
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and not line.startswith((" ", "#")):
            stage = None  # a top-level key: the end of `stages:`
        if m := _STAGE.match(line):
            stage = m.group(1)
        m = _DEPS.match(line)
        if not (m and stage in stages):
            out.append(line)
            i += 1
            continue
        depth = len(m.group(1))
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > depth):
            j += 1
        while j > i + 1 and not lines[j - 1].strip():
            j -= 1  # trailing blank lines belong to what follows
        block = lines[i + 1:j]
        spec = stages[stage].get("do") or stages[stage]
        sources = stage_sources(str(spec.get("cmd", "")), root, modules, memo)
        if sources is not None:
            items = [ln for ln in block if _ITEM.match(ln)]
            pad = " " * (_indent(items[0]) if items else depth + 2)
            kept = [ln for ln in block if ln.strip() != MARKER and not _is_source(ln, root)]
            new = kept + [f"{pad}{MARKER}\n"] + [f"{pad}- {s}\n" for s in sources]
            if new != block:
                stale.append(stage)
            block = new
            done.add(stage)
        out += [line, *block]
        i = j
    for name, spec in stages.items():
        spec = spec.get("do") or spec
        if name not in done and stage_sources(str(spec.get("cmd", "")), root, modules, memo) is not None:
            problems.append(f"stage {name} runs {spec['cmd'].split()[1]} but has no `deps:` list to write its code into")
    return "".join(out), stale, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if dvc.yaml is stale")
    p.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    ns = p.parse_args(argv)
    text = ns.dvc_yaml.read_text()
    new, stale, problems = render(text)
    for problem in problems:
        print(f"[dvc_deps] {problem}", file=sys.stderr)
    if ns.check:
        if stale:
            print(f"[dvc_deps] {ns.dvc_yaml}: code deps out of date in stages {', '.join(stale)}; "
                  "run `python scripts/dvc_deps.py`", file=sys.stderr)
        return 1 if stale or problems else 0
    if new != text:
        ns.dvc_yaml.write_text(new)
    print(f"[dvc_deps] {ns.dvc_yaml}: " + (f"rewrote stages {', '.join(stale)}" if stale else "up to date"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
