"""Stage entry points fail cleanly on bad params: one message naming the key, exit 1, no outputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# Each case starts the stage (seconds of torch import): the fast lane leaves out (slow) the two whose config
# errors are also checked in-process (test_data.py, test_models_train.py); CI runs all five.
@pytest.mark.parametrize("edit, message", [
    (lambda p: p["train_teacher"]["train"].update(epochz=3), r"train_teacher.train: unknown key 'epochz' \(did you mean 'epochs'\?\)"),
    (lambda p: p["train_teacher"].update(widths=[32, 64], blocks=[1]), "equal length"),
    pytest.param(lambda p: p["data"].update(format="tfrecord"), "tfrecord", marks=pytest.mark.slow),
    (lambda p: p["data"].update(path="/nonexistent/fmnist"), "/nonexistent/fmnist"),
    pytest.param(lambda p: p["train_teacher"]["train"].update(lr=-0.1), "lr", marks=pytest.mark.slow),
])
def test_train_teacher_rejects_bad_params(tmp_path: Path, edit, message: str) -> None:
    params = _params(tmp_path, edit)
    out = tmp_path / "models" / "teacher.pt"
    proc = subprocess.run([sys.executable, str(REPO / "stages/train_teacher.py"), "--params", str(params),
                           "--out", str(out), "--metrics", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("edgecompress: error:")]
    assert len(err) == 1, proc.stderr
    assert re.search(message, err[0]), err[0]
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_a_warm_started_member_names_the_missing_teacher(tmp_path: Path) -> None:
    out = tmp_path / "models" / "members" / "member-1.pt"
    # The default teaches alone; an ensemble of 3 has members 1 and 2, warm-started from the teacher.
    params = _params(tmp_path, lambda p: p["train_teacher"].update(ensemble_size=3, members=[1, 2]))
    proc = subprocess.run([sys.executable, str(REPO / "stages/train_teacher.py"), "--params", str(params),
                           "--member", "1", "--teacher", str(tmp_path / "teacher.pt"), "--out", str(out),
                           "--metrics", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "teacher.pt is missing: run `dvc repro train_teacher` first, or set member_init: scratch" in proc.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_export_stage_reports_a_missing_parent(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "stages/export.py"), "--params", str(REPO / "params.yaml"),
                           "--model", str(tmp_path / "pruned.pt"), "--calibration", str(tmp_path / "c.npz"),
                           "--out", str(tmp_path / "export"), "--metrics", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pruned.pt does not exist" in proc.stderr
    assert not (tmp_path / "export").exists()


def _prune_stage(tmp_path: Path, params: Path, members: Path | None, student=None,
                 member_ids: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """The prune stage on tiny checkpoints written here: ``student`` (default a plain MobileNet), a
    MobileNet teacher, and that teacher again as ``members/member-<i>.pt`` for each of ``member_ids``."""
    from edgecompress.checkpoint import save_checkpoint
    from edgecompress.models import MobileNetStudent, arch_of

    teacher = MobileNetStudent(1, 4, [8, 16], [2])  # any classifier can teach: the stage only needs its logits
    student = student if student is not None else teacher
    save_checkpoint(tmp_path / "student.pt", student, arch_of(student), {})
    save_checkpoint(tmp_path / "teacher.pt", teacher, arch_of(teacher), {})
    for i in member_ids:
        save_checkpoint(members / f"member-{i}.pt", teacher, arch_of(teacher), {})
    cmd = [sys.executable, str(REPO / "stages/prune.py"), "--params", str(params), "--student", str(tmp_path / "student.pt"),
           "--teacher", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "pruned.pt"), "--metrics", str(tmp_path / "m.json")]
    if members is not None:
        cmd += ["--members", str(members)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("source, members, message", [
    ("ensembel", "members", r"params.yaml:prune: invalid value source='ensembel': allowed \['teacher', 'ensemble', 'auto'\]"),
    ("ensemble", None, r"prune.source: ensemble needs the ensemble members .*--members models/members"),
    ("ensemble", "members", r"member-1.pt missing \(prune.source: ensemble\): run `dvc repro train_member@1`"),
])
def test_prune_stage_names_a_bad_source_or_missing_members(tmp_path: Path, source: str, members: str | None,
                                                           message: str) -> None:
    # An ensemble of 3 (the default teaches alone, which validation refuses prune.source: ensemble for).
    params = _params(tmp_path, lambda p: (p["prune"].update(source=source),
                                          p["train_teacher"].update(ensemble_size=3, members=[1, 2])))
    (tmp_path / "members").mkdir()
    proc = _prune_stage(tmp_path, params, tmp_path / members if members else None)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("edgecompress: error:")]
    assert len(err) == 1 and re.search(message, err[0]), proc.stderr
    assert not (tmp_path / "pruned.pt").exists() and not (tmp_path / "m.json").exists()


def test_prune_stage_names_a_multihead_student_without_its_distill_params(tmp_path: Path) -> None:
    from edgecompress.models import MobileNetStudent
    from edgecompress.training.multihead import MultiHeadStudent

    mh = MultiHeadStudent(MobileNetStudent(1, 4, [8, 16], [2]), num_heads=2)
    (tmp_path / "members").mkdir()
    params = _params(tmp_path, lambda p: p["train_teacher"].update(ensemble_size=2, members=[1]))
    proc = _prune_stage(tmp_path, params, tmp_path / "members", student=mh, member_ids=(1,))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "without the distill params" in proc.stderr and "prune.source: teacher" in proc.stderr
    assert not (tmp_path / "pruned.pt").exists()


def test_training_curves_for_dvc_plots(tmp_path: Path) -> None:
    from edgecompress.stage import log_curves

    history = [{"epoch": e, "loss": 1.0 / e, "lr": 0.1, "val_accuracy": 0.5 + e / 10, "seconds": 3.0} for e in (1, 2, 3)]
    log_curves(tmp_path / "live", {"student": history, "baseline": history[:2]})
    rows = (tmp_path / "live/plots/metrics/student/val_accuracy.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["step", "val_accuracy"] and len(rows) == 4
    assert len((tmp_path / "live/plots/metrics/baseline/loss.tsv").read_text().splitlines()) == 3
    assert not (tmp_path / "live/plots/metrics/student/seconds.tsv").exists()  # timings are not curves
