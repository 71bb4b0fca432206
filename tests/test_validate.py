"""Careless and hostile input: every bad value is one clear error before any work, corrupt files are
named, nothing is written outside the repository, and written files get the usual permissions."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from edgecompress.config import load_params
from edgecompress.errors import EdgeCompressError
from edgecompress.validate import remove_stale_members, validate_params
from tests.test_records import build_record_json

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


def _edited(edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    params = copy.deepcopy(PARAMS)
    edit(params)
    return params


# --- params: typed, range-checked, named, before any work --------------------------------------

BAD_PARAMS = [
    (lambda p: p["train_teacher"]["train"].update(epochs=1.5),
     r"params\.yaml:train_teacher\.train\.epochs=1\.5: must be an integer"),
    (lambda p: p["prune"].update(steps=1.5), r"params\.yaml:prune\.steps=1\.5: must be an integer"),
    (lambda p: p["distill"]["train"].update(lr="fast"), r"params\.yaml:distill\.train\.lr='fast': must be a number"),
    (lambda p: p["prune"].update(temperature="hot"), r"params\.yaml:prune\.temperature='hot': must be a number"),
    (lambda p: p["prune"].update(temperature=0), r"params\.yaml:prune: invalid value temperature=0: must be > 0"),
    (lambda p: p["prune"].update(ratio="abc"), r"params\.yaml:prune\.ratio='abc': must be a number"),
    (lambda p: p["prune"].update(finetnue={}),
     r"params\.yaml:prune: unknown key 'finetnue' \(did you mean 'finetune'\?\); allowed keys: .*source, temperature, alpha, finetune"),
    (lambda p: p["calibrate"].update(samples=True), r"calibrate\.samples=True: must be an integer"),
    (lambda p: p["export"].update(formats="int8.onnx"), r"params\.yaml:export: invalid value formats='int8\.onnx': must be a non-empty list"),
    (lambda p: p["data"].update(limit="all"), r"params\.yaml:data\.limit='all'"),
    (lambda p: p.update(purne={}), r"unknown section 'purne' \(did you mean 'prune'\?\)"),
    (lambda p: p["check"].update(targets=["../../../x"]),
     r"params\.yaml:check: invalid value targets: \['\.\./\.\./\.\./x'\] are not target names"),
    (lambda p: p["check"].update(targets=["host", "/etc/passwd"]), r"\['/etc/passwd'\] are not target names"),
    (lambda p: p["check"].update(strict="yes"), r"check\.strict='yes': must be true or false"),
    (lambda p: p["export"].update(formats=["fp32.onnx"]),
     r"mobile-cpu\.yaml: its build may use int8\.tflite, fp16\.tflite, fp32\.tflite, none of which the candidates "
     r"stage writes .*add one of them to export\.formats"),
    (lambda p: (p["train_teacher"].update(ensemble_size=3, members=[1, 2]),
                p["distill"].update(source="ensemble", heads=2)), r"distill\.heads=2 but the ensemble has 3 members"),
    (lambda p: p["distill"].update(source="ensemble"),  # the default teaches alone: ensemble_size 1
     r"distill\.source: ensemble needs train_teacher\.ensemble_size >= 2"),
    (lambda p: p["distill"]["train"].update(lr=float("nan")), r"distill\.train\.lr=nan: must be a finite number"),
    (lambda p: p["prune"].update(temperature=float("inf")), r"prune\.temperature=inf: must be a finite number"),
    (lambda p: p["prune"]["finetune"].update(seed=-1), r"prune\.finetune: invalid value seed=-1: must be >= 0"),
    (lambda p: p["cluster"].update(bits=12), r"params\.yaml:cluster: invalid value cluster\.bits=12: must be an integer in 2\.\.8"),
    (lambda p: p["cluster"].update(models=["teacher"]), r"cluster\.models=\['teacher'\]: must be a list of distinct names"),
    (lambda p: p["cluster"].update(models=["pruned-90"]),
     r"cluster\.models names \['pruned-90'\], which are not levels of the pruning ladder \(pruned-30, pruned-50, pruned-70\)"),
]


@pytest.mark.parametrize("edit, match", BAD_PARAMS)
def test_bad_params_are_named_before_any_work(edit: Callable[[dict[str, Any]], Any], match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match) as info:
        validate_params(_edited(edit), "params.yaml", REPO / "targets")
    assert "\n" not in str(info.value)


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("prune:\n  ratio: 0.3\n  steps: 2\n  ratio: 0.9\n")
    with pytest.raises(EdgeCompressError, match=r"params\.yaml is not valid YAML: .*key 'ratio' appears twice"):
        load_params(path)
    target = tmp_path / "t.yaml"
    target.write_text((REPO / "targets/host.yaml").read_text() + "\nruntime: {engine: litert}\n")
    from edgecompress.deploy.targets import load_target

    with pytest.raises(EdgeCompressError, match=r"t\.yaml: not valid YAML: .*key 'runtime' appears twice"):
        load_target(target)


def test_shipped_params_are_valid() -> None:
    cfg = validate_params(copy.deepcopy(PARAMS), "params.yaml", REPO / "targets")
    assert cfg["prune"].finetune.epochs == PARAMS["prune"]["finetune"]["epochs"]


def test_validate_stage_fails_first_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_edited(lambda p: p["prune"].update(steps=1.5))))
    out = tmp_path / "params.ok"
    proc = subprocess.run([sys.executable, str(REPO / "stages/validate.py"), "--params", str(path),
                           "--targets", str(REPO / "targets"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"prune\.steps=1\.5: must be an integer", proc.stderr) and not out.exists()


def test_stale_ensemble_members_are_removed(tmp_path: Path) -> None:
    metrics, models = tmp_path / "metrics", tmp_path / "models"
    for d in (metrics, models):
        d.mkdir()
    for i in (1, 2, 3, 4):
        (metrics / f"member-{i}.json").write_text("{}")
        (models / f"member-{i}.pt").write_bytes(b"")
        (models / f"member-{i}.pt.json").write_text("{}")
    (models / ".gitkeep").write_text("")
    removed = remove_stale_members((1,), [metrics, models])
    assert sorted(p.name for p in metrics.iterdir()) == ["member-1.json"]
    assert sorted(p.name for p in models.iterdir()) == [".gitkeep", "member-1.pt", "member-1.pt.json"]
    assert len(removed) == 9


# --- corrupt and missing files ------------------------------------------------------------------

def _truncated_npz(path: Path) -> Path:
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros((4, 1, 3, 3), np.uint8), y=np.zeros(4, np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_calibration_set(tmp_path: Path) -> None:
    from edgecompress.compression.export import load_calibration

    with pytest.raises(EdgeCompressError, match=r"calibration set .*c\.npz is unreadable or corrupt .*dvc repro -f calibrate"):
        load_calibration(_truncated_npz(tmp_path / "c.npz"))


def test_truncated_testset_in_the_runner_is_one_line(tmp_path: Path) -> None:
    from edgecompress.deploy.runner import RunnerError, load_testset

    with pytest.raises(RunnerError, match=r"test set .* is unreadable") as info:
        load_testset(_truncated_npz(tmp_path / "t.npz"))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_check_names_missing_artifacts_before_the_teacher(tmp_path: Path) -> None:
    """The host profile has max_drop: a missing export must be reported, not the teacher's absence."""
    from edgecompress.deploy.check import run_target_check

    with pytest.raises(EdgeCompressError, match=r"host\.yaml has a build section: check what its build chose "
                                                r"\(models/targets/host, dvc repro build@host\)"):
        run_target_check(REPO / "targets/host.yaml", tmp_path / "export", tmp_path / "export/testset.npz",
                         False, teacher=tmp_path / "missing-teacher.pt")
    # A build record whose artifact is gone: named, with the stage that writes it.
    _build_record(tmp_path / "built")
    with pytest.raises(EdgeCompressError, match=r"target host: artifact .*int8\.onnx not found; run the stage that "
                                                r"writes .* \(dvc repro build@host"):
        run_target_check(REPO / "targets/host.yaml", tmp_path / "built", tmp_path / "built/testset.npz",
                         False, teacher=tmp_path / "missing-teacher.pt")


def _build_record(d: Path, target: str = "host") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "build.json").write_text(json.dumps(build_record_json(target, "student/int8.onnx", "int8.onnx")))


def test_check_names_a_corrupt_testset(tmp_path: Path) -> None:
    from edgecompress.deploy.check import run_target_check

    d = tmp_path / "export"
    d.mkdir()
    (d / "int8.onnx").write_bytes(b"x")
    (d / "int8.onnx.json").write_text("{}")
    _build_record(d)
    _truncated_npz(d / "testset.npz")
    with pytest.raises(EdgeCompressError, match=r"test set .*testset\.npz is unreadable or corrupt"):
        run_target_check(REPO / "targets/host.yaml", d, d / "testset.npz", False, teacher=tmp_path / "t.pt")


def test_report_names_a_corrupt_check_result(tmp_path: Path) -> None:
    from edgecompress.report import load_checks

    (tmp_path / "host.json").write_text("{not json")
    with pytest.raises(EdgeCompressError, match=r"check result of host .*host\.json is not valid JSON"):
        load_checks(tmp_path, ("host",))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_cli_inspect_corrupt_or_sidecarless_files(tmp_path: Path) -> None:
    (tmp_path / "int8.onnx").write_bytes(b"x")
    (tmp_path / "int8.onnx.json").write_text("{truncated")
    bad = _cli("inspect", str(tmp_path / "int8.onnx"), cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "is not valid JSON" in bad.stderr
    (tmp_path / "calibration.npz").write_bytes(b"x")
    none = _cli("inspect", str(tmp_path / "calibration.npz"), cwd=tmp_path)
    assert none.returncode == 1 and "has no sidecar" in none.stderr and "other files do not" in none.stderr


def test_cli_targets_outside_a_repository_fails(tmp_path: Path) -> None:
    proc = _cli("targets", cwd=tmp_path)
    assert proc.returncode == 1 and "no target profiles in" in proc.stderr


# --- hints that fit the situation ---------------------------------------------------------------

def _session(profile_device: str, device: str | None = None, key_file: str | None = None) -> Any:
    from edgecompress.deploy.devices import parse_device, resolve_device
    from edgecompress.deploy.remote import Session
    from edgecompress.deploy.targets import load_target

    profile = load_target(REPO / "targets/raspberry-pi.yaml")
    profile = type(profile)(**{**profile.__dict__, "device": parse_device(profile_device)})
    override = {k: v for k, v in (("url", device), ("key_file", key_file)) if v}
    return Session(profile, resolve_device(profile.device, override or None))


def test_host_key_hint_names_the_port() -> None:
    with pytest.raises(EdgeCompressError, match=r"ssh-keygen -R '\[pi\.local\]:2222'"):
        _session("ssh://pi@pi.local:2222")._connection_error("Host key verification failed.", "copying")
    with pytest.raises(EdgeCompressError, match=r"ssh-keygen -R pi\.local and retry"):
        _session("ssh://pi@pi.local")._connection_error("Host key verification failed.", "copying")


def test_hints_name_the_flag_that_overrode_the_profile() -> None:
    s = _session("ssh://pi@pi.local", key_file="/k/id")
    assert s.setting("key_file") == "--key-file" and s.setting("url").startswith("device.url in ")
    with pytest.raises(EdgeCompressError, match=r"or set --key-file"):
        s._connection_error("Permission denied (publickey).", "copying")
    assert _session("local", device="ssh://me@box").setting("url") == "--device"


# --- what gets written ----------------------------------------------------------------------------

def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    from edgecompress.fileio import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_export_swap_leaves_no_scratch_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.compression.export import swap_in

    out = tmp_path / "models" / "export"
    out.mkdir(parents=True)
    (out / "old.onnx").write_text("old")
    src = tmp_path / "elsewhere"
    src.mkdir()
    (src / "new.onnx").write_text("new")

    rename = os.rename

    def cross_device(a: Any, b: Any) -> None:
        if Path(a) == src:  # the scratch dir is on another filesystem: the copy path
            raise OSError(18, "Invalid cross-device link")
        rename(a, b)

    monkeypatch.setattr(os, "rename", cross_device)
    swap_in(src, out)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["export"]
    assert sorted(p.name for p in out.iterdir()) == ["new.onnx"]


def test_checkpoint_sidecars_are_cached_outputs() -> None:
    """`dvc checkout` restores what dvc caches; a git-ignored, uncached sidecar would be lost for good."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sidecars = [out for s in stages.values() for out in (s.get("do") or s).get("outs", [])
                if str(next(iter(out)) if isinstance(out, dict) else out).endswith(".pt.json")]
    assert len(sidecars) == 4 and all(isinstance(o, str) for o in sidecars), sidecars


def test_report_gates_after_the_summary_lists_the_failure() -> None:
    from edgecompress.deploy.budgets import BY_NAME, BudgetRow
    from edgecompress.deploy.check import CheckedArtifact, CheckResult
    from edgecompress.report import pipeline_gate

    art = CheckedArtifact("int8.onnx", "onnx", "int8", 1, None)
    ok = CheckResult(target="pi", artifact=art, status="proxy-fail", failed=False)
    bad = CheckResult(target="host", artifact=art, status="fail", failed=True,
                      budgets=(BudgetRow(BY_NAME["accuracy"], 0.88, 0.8, missed=True),))
    assert pipeline_gate([ok], "reports/summary.md") is None
    err = pipeline_gate([ok, bad], "reports/summary.md")
    assert err is not None and re.search(r"target host missed budget\(s\).*see reports/summary\.md", str(err))
