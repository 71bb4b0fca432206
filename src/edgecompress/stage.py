"""Small helpers shared by the thin DVC stage scripts in stages/."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from edgecompress.checkpoint import load_checkpoint, params_hash
from edgecompress.data import DataConfig, Dataset, load_dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.training import distributed
from edgecompress.config import load_params, read, section


def setup(description: str, args: list[tuple[str, str]],
          optional: list[tuple[str, str]] | None = None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse the stage's path arguments (given by dvc.yaml; ``optional`` ones default to None) and read params.yaml."""
    p = argparse.ArgumentParser(description=description)
    for flag, help_ in args:
        p.add_argument(flag, required=True, help=help_)
    for flag, help_ in optional or []:
        p.add_argument(flag, help=help_)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ns = p.parse_args()
    # Reproducible and honest on small machines: fix threads to the cores we have.
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    distributed.init_from_env()  # under torchrun: join the process group (and share the cores)
    return ns, load_params(ns.params)


def main_process() -> bool:
    """Whether this process writes the stage's outputs: always, but under torchrun only rank 0."""
    return distributed.is_main_process()


def data(params: dict[str, Any]) -> Dataset:
    """Load the dataset described by the ``data`` section."""
    return load_dataset(read(params, "data", DataConfig))


def load_members(directory: str | None, indices: list[int] | tuple[int, ...], why: str) -> dict[str, torch.nn.Module]:
    """Deep-ensemble members ``member-<i>`` (the train_member@i outputs) in ``indices`` order.

    ``why`` names the setting that needs them, so a missing file or directory says what to change.
    """
    if not directory:
        raise EdgeCompressError(f"{why} needs the ensemble members but the stage got no --members directory; "
                                "add `--members models/members` to its cmd in dvc.yaml")
    members = {}
    for i in indices:
        path = Path(directory) / f"member-{i}.pt"
        if not path.exists():
            raise EdgeCompressError(f"{path} missing ({why}): run `dvc repro train_member@{i}`")
        members[f"member-{i}"] = load_checkpoint(path)[0]
    return members


def log_curves(directory: str | Path | None, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Per-epoch training curves (``runs``: name -> ``fit`` history) as dvclive plots in ``directory``:
    ``dvc plots show`` draws them, ``dvc exp show`` compares the last values across experiments."""
    if not directory:
        return
    from dvclive import Live  # heavy import, only where curves are written

    with Live(str(directory), save_dvc_exp=False, dvcyaml=False, report=None) as live:
        for step in range(max((len(h) for h in runs.values()), default=0)):
            for name, history in runs.items():
                for key, value in (history[step] if step < len(history) else {}).items():
                    if key not in ("epoch", "seconds") and isinstance(value, (int, float)):
                        live.log_metric(f"{name}/{key}", value)
            live.next_step()


def meta(ds: Dataset, params: dict[str, Any], stage: str, parent: str | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint carries: data stats, the stage's params + hash, parent, metrics."""
    sec = {"data": section(params, "data"), stage: section(params, stage)}
    return {"stage": stage, "data": ds.meta(), "params": sec, "params_hash": params_hash(sec),
            "parent": parent, "metrics": metrics}

