"""What every benchmark shares: its common options, params and data loaded one way, and results that say
what made them.

A benchmark builds its parser with :func:`parser` and the ``add_*`` helpers (each keeps the script's own
default), starts its clock with :func:`parse`, loads params and data with :func:`load_params` /
:func:`load_data` (edgecompress's own readers, so a bad value is reported as ``params.yaml:data.key``),
and writes with :func:`write_results`: the JSON gains a ``provenance`` block (the exact command line,
the git commit and whether the tree was dirty, the machine and its software, the start time and the
wall seconds) and the markdown beside it a provenance line at the top, both written atomically.

Scripts run as ``python benchmarks/<name>.py`` find this module beside them (Python puts the script's
folder first on ``sys.path``); it puts ``src/`` on the path so a checkout works without an install.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from edgecompress import config as _config  # noqa: E402
from edgecompress.data import DataConfig, Dataset  # noqa: E402
from edgecompress.fileio import write_text  # noqa: E402

# Distributions whose versions decide a benchmark's numbers (read from metadata: nothing is imported).
VERSIONS = ("torch", "numpy", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "tflite-runtime", "tensorflow")


# ---------------------------------------------------------------------------------------------- options

def parser(doc: str | None, description: str | None = None) -> argparse.ArgumentParser:
    """A parser whose description is the first line of the script's docstring (or ``description``)."""
    return argparse.ArgumentParser(description=description if description is not None
                                   else (doc or "").strip().split("\n")[0])


def add_params(p: argparse.ArgumentParser, default: str | Path = "params.yaml") -> None:
    """``--params``: the params file the benchmark reads its sections from."""
    p.add_argument("--params", default=str(default), help=f"params file (default: {default})")


def add_limit(p: argparse.ArgumentParser, help: str = "data.limit: a smaller run, which the report says",
              default: int | None = None) -> None:
    """``--limit``: keep at most this many train and test images (a quick look)."""
    p.add_argument("--limit", type=int, default=default, help=help)


def add_seed(p: argparse.ArgumentParser, default: int = 0, help: str = "seed") -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def add_out(p: argparse.ArgumentParser, default: str | Path | None, help: str | None = None) -> None:
    """``--out``: where the results go (a file or a folder, as the script says)."""
    p.add_argument("--out", default=None if default is None else str(default), help=help)


@dataclass(frozen=True)
class Run:
    """One invocation: what was typed, where, and when it started (for the provenance block)."""

    argv: tuple[str, ...]
    cwd: str
    started: float  # time.time(), for the date
    clock: float  # time.perf_counter(), for the wall seconds

    @classmethod
    def start(cls, argv: list[str] | None = None) -> "Run":
        return cls(tuple(sys.argv if argv is None else [sys.argv[0], *argv]), os.getcwd(), time.time(),
                   time.perf_counter())

    @property
    def command(self) -> str:
        """The command line as a shell would take it back (each argument quoted where needed)."""
        return shlex.join(["python", *self.argv])

    def seconds(self) -> float:
        return time.perf_counter() - self.clock


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[argparse.Namespace, Run]:
    """Parse the command line and start the run's clock."""
    return p.parse_args(argv), Run.start(argv)


# ---------------------------------------------------------------------------------------- params, data

def load_params(path: str | Path = ROOT / "params.yaml") -> dict[str, Any]:
    """The params file, read as the stages read it (duplicate keys refused, errors name the file)."""
    return _config.load_params(path)


def data_config(params: dict[str, Any] | None = None, limit: int | None = None, path: str | None = None,
                where: str = "params.yaml") -> DataConfig:
    """The data to load: the ``data`` section of ``params`` (or, without params, the library's default,
    Fashion-MNIST at its standard place), with ``limit`` and ``path`` overriding when given."""
    sec = _config.section(params, "data", where) if params is not None else {}
    if limit:  # 0 / None: the section's own limit
        sec["limit"] = limit
    if path is not None:
        sec["path"] = path
    return _config.from_dict(DataConfig, sec, f"{where}:data")


def load_data(params: dict[str, Any] | None = None, limit: int | None = None, path: str | None = None,
              where: str = "params.yaml") -> Dataset:
    """The dataset of :func:`data_config`, loaded by edgecompress's loaders."""
    from edgecompress.data import load_dataset

    return load_dataset(data_config(params, limit, path, where))


# ------------------------------------------------------------------------------------------ provenance

def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def commit() -> dict[str, Any]:
    """The checkout's commit and whether files differ from it (tracked or untracked, not ignored)."""
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if head else None
    return {"commit": head, "dirty": None if status is None else bool(status)}


def machine() -> dict[str, Any]:
    """The runner's fingerprint (host, cpu, cores, os, python) and the installed versions that matter."""
    from importlib import metadata

    from edgecompress.deploy.runner import fingerprint

    versions: dict[str, str] = {}
    for dist in VERSIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {**fingerprint(), "versions": versions}


def provenance(run: Run) -> dict[str, Any]:
    """What made a results file: command, commit, machine, start time and wall seconds so far."""
    return {"command": run.command, "argv": list(run.argv), "cwd": run.cwd, **commit(), "machine": machine(),
            "started": datetime.fromtimestamp(run.started, timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(run.seconds(), 1)}


def provenance_line(prov: dict[str, Any]) -> str:
    """The markdown line at the top of a report: the same facts as the JSON block, in one sentence."""
    m = prov["machine"]
    sha = (prov["commit"] or "unknown")[:12] + (" + uncommitted changes" if prov["dirty"] else "")
    return (f"Provenance: `{prov['command']}` at commit {sha} on {m.get('hostname')} "
            f"({m.get('cpu_model')}, {m.get('cores')} cores, {m.get('os')}), started {prov['started']}, "
            f"{prov['wall_seconds']:.0f} s.")


def with_provenance(payload: Any, prov: dict[str, Any]) -> Any:
    """``payload`` with its ``provenance`` block (a re-render keeps the one of the run it re-renders)."""
    if not isinstance(payload, dict):
        return {"provenance": prov, "results": payload}
    earlier = payload.get("provenance")
    if earlier and earlier != prov:
        prov = {**prov, "rendered_from": earlier}
    return {**{k: v for k, v in payload.items() if k != "provenance"}, "provenance": prov}


def write_results(path: str | Path, payload: Any, run: Run, *, markdown: str | None = None,
                  md_path: str | Path | None = None, default: Callable[[Any], Any] | None = None,
                  newline: bool = True) -> dict[str, Any]:
    """Write ``payload`` as indented JSON at ``path`` with a ``provenance`` block, and ``markdown`` (when
    given) at ``md_path`` (default: ``path`` with ``.md``) with a provenance line on top; each file
    atomically, so a stopped run never leaves half a report. Returns the provenance block.

    ``default`` is json's fallback for values it cannot write (some benchmarks write ``str``); without
    it numpy values and paths are written as :func:`edgecompress.fileio.write_json` writes them.
    """
    prov = provenance(run)
    text = json.dumps(with_provenance(payload, prov), indent=2, default=default or _plain)
    write_text(path, text + ("\n" if newline else ""))
    if markdown is not None:
        write_markdown(Path(md_path) if md_path is not None else Path(path).with_suffix(".md"), markdown, prov)
    return prov


def _plain(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_markdown(path: str | Path, markdown: str, prov: dict[str, Any]) -> None:
    """``markdown`` with the provenance line on top, atomically."""
    write_text(path, provenance_line(prov) + "\n\n" + markdown)


def teachers_and_targets(params: dict[str, Any], models: str | Path, ds: Any, x: Any,
                         limit: int | None) -> tuple[list[Any], Any]:
    """(the teachers distill learns from: models/teacher.pt, then the members with distill.source ensemble;
    their soft targets): the distill stage's stored file, or recomputed for ``x`` on a --limit subset."""
    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.config import read
    from edgecompress.training.distill import DistillConfig
    from edgecompress.training.loop import crop_fill
    from edgecompress.training.soft_targets import compute_soft_targets, load_soft_targets
    from edgecompress.training.teacher import TeacherConfig

    distill, models = read(params, "distill", DistillConfig), Path(models)
    sources = [load_checkpoint(models / "teacher.pt")[0]]
    if distill.source == "ensemble":
        sources += [load_checkpoint(models / "members" / f"member-{i}.pt")[0]
                    for i in read(params, "train_teacher", TeacherConfig).members]
    st = compute_soft_targets(sources, x, crop_fill(ds), distill.views, distill.train) if limit \
        else load_soft_targets(models / "soft_targets.npz")
    return sources, st
