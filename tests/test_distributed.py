"""Training stages under torchrun: two gloo processes on the CPU give one set of outputs, written
once, and a model as accurate (within a tolerance) as the single-process run on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_e2e_dvc import _write_idx

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path) -> Path:
    data = tmp_path / "idx"
    data.mkdir()
    _write_idx(data, n_train=600, n_test=200)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(path=str(data))
    params["train_teacher"].update(stem=8, widths=[16, 32], blocks=[1, 1], ensemble_size=1, members=[])
    params["train_teacher"]["train"].update(epochs=4, batch_size=32, lr=0.1, flip=False, crop_pad=0)  # crops would shift the class bands
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _teacher(params: Path, out: Path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([*launcher, str(REPO / "stages/train_teacher.py"), "--params", str(params),
                           "--out", str(out / "teacher.pt"), "--metrics", str(out / "teacher.json")],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_train_teacher_under_torchrun_two_processes(tmp_path: Path) -> None:
    params = _params(tmp_path)
    single = _teacher(params, tmp_path / "single", [sys.executable])
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = _teacher(params, tmp_path / "ddp", torchrun)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Rank 0 alone writes and reports: one closing line, one line per epoch.
    assert ddp.stderr.count("[train_teacher] done in") == 1, ddp.stderr[-3000:]
    assert ddp.stderr.count("[teacher] epoch=4 ") == 1
    a = json.loads((tmp_path / "single/teacher.json").read_text())["test"]["accuracy"]
    b = json.loads((tmp_path / "ddp/teacher.json").read_text())["test"]["accuracy"]
    assert b > 0.8 and abs(a - b) <= 0.1, (a, b)  # each process sees half of every batch: not bitwise
    from edgecompress.checkpoint import load_checkpoint

    model, meta = load_checkpoint(tmp_path / "ddp/teacher.pt")
    assert meta["metrics"]["test"]["accuracy"] == b
