"""Hostile and careless model files (issue #26, part A): a .pt2 that would run code while loading, a factory
outside user/, a checkpoint that names code elsewhere; checkpoints byte-identical between identical runs;
an ONNX teacher without inputs and a program exported for one batch size named in one line.

Every payload would touch a marker file when run: each test asserts the marker never appears."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from edgecompress.config import load_params
from edgecompress.errors import EdgeCompressError
from tests.test_e2e_dvc import _write_idx

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a pickle that would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _net(channels: int = 1, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, 2, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, classes)).eval()


def _pt2(path: Path, size: int = 28, classes: int = 10, dynamic: bool = True) -> Path:
    x = torch.zeros(2, 1, size, size)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(_net(1, classes), (x,), dynamic_shapes=shapes), str(path))
    return path


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """Copy the archive ``src`` to ``dst``, passing every member through ``edit(name, data)``."""
    with zipfile.ZipFile(src) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in items:
            z.writestr(name, edit(name, data))
    return dst


def _pickled_sample_inputs(marker: Path) -> Callable[[str, bytes], bytes]:
    # torch.export.load tries weights_only, then falls back to weights_only=False on the sample inputs.
    return lambda name, data: _payload_bytes(marker) if name.endswith("sample_inputs/model.pt") else data


def _pickled_weight(marker: Path) -> Callable[[str, bytes], bytes]:
    # The archive's pickle path: a weight with use_pickle is read with torch.load(weights_only=False).
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return _payload_bytes(marker) if name.endswith("weights/weight_0") else data
    return edit


def _evaluated_shape(marker: Path) -> Callable[[str, bytes], bytes]:
    # Shape expressions are parsed with sympy.sympify, an eval.
    code = f"__import__('builtins').open('{marker}', 'w') and Symbol('s".encode()
    return lambda name, data: data.replace(b"Symbol('s", code, 1) if name.endswith("models/model.json") else data


def _operator_call(marker: Path) -> Callable[[str, bytes], bytes]:
    # A node may name any torch.* callable; only registered operators may run.
    return lambda name, data: (data.replace(b'"torch.ops.aten.relu.default"', b'"torch.ops.load_library"', 1)
                               if name.endswith("models/model.json") else data)


HOSTILE_PT2 = {"sample inputs": (_pickled_sample_inputs, r"member .*sample_inputs/model\.pt is a pickle that holds "
                                                        r"more than tensors and would run code"),
               "pickled weight": (_pickled_weight, r"member .*weights/weight_0 is a pickle that holds more than "
                                                   r"tensors .*Unsupported global: GLOBAL io\.open was not an allowed global by default\)"),
               "shape expression": (_evaluated_shape, r"member .*models/model\.json: shape expression .* is not a plain sympy "
                                                      r"expression"),
               "operator": (_operator_call, r"member .*models/model\.json: the graph calls 'torch\.ops\.load_library', which is not a registered "
                                            r"torch operator")}


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


# --- 1. a torch.export program that runs code when loaded ---------------------------------------------

def test_the_hostile_archives_would_run_their_payload(tmp_path: Path) -> None:
    """The threat is real: torch.export.load on two of the archives touches the marker."""
    good = _pt2(tmp_path / "good.pt2")
    for make in (_pickled_sample_inputs, _evaluated_shape):
        marker = tmp_path / f"marker-{make.__name__}"
        try:
            torch.export.load(str(_rewrite(good, tmp_path / "bad.pt2", make(marker))))
        except Exception:
            pass
        assert marker.exists(), make.__name__
        marker.unlink()


@pytest.mark.parametrize("kind", list(HOSTILE_PT2))
def test_a_hostile_pt2_is_refused_before_torch_loads_it(kind: str, tmp_path: Path) -> None:
    from edgecompress.usermodel import UserModelSpec, load_exported, load_user_model

    make, match = HOSTILE_PT2[kind]
    marker = tmp_path / "MARKER"
    good = _pt2(tmp_path / "good.pt2", size=12, classes=4)
    bad = _rewrite(good, tmp_path / "teacher.pt2", make(marker))
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.model: .*teacher\.pt2 " + match) as e:
        load_user_model(UserModelSpec("exported", str(bad)), (1, 12, 12), 4)
    assert "export the model again with torch.export.save" in _one_line(e)
    with pytest.raises(EdgeCompressError, match=match):
        load_exported(bad)
    assert not marker.exists()
    # The same archive untouched still loads and classifies: the check refuses the payload, not the format.
    assert load_user_model(UserModelSpec("exported", str(good)), (1, 12, 12), 4)(torch.zeros(5, 1, 12, 12)).shape == (5, 4)


def test_compiled_code_and_foreign_zips_are_refused(tmp_path: Path) -> None:
    from edgecompress.usermodel import load_exported

    good = _pt2(tmp_path / "good.pt2")
    aoti = tmp_path / "aoti.pt2"
    with zipfile.ZipFile(aoti, "w") as z:
        with zipfile.ZipFile(good) as g:
            for i in g.infolist():
                z.writestr(i.filename, g.read(i))
        z.writestr("good/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(EdgeCompressError, match=r"member good/data/aotinductor/model/model\.so is compiled code"):
        load_exported(aoti)
    state = tmp_path / "weights.pt2"
    torch.save(_net().state_dict(), state)
    with pytest.raises(EdgeCompressError, match=r"weights\.pt2 is not a torch\.export program"):
        load_exported(state)


def test_a_checkpoint_naming_a_hostile_pt2_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint whose arch names a .pt2 (with its true sha256) goes through the same check."""
    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.dirs import file_sha256

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    (tmp_path / "user").mkdir()
    bad = _rewrite(_pt2(tmp_path / "good.pt2"), tmp_path / "user/teacher.pt2", _pickled_weight(marker))
    arch = {"kind": "user", "form": "exported", "model": "user/teacher.pt2", "num_classes": 10, "in_channels": 1,
            "image_size": 28, "sha256": file_sha256(bad)}
    torch.save({"arch": arch, "meta": {}, "state_dict": {}}, tmp_path / "teacher.pt")
    with pytest.raises(EdgeCompressError, match=r"checkpoint teacher\.pt: user/teacher\.pt2 member .* is a pickle "
                                                r"that holds more than tensors") as e:
        load_checkpoint("teacher.pt")
    _one_line(e)
    assert not marker.exists()


# --- the stage and the CLI, as subprocesses: exit 1, one line, no traceback -------------------------------

@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A repository to run stages in: user/, a tiny IDX dataset (1x28x28, 10 classes), params.yaml."""
    work = tmp_path / "repo"
    (work / "user").mkdir(parents=True)
    data = tmp_path / "idx"
    data.mkdir()
    _write_idx(data, 60, 20)
    params = json.loads(json.dumps(PARAMS))
    params["data"].update(path=str(data), limit=None)
    params["train_teacher"].update(ensemble_size=1, members=[])
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return work


def _teacher_params(work: Path, **teacher: object) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train_teacher"].update(teacher)
    (work / "params.yaml").write_text(yaml.safe_dump(params))


def _run(work: Path, *cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *cmd], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgecompress: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return proc


def _train_teacher(work: Path) -> subprocess.CompletedProcess:
    proc = _run(work, str(REPO / "stages/train_teacher.py"), "--out", "models/teacher.pt", "--metrics",
                "metrics/teacher.json")
    assert not (work / "models/teacher.pt").exists()
    return proc


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
@pytest.mark.parametrize("kind", ["sample inputs", "pickled weight"])
def test_train_teacher_stage_refuses_a_hostile_pt2(kind: str, work: Path) -> None:
    marker = work.parent / "MARKER"
    _rewrite(_pt2(work.parent / "good.pt2"), work / "user/teacher.pt2", HOSTILE_PT2[kind][0](marker))
    _teacher_params(work, source="exported", model="user/teacher.pt2")
    proc = _train_teacher(work)
    assert "train_teacher.model: user/teacher.pt2 member" in proc.stderr and "would run code" in proc.stderr
    assert not marker.exists()


# --- 2. a factory (or weights, init, student) outside user/ ------------------------------------------------

def _evil_py(path: Path, marker: Path) -> Path:
    """A factory file whose import touches the marker."""
    path.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef build(num_classes, in_channels, image_size):\n"
                    f"    raise SystemExit('never called')\n")
    return path


def _outside(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/repo/user (the repository's) and tmp/elsewhere/evil.py beside it; returns (repo, marker)."""
    repo, marker = tmp_path / "repo", tmp_path / "MARKER"
    (repo / "user").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    _evil_py(tmp_path / "elsewhere/evil.py", marker)
    torch.save(_net().state_dict(), tmp_path / "elsewhere/weights.pt")
    torch.save(_net().state_dict(), repo / "user/weights.pt")
    os.symlink(tmp_path / "elsewhere/evil.py", repo / "user/link.py")  # a link out of user/
    return repo, marker


ESCAPES = [
    ({"train_teacher": {"source": "module", "model": "user/../../elsewhere/evil.py:build", "weights": "user/weights.pt"}},
     r"train_teacher\.model: user/\.\./\.\./elsewhere/evil\.py is outside user/"),
    ({"train_teacher": {"source": "module", "model": "user/link.py:build", "weights": "user/weights.pt"}},
     r"train_teacher\.model: user/link\.py is outside user/"),
    ({"train_teacher": {"source": "module", "model": "user/weights.pt", "weights": "user/../../elsewhere/weights.pt"}},
     r"train_teacher\.weights: user/\.\./\.\./elsewhere/weights\.pt is outside user/"),
    ({"train_teacher": {"init": "user/../../elsewhere/weights.pt"}},
     r"train_teacher\.init: user/\.\./\.\./elsewhere/weights\.pt is outside user/"),
    ({"distill": {"student": "user/../../elsewhere/evil.py:build"}},
     r"distill\.student: user/\.\./\.\./elsewhere/evil\.py is outside user/"),
    ({"distill": {"student": "user/link.py:build"}}, r"distill\.student: user/link\.py is outside user/"),
]


@pytest.mark.parametrize("edit, match", ESCAPES)
def test_paths_that_leave_user_are_refused_by_validation(edit: dict, match: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.validate import validate_params

    repo, marker = _outside(tmp_path)
    monkeypatch.chdir(repo)
    params = json.loads(json.dumps(PARAMS))
    params["train_teacher"].update(ensemble_size=1, members=[])
    params["distill"].update(source="teacher")
    for section, values in edit.items():
        params[section].update(values)
    with pytest.raises(EdgeCompressError, match=r"params\.yaml: " + match) as e:
        validate_params(params, "params.yaml", REPO / "targets")
    _one_line(e)
    assert not marker.exists()


def test_validate_stage_refuses_a_student_outside_user(tmp_path: Path) -> None:
    repo, marker = _outside(tmp_path)
    params = json.loads(json.dumps(PARAMS))
    params["distill"].update(student="user/../../elsewhere/evil.py:build")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _run(repo, str(REPO / "stages/validate.py"), "--params", "params.yaml", "--targets", str(REPO / "targets"),
                "--out", "params.ok")
    assert "distill.student: user/../../elsewhere/evil.py is outside user/" in proc.stderr
    assert not (repo / "params.ok").exists() and not marker.exists()


def test_train_teacher_refuses_a_factory_outside_user_without_validation(work: Path) -> None:
    """The stage run on its own (no validate stage first): the library checks before it imports."""
    marker = work.parent / "MARKER"
    (work.parent / "elsewhere").mkdir()
    _evil_py(work.parent / "elsewhere/evil.py", marker)
    torch.save(_net().state_dict(), work / "user/weights.pt")
    _teacher_params(work, source="module", model="user/../../elsewhere/evil.py:build", weights="user/weights.pt")
    proc = _train_teacher(work)
    assert "train_teacher.model: user/../../elsewhere/evil.py is outside user/" in proc.stderr
    assert not marker.exists()


# --- 3. a checkpoint that names code -----------------------------------------------------------------------

def _user_checkpoint(path: Path, model: str, **extra: object) -> Path:
    """A checkpoint weights_only accepts (dicts, strings) whose arch names a factory."""
    arch = {"kind": "user", "form": "module", "model": model, "num_classes": 10, "in_channels": 1, "image_size": 28,
            "layer_shapes": {}, **extra}
    torch.save({"arch": arch, "meta": {"data": {"input_shape": [1, 28, 28], "mean": [0.5], "std": [0.25]}},
                "state_dict": {}}, path)
    assert torch.load(path, weights_only=True)["arch"]["model"] == model  # no code in the file itself
    return path


def _checkpoints(tmp_path: Path, repo: Path, marker: Path) -> list[tuple[Path, str]]:
    from edgecompress.dirs import file_sha256

    _evil_py(repo / "user/changed.py", marker)
    sha = file_sha256(repo / "user/changed.py")
    (repo / "user/changed.py").write_text((repo / "user/changed.py").read_text() + "# edited\n")
    return [(_user_checkpoint(repo / "abs.pt", f"{tmp_path}/elsewhere/evil.py:build"),
             r"arch\.model: .*/elsewhere/evil\.py is outside user/"),
            (_user_checkpoint(repo / "dots.pt", "user/../../elsewhere/evil.py:build"),
             r"arch\.model: user/\.\./\.\./elsewhere/evil\.py is outside user/"),
            (_user_checkpoint(repo / "link.pt", "user/link.py:build"), r"arch\.model: user/link\.py is outside user/"),
            (_user_checkpoint(repo / "nosha.pt", "user/changed.py:build"),
             r"user/changed\.py changed since this checkpoint was written \(or it recorded no sha256\)"),
            (_user_checkpoint(repo / "edited.pt", "user/changed.py:build", sha256=sha),
             r"user/changed\.py changed since this checkpoint was written"),
            (_user_checkpoint(repo / "package.pt", "antigravity:build"),
             r"arch\.model 'antigravity:build' is not a file in user/; a checkpoint may name only code in this "
             r"repository's user/")]


def test_a_checkpoint_names_code_only_in_user_with_its_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.training.exit_checkpoints import load_early_exit

    repo, marker = _outside(tmp_path)
    monkeypatch.chdir(repo)
    for path, match in _checkpoints(tmp_path, repo, marker):
        with pytest.raises(EdgeCompressError, match=r"checkpoint .*" + match) as e:
            load_checkpoint(path)
        _one_line(e)
    # An early-exit checkpoint names its backbone: a file beside it, nothing else.
    torch.save({"arch": {"kind": "early_exit", "backbone": "../../elsewhere/x.pt", "exits": [1], "head_conv": 8},
                "meta": {}, "state_dict": {}}, repo / "ee.pt")
    with pytest.raises(EdgeCompressError, match=r"arch\.backbone '\.\./\.\./elsewhere/x\.pt' must be a file name"):
        load_early_exit(repo / "ee.pt")
    assert not marker.exists() and "antigravity" not in sys.modules


def test_init_reads_only_tensors_from_such_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_teacher.init copies matching tensors and never rebuilds the arch it names."""
    from edgecompress.models import ResNetTeacher
    from edgecompress.training.teacher import load_pretrained

    repo, marker = _outside(tmp_path)
    monkeypatch.chdir(repo)
    path = _user_checkpoint(repo / "init.pt", "user/link.py:build")
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.init: no weight in .*init\.pt matches"):
        load_pretrained(ResNetTeacher(1, 10, [8], [1], 8), str(path))
    assert not marker.exists()


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
def test_cli_select_refuses_a_checkpoint_that_names_code(tmp_path: Path) -> None:
    import numpy as np

    repo, marker = _outside(tmp_path)
    np.savez(repo / "pool.npz", x=np.zeros((4, 1, 28, 28), np.uint8))
    for path, match in _checkpoints(tmp_path, repo, marker)[:3]:
        proc = _run(repo, "-m", "edgecompress.cli", "select", "--pool", "pool.npz", "--budget", "1",
                    "--model", path.name)
        assert "is outside user/" in proc.stderr and not (repo / "reports").exists()
    assert not marker.exists()


# --- 13. byte-identical checkpoints --------------------------------------------------------------------------

def test_identical_saves_give_identical_bytes(tmp_path: Path) -> None:
    from edgecompress.checkpoint import save_checkpoint

    arch = {"kind": "test"}
    save_checkpoint(tmp_path / "a" / "teacher.pt", _net(), arch, {"metrics": {"acc": 0.5}})
    save_checkpoint(tmp_path / "b" / "teacher.pt", _net(), arch, {"metrics": {"acc": 0.5}})
    a, b = (tmp_path / "a/teacher.pt").read_bytes(), (tmp_path / "b/teacher.pt").read_bytes()
    assert a == b
    with zipfile.ZipFile(tmp_path / "a/teacher.pt") as z:  # no temp name inside the archive
        assert {n.split("/")[0] for n in z.namelist()} == {"archive"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["teacher.pt", "teacher.pt.json"]


def test_two_identical_training_runs_give_identical_checkpoints(tmp_path: Path) -> None:
    from edgecompress.checkpoint import save_checkpoint
    from edgecompress.config import from_dict
    from edgecompress.training.teacher import TeacherConfig, train_teacher
    from tests.test_distill import ONE_EPOCH, TINY_TEACHER, tiny_dataset

    cfg = from_dict(TeacherConfig, {**TINY_TEACHER, "train": ONE_EPOCH})
    for run in ("one", "two"):
        model, arch, report = train_teacher(tiny_dataset(), cfg)
        save_checkpoint(tmp_path / run / "teacher.pt", model, arch, {"test": report["test"]})
    assert (tmp_path / "one/teacher.pt").read_bytes() == (tmp_path / "two/teacher.pt").read_bytes()


# --- crashes that become one line ---------------------------------------------------------------------------

def _onnx_without_inputs(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    const = numpy_helper.from_array(np.zeros((1, 10), np.float32), "value")
    graph = helper.make_graph([helper.make_node("Constant", [], ["logits"], value=const)], "no_inputs", [],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_onnx_teacher_without_inputs_is_one_line(tmp_path: Path) -> None:
    from edgecompress.usermodel import UserModelSpec, load_user_model

    path = _onnx_without_inputs(tmp_path / "t.onnx")
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.model: .*t\.onnx has 0 graph inputs \(none\); a "
                                                r"classifier takes one, the image batch") as e:
        load_user_model(UserModelSpec("onnx", str(path)), (1, 28, 28), 10)
    _one_line(e)


def test_a_pt2_exported_for_batch_two_is_one_line(tmp_path: Path) -> None:
    """Batch 2 is what the check used to run: such a program passed it and failed later in training."""
    from edgecompress.usermodel import UserModelSpec, load_user_model

    path = _pt2(tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.model: .*fixed\.pt2: the program was exported for "
                                                r"one fixed batch size: export it with a dynamic batch") as e:
        load_user_model(UserModelSpec("exported", str(path)), (1, 28, 28), 10)
    _one_line(e)


@pytest.mark.slow  # seconds of subprocesses or timeouts: CI runs it, the fast lane does not
@pytest.mark.parametrize("form", ["onnx", "exported"])
def test_the_stage_names_both_crashes(form: str, work: Path) -> None:
    if form == "onnx":
        _onnx_without_inputs(work / "user/teacher.onnx")
        _teacher_params(work, source="onnx", model="user/teacher.onnx")
        want = "train_teacher.model: user/teacher.onnx has 0 graph inputs"
    else:
        _pt2(work / "user/teacher.pt2", dynamic=False)
        _teacher_params(work, source="exported", model="user/teacher.pt2")
        want = "train_teacher.model: user/teacher.pt2: the program was exported for one fixed batch size"
    assert want in _train_teacher(work).stderr
