"""End to end with the user's own teacher: `dvc repro` on a tiny subset with it as a module (code +
weights), as a torch.export program and as an ONNX graph, and with the user's own student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgecompress.config import from_dict
from edgecompress.data import DataConfig, load_dataset
from tests.test_e2e_dvc import _dvc, _tiny_repo
from tests.test_usermodel import write_user_forms

# The user's file: the benchmark's network (inverted residuals with squeeze-excite and a concatenation
# branch) at a small width, and a student of the user's own.
USER_FILE = (Path(__file__).resolve().parents[1] / "benchmarks" / "user_model.py").read_text() + '''

def small(num_classes, in_channels, image_size):
    return UserNet(num_classes, in_channels, width=16)


def tiny_student(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


def _user_files(work: Path, params: dict) -> None:
    """user/my_models.py, its trained weights (a short run on the tiny subset), the .pt2 and the .onnx."""
    user = work / "user"
    (user / "my_models.py").write_text(USER_FILE)
    ds = load_dataset(from_dict(DataConfig, params["data"]))
    write_user_forms(f"{user}/my_models.py:small", ds, 3, user / "teacher.pt", user / "teacher.pt2",
                     user / "teacher.onnx")


def _repro(work: Path, params: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    run = _dvc(work, "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def _json(work: Path, name: str) -> dict:
    return json.loads((work / name).read_text())


@pytest.mark.slow
def test_dvc_repro_with_the_users_teacher(tmp_path: Path) -> None:
    work, params = _tiny_repo(tmp_path)
    _user_files(work, params)
    params["train_teacher"].update(source="module", model="user/my_models.py:small", weights="user/teacher.pt",
                                   ensemble_size=1, members=[])
    params["distill"].update(source="teacher")
    params["prune"].update(source_model="teacher")
    params["check"]["targets"] = ["tiny-host"]
    assert _dvc(work, "init", "--no-scm", "-q").returncode == 0

    # module: the user's network is the teacher and is pruned itself (self-distilled), then shipped.
    _repro(work, params)
    teacher = _json(work, "metrics/teacher.json")
    assert teacher["macs"] > 0 and teacher["test"]["accuracy"] > 0.2
    assert _json(work, "models/teacher.pt.json")["arch"]["kind"] == "user"
    pruned = _json(work, "metrics/prune.json")
    assert pruned["after"]["params"] < pruned["before"]["params"] and pruned["after"]["macs"] < pruned["before"]["macs"]
    assert pruned["before"]["params"] == teacher["params"]  # the teacher itself, not our student
    assert _json(work, "models/pruned.pt.json")["arch"]["form"] == "module"
    export = _json(work, "metrics/export.json")
    assert export["fp32.onnx"]["top1_agreement"] == 1.0 and export["fp32.tflite"]["top1_agreement"] == 1.0
    index = _json(work, "models/candidates/index.json")
    assert {c["model"] for c in index["candidates"]} == {"teacher", "student", "pruned-30", "pruned-50",
                                                         "student-c4", "pruned-30-c4", "pruned-50-c4", "student-w175"}
    # The pruned user's module, weight-clustered like our students: at most 16 values in every layer.
    assert all(0 < n <= 16 for n in _json(work, "metrics/cluster.json")["pruned-30-c4"]["distinct_values"].values())
    assert _json(work, "metrics/check/tiny-host.json")["status"] == "pass"

    # exported: the .pt2 teaches our student and the user's own student; the student is pruned.
    params["train_teacher"].update(source="exported", model="user/teacher.pt2", weights=None)
    # round_to 1: its 8- and 16-channel layers floored to multiples of 4 lose 50% at a 30% prune, which the
    # prune stage refuses (#26); exact counts reach each level.
    params["prune"].update(source_model="student", round_to=1)
    params["distill"].update(student="user/my_models.py:tiny_student")
    _repro(work, params)
    assert _json(work, "metrics/teacher.json")["macs"] == teacher["macs"]  # counted by PyTorch's FLOP counter
    assert abs(_json(work, "metrics/teacher.json")["test"]["accuracy"] - teacher["test"]["accuracy"]) < 1e-6
    assert _json(work, "models/student.pt.json")["arch"]["model"] == "user/my_models.py:tiny_student"
    index = _json(work, "models/candidates/index.json")
    assert "teacher" not in {c["model"] for c in index["candidates"]} and index["reference"]["model"] == "teacher"
    assert "student-w175" not in {c["model"] for c in index["candidates"]}  # the user's student has no width
    assert _json(work, "metrics/check/tiny-host.json")["status"] == "pass"

    # onnx: onnxruntime runs the teacher for response KD; MACs are not countable through it.
    params["train_teacher"].update(source="onnx", model="user/teacher.onnx")
    params["distill"].update(student=None)
    _repro(work, params)
    onnx_teacher = _json(work, "metrics/teacher.json")
    assert onnx_teacher["macs"] is None and 0 < onnx_teacher["params"] <= teacher["params"]
    assert abs(onnx_teacher["test"]["accuracy"] - teacher["test"]["accuracy"]) < 0.02
    assert _json(work, "models/student.pt.json")["arch"]["kind"] == "mobilenet"
    assert _json(work, "metrics/export.json")["int8.onnx"]["top1_agreement"] > 0.8
    assert _json(work, "metrics/check/tiny-host.json")["status"] == "pass"

    # Asking an ONNX teacher for what needs its layers fails before any training, naming the fix.
    params["prune"].update(source_model="teacher")
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    refused = _dvc(work, "repro")
    assert refused.returncode != 0
    assert "prune.source_model: teacher" in refused.stdout + refused.stderr
    assert "source: module" in refused.stdout + refused.stderr
