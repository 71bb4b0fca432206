"""training/students.py: students of other widths, distilled as the distill stage distils its own, join the pool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import from_dict, load_params
from edgecompress.errors import EdgeCompressError
from edgecompress.models import count_params
from edgecompress.training.distill import DistillConfig
from edgecompress.training.students import (StudentsConfig, save_students, student_config, student_name,
                                            students_metrics, train_students)
from edgecompress.validate import validate_params
from test_elastic import TINY_DISTILL, pool_around, stored_targets

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("section, match", [
    ({"widths": [0.97, 0]}, r"students.widths=\[0.97, 0\]: every width must be a number > 0"),
    ({"widths": [True]}, r"students.widths\[0\]=True: must be a number"),
    ({"widths": [0.971, 0.969]}, r"two widths round to the same name \(student-w097\); keep widths at least 0.01"),
    ({"epochs": 0}, r"students.epochs=0: give a whole number >= 1, or null for distill.train.epochs"),
    ({"widths": "0.97"}, "widths"),
    ({"width": [0.97]}, "did you mean"),
])
def test_config_errors_name_the_key_and_the_fix(section, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        from_dict(StudentsConfig, section, "params.yaml:students")


def test_names_and_the_recipe_follow_distill() -> None:
    assert [student_name(w) for w in (0.97, 1.75, 0.5, 2.0)] == ["student-w097", "student-w175", "student-w050",
                                                                 "student-w200"]
    distill = DistillConfig(**TINY_DISTILL, baseline=True)
    cfg = student_config(distill, StudentsConfig(widths=(0.5,), epochs=7), 0.5)
    assert (cfg.width, cfg.train.epochs, cfg.baseline) == (0.5, 7, False)
    assert (cfg.temperature, cfg.alpha, cfg.source, cfg.channels) == (distill.temperature, distill.alpha,
                                                                      distill.source, distill.channels)
    assert cfg.train.lr == distill.train.lr  # only the epochs change
    assert student_config(distill, StudentsConfig(widths=(0.5,)), 0.5).train.epochs == distill.train.epochs


def test_each_width_is_distilled_from_the_stored_targets_and_scored() -> None:
    ds, train, members, st = stored_targets(epochs=1)
    distill = DistillConfig(**TINY_DISTILL, train=train)
    students = train_students(ds, distill, StudentsConfig(widths=(0.5, 1.5), epochs=2), members[0], members[1:], st)
    assert [s.name for s in students] == ["student-w050", "student-w150"]
    small, big = students
    assert small.arch["channels"] == [4, 8, 8, 16, 16] and big.arch["channels"] == [12, 24, 24, 48, 48]
    assert count_params(small.model) < count_params(big.model)
    assert len(small.report["kd"]["history"]) == 2 and 0 <= small.report["kd"]["val"]["accuracy"] <= 1
    mine = DistillConfig(**{**TINY_DISTILL, "student": "user/mine.py:build"}, train=train)
    assert train_students(ds, mine, StudentsConfig(widths=(0.5,)), members[0], members[1:], st) == []


def test_saved_students_join_the_candidate_pool(tmp_path) -> None:
    ds, train, members, st = stored_targets(epochs=1)
    distill = DistillConfig(**TINY_DISTILL, train=train)
    students = train_students(ds, distill, StudentsConfig(widths=(0.5,), epochs=1), members[0], members[1:], st)
    out = tmp_path / "students"
    out.mkdir()
    (out / "student-w999.pt").write_bytes(b"stale")  # an earlier run's student this run did not make
    metrics = students_metrics(students, distill, StudentsConfig(widths=(0.5,), epochs=1), 1000)
    assert metrics["student-w050"]["width"] == 0.5 and metrics["student-w050"]["epochs"] == 1
    save_students(out, students, lambda r: {"stage": "students", "metrics": {"params": r["kd"]["params"]}})
    assert sorted(p.name for p in out.iterdir()) == ["student-w050.pt", "student-w050.pt.json"]
    model, meta = load_checkpoint(out / "student-w050.pt")
    assert meta["metrics"]["params"] == count_params(model)
    x = torch.from_numpy(ds.test.x[:4].astype("float32"))
    with torch.no_grad():  # the checkpoint is the trained network (memory formats differ: float rounding only)
        assert torch.allclose(model.eval()(x), students[0].model.eval()(x), atol=1e-5)
    models = pool_around(tmp_path, students[0].model, students[0].arch, students=out)
    assert [m.name for m in models] == ["teacher", "student", "pruned", "student-w050"]


def test_validate_checks_the_students_section() -> None:
    params = load_params(ROOT / "params.yaml")
    validate_params(params, targets_dir=ROOT / "targets")
    with pytest.raises(EdgeCompressError, match=r"students.widths=\[-1\]"):
        validate_params({**params, "students": {"widths": [-1]}}, targets_dir=ROOT / "targets")
    with pytest.raises(EdgeCompressError, match="unknown key 'width'|did you mean"):
        validate_params({**params, "students": {"width": [0.97]}}, targets_dir=ROOT / "targets")


def test_the_stage_without_widths_writes_empty_outputs_and_drops_stale_students(tmp_path) -> None:
    import subprocess
    import sys

    import yaml

    params = load_params(ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "students": {"widths": []}}))
    out = tmp_path / "students"
    out.mkdir()
    (out / "student-w097.pt").write_bytes(b"an earlier run's")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/students.py"), "--params", str(tmp_path / "params.yaml"),
                           "--teacher", str(tmp_path / "missing.pt"), "--soft-targets", str(tmp_path / "missing.npz"),
                           "--out", str(out), "--metrics", str(tmp_path / "m.json"), "--live", str(tmp_path / "live")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no students of other widths" in proc.stderr + proc.stdout
    assert list(out.iterdir()) == [] and (tmp_path / "live" / "plots" / "metrics").is_dir()
    assert (tmp_path / "m.json").read_text().strip().replace(" ", "").replace("\n", "") == '{"students":{}}'
