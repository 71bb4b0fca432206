"""Issue #26 (9): a fresh `git clone` runs the README's bring-your-own settings.

distill, prune, uncertainty and candidates depend on models/members, which only member stages fill; with
`ensemble_size: 1, members: []` nothing creates it, so it must come with every checkout as
models/members/.gitkeep. Other end-to-end tests copy the working tree; these clone what is committed (so
they fail until a fix is committed, as CI on a clean clone would).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# The README's "Bring your own model", option 1 (module: code + weights), at a tiny size.
USER_MODELS = '''
from torch import nn


def build_classifier(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


def _clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    work = tmp_path / "clone"
    run = subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(work)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return work


def test_a_clone_has_the_members_directory(tmp_path: Path) -> None:
    work = _clone(tmp_path)
    assert (work / "models/members/.gitkeep").is_file(), "models/members/.gitkeep is not committed"
    ignored = subprocess.run(["git", "check-ignore", "-q", "models/members/.gitkeep"], cwd=work)
    assert ignored.returncode == 1  # 1: not ignored, so `git add` picks it up


@pytest.mark.slow
def test_dvc_repro_distill_with_a_brought_teacher_on_a_fresh_clone(tmp_path: Path) -> None:
    work = _clone(tmp_path)
    (work / "user/my_models.py").write_text(USER_MODELS)
    ns: dict = {}
    exec(USER_MODELS, ns)
    torch.manual_seed(0)
    torch.save(ns["build_classifier"](10, 1, 28).state_dict(), work / "user/teacher.pt")

    params = yaml.safe_load((work / "params.yaml").read_text())
    if FMNIST.exists():
        params["data"].update(limit=300)
    else:
        from tests.test_e2e_dvc import _write_idx

        data = tmp_path / "idx"
        data.mkdir()
        _write_idx(data)
        params["data"].update(path=str(data))
    # The README's settings: the user's module is the teacher, no ensemble members, our student learns from it.
    params["train_teacher"].update(source="module", model="user/my_models.py:build_classifier",
                                   weights="user/teacher.pt", ensemble_size=1, members=[])
    params["distill"].update(source="teacher", baseline=False)
    params["distill"]["train"]["epochs"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc.yaml runs `python`
    env["PYTHONPATH"] = str(work / "src")  # the clone's code, not this checkout's
    dvc = shutil.which("dvc", path=env["PATH"]) or "dvc"
    run = subprocess.run([dvc, "repro", "distill"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "No such file or directory" not in out
    assert (work / "models/student.pt").is_file() and (work / "metrics/distill.json").is_file()
    assert sorted(p.name for p in (work / "models/members").iterdir()) == [".gitkeep"]
