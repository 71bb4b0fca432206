"""Bring your own model: a user's architecture (inverted residuals, squeeze-excite, a concatenation)
written by the test, trained briefly, then brought as code + weights, as a torch.export program and as
ONNX; each teaches a student by response KD; the module itself is channel-pruned and exported."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgecompress.compression.onnx import export_onnx
from edgecompress.compression.prune import PruneConfig, prune_channels
from edgecompress.config import from_dict
from edgecompress.errors import EdgeCompressError
from edgecompress.models import count_params
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.loop import TrainConfig, fit
from edgecompress.usermodel import (ExportedClassifier, OnnxClassifier, UserModelSpec, build_module, check_classifier,
                                    internals, load_factory, load_user_model, load_weights)
from tests.test_distill import tiny_dataset

# The benchmark's user network (benchmarks/user_model.py) plus factories a user could get wrong; the test
# writes the file itself, as a user would keep it, outside the package.
USER_MODELS = (Path(__file__).resolve().parents[1] / "benchmarks" / "user_model.py").read_text() + '''

def small(num_classes, in_channels, image_size):
    return UserNet(num_classes, in_channels, width=16)


def narrow(num_classes, in_channels, image_size):
    return UserNet(num_classes, in_channels, width=8)


def not_a_module(num_classes, in_channels, image_size):
    return "a string"


def one_class_too_many(num_classes, in_channels, image_size):
    return UserNet(num_classes + 1, in_channels)


def rgb_only(num_classes, in_channels, image_size):
    return UserNet(num_classes, 3)


def broken(num_classes, in_channels, image_size):
    raise ValueError("no such width")
'''


def write_user_forms(factory: str, ds: Any, epochs: int, weights: Path, pt2: Path, onnx: Path) -> torch.nn.Module:
    """Train the user's network briefly on ``ds`` and save it in all three forms (as a user would)."""
    model = build_module(factory, ds.num_classes, ds.channels, ds.input_shape[1])
    torch.manual_seed(0)
    fit(model, ds.to_tensor(ds.train.x), torch.from_numpy(ds.train.y),
        TrainConfig(epochs=epochs, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    model.eval()
    torch.save(model.state_dict(), weights)
    x = ds.to_tensor(ds.test.x[:4])
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(pt2))
    export_onnx(model, tuple(ds.input_shape), onnx)
    return model


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The user's files: my_models.py, trained weights, the .pt2 program and the .onnx graph."""
    d = tmp_path_factory.mktemp("repo") / "user"  # a repository's user/: checkpoints may name code only there
    d.mkdir()
    (d / "my_models.py").write_text(USER_MODELS)
    ds = tiny_dataset()
    model = write_user_forms(f"{d}/my_models.py:small", ds, 6, d / "weights.pt", d / "model.pt2", d / "model.onnx")
    fixed = torch.export.export(model, (ds.to_tensor(ds.test.x[:4]),))  # a fixed batch of 4: refused with the fix
    torch.export.save(fixed, str(d / "fixed.pt2"))
    return {"dir": d, "ds": ds, "model": model}


def _spec(user: dict, form: str, **kw: object) -> UserModelSpec:
    d = user["dir"]
    model = {"module": f"{d}/my_models.py:small", "exported": str(d / "model.pt2"),
             "onnx": str(d / "model.onnx")}[form]
    return UserModelSpec(form=form, model=model, weights=str(d / "weights.pt") if form == "module" else None, **kw)


@pytest.mark.parametrize("form", ["module", "exported", "onnx"])
def test_every_form_gives_the_same_classifier(user: dict, form: str) -> None:
    ds = user["ds"]
    model = load_user_model(_spec(user, form), ds.input_shape, ds.num_classes)
    x = ds.to_tensor(ds.test.x)
    with torch.no_grad():
        want, got = user["model"](x), model(x)
    assert torch.allclose(got, want, atol=1e-4)
    assert (got.argmax(1).numpy() == ds.test.y).mean() > 0.5  # it learned the bands: a real classifier
    if form != "module":  # layers out of reach: asked for what needs them, it says so
        with pytest.raises(EdgeCompressError, match=r"feature KD needs the model's layers.*source: module"):
            internals(model, "feature KD")


@pytest.mark.parametrize("form", ["module", "exported", "onnx"])
def test_every_form_teaches_a_student_by_response_kd(user: dict, form: str) -> None:
    ds = user["ds"]
    teacher = load_user_model(_spec(user, form), ds.input_shape, ds.num_classes)
    cfg = DistillConfig(channels=(8, 16, 16), strides=(2, 2), baseline=False,
                        train=TrainConfig(epochs=1, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    student, _, report = distill(teacher, ds, cfg)
    assert report["kd"]["params"] < count_params(user["model"]) and 0 <= report["kd"]["test"]["accuracy"] <= 1
    assert all(not p.requires_grad for p in teacher.parameters())  # frozen while teaching


def test_the_users_module_is_pruned_itself_and_exports(user: dict, tmp_path: Path) -> None:
    """torch-pruning's dependency graph through the residual, the squeeze-excite and the concatenation."""
    model = copy.deepcopy(user["model"])
    before = count_params(model)
    pruned = prune_channels(model, (1, 12, 12), 0.5, PruneConfig(ratio=0.5, round_to=1))
    assert count_params(pruned) < 0.6 * before
    x = user["ds"].to_tensor(user["ds"].test.x[:8])
    with torch.no_grad():
        assert pruned(x).shape == (8, 4)
    export_onnx(pruned.eval(), (1, 12, 12), tmp_path / "pruned.onnx")
    sess = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(out, pruned(x).numpy(), atol=1e-4)


def test_clear_errors_before_any_training(user: dict, tmp_path: Path) -> None:
    d, ds = user["dir"], user["ds"]
    shape, classes = ds.input_shape, ds.num_classes
    with pytest.raises(EdgeCompressError, match=r"must be 'file\.py:factory' or 'package\.module:factory'"):
        load_factory("my_models.py")
    with pytest.raises(EdgeCompressError, match=r"nope\.py not found"):
        load_factory(f"{d}/nope.py:build")
    with pytest.raises(EdgeCompressError, match=r"importing no_such_package_xyz failed: ModuleNotFoundError"):
        load_factory("no_such_package_xyz:build")
    with pytest.raises(EdgeCompressError, match=r"has no callable 'missing'"):
        load_factory(f"{d}/my_models.py:missing")
    with pytest.raises(EdgeCompressError, match=r"returned a str, not a torch\.nn\.Module"):
        build_module(f"{d}/my_models.py:not_a_module", classes, 1, 12)
    with pytest.raises(EdgeCompressError, match=r"broken\(num_classes=4, in_channels=1, image_size=12\) failed: "
                                                r"ValueError: no such width"):
        build_module(f"{d}/my_models.py:broken", classes, 1, 12)
    # Weights of another width: the first mismatching tensors, with both shapes.
    with pytest.raises(EdgeCompressError, match=r"does not fit the architecture \(shape \(file vs model\): "
                                                r"stem\.0\.weight \(16, 1, 3, 3\) vs \(8, 1, 3, 3\)"):
        load_weights(build_module(f"{d}/my_models.py:narrow", classes, 1, 12), d / "weights.pt")
    # A pickled model object would run code when loaded: weights_only refuses it, said plainly.
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole_model.pt")
    with pytest.raises(EdgeCompressError, match=r"weights_only=True, which refuses files that would run code.*"
                                                r"state_dict\(\)"):
        load_weights(build_module(f"{d}/my_models.py:small", classes, 1, 12), tmp_path / "whole_model.pt")
    with pytest.raises(EdgeCompressError, match=r"returned \(2, 5\) for 2 images; .* must return \(2, 4\) logits"):
        check_classifier(build_module(f"{d}/my_models.py:one_class_too_many", classes, 1, 12).eval(), shape, classes)
    with pytest.raises(EdgeCompressError, match=r"cannot take input of shape \(2, 1, 12, 12\)"):
        check_classifier(build_module(f"{d}/my_models.py:rgb_only", classes, 1, 12).eval(), shape, classes)
    with pytest.raises(EdgeCompressError, match=r"exported for one fixed batch size: export it with a dynamic batch"):
        load_user_model(UserModelSpec("exported", str(d / "fixed.pt2")), shape, classes)
    with pytest.raises(EdgeCompressError, match=r"is not a torch\.export program"):
        load_user_model(UserModelSpec("exported", str(d / "weights.pt")), shape, classes)
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.weights: a module needs its trained weights"):
        UserModelSpec("module", f"{d}/my_models.py:small")
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.source: 'keras' is not one of train, module"):
        UserModelSpec("keras", "x.h5")


def test_onnx_that_normalizes_itself_and_takes_nhwc(user: dict, tmp_path: Path) -> None:
    """A graph fed x/255 in NHWC (as many exporters make them): declared, and checked to agree."""
    ds = user["ds"]
    mean, std = ds.mean[0], ds.std[0]

    class Raw(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # NHWC in [0, 1]
            return self.net((x.permute(0, 3, 1, 2) - mean) / std)

    path = tmp_path / "raw.onnx"
    torch.onnx.export(Raw(user["model"]).eval(), (torch.zeros(1, 12, 12, 1),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    teacher = load_user_model(UserModelSpec("onnx", str(path), layout="NHWC", normalized_input=False),
                              ds.input_shape, ds.num_classes, ds.mean, ds.std)
    x = ds.to_tensor(ds.test.x[:8])
    assert isinstance(teacher, OnnxClassifier) and not isinstance(teacher, ExportedClassifier)
    with torch.no_grad():
        assert torch.allclose(teacher(x), user["model"](x), atol=1e-4)


def test_a_pruned_user_module_rebuilds_from_its_factory_and_plain_tensors(user: dict, tmp_path: Path) -> None:
    """What a checkpoint of the pruned user model needs: layer shapes (JSON) + a weights_only state dict."""
    import json

    from edgecompress.usermodel import layer_shapes, restore_pruned

    pruned = prune_channels(copy.deepcopy(user["model"]), (1, 12, 12), 0.5, PruneConfig(ratio=0.5, round_to=1)).eval()
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    shapes = json.loads(json.dumps(layer_shapes(pruned)))  # survives JSON
    state = torch.load(tmp_path / "pruned.pt", weights_only=True)
    rebuilt = restore_pruned(build_module(f"{user['dir']}/my_models.py:small", 4, 1, 12), shapes, state).eval()
    x = user["ds"].to_tensor(user["ds"].test.x[:8])
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), pruned(x), atol=1e-6)
    assert count_params(rebuilt) == count_params(pruned) < count_params(user["model"])
    # The depthwise convolution kept groups == channels after pruning.
    dw = rebuilt.block.body[3]
    assert dw.groups == dw.in_channels == dw.out_channels < user["model"].block.body[3].out_channels
    with pytest.raises(EdgeCompressError, match=r"layers \['gone'\] are not in the model the factory builds"):
        restore_pruned(build_module(f"{user['dir']}/my_models.py:small", 4, 1, 12), {"gone": {"in_features": 1}}, state)


@pytest.mark.parametrize("form", ["module", "exported", "onnx"])
def test_a_checkpoint_payload_rebuilds_every_form(user: dict, form: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """arch (JSON) + tensors, saved and loaded with weights_only: the same logits; a changed file is refused."""
    import json

    monkeypatch.chdir(user["dir"].parent)
    import shutil

    from edgecompress.usermodel import rebuild_user, user_arch

    ds = user["ds"]
    spec = _spec(user, form)
    if form != "module":  # the arch names the file: keep a copy this test may change
        copy_path = tmp_path / Path(spec.model).name
        shutil.copy(spec.model, copy_path)
        spec = UserModelSpec(form, str(copy_path))
    model = load_user_model(spec, ds.input_shape, ds.num_classes)
    arch = json.loads(json.dumps(user_arch(spec, model, ds.input_shape, ds.num_classes, ds.mean, ds.std)))
    torch.save({"arch": arch, "state_dict": model.state_dict() if form == "module" else {}}, tmp_path / "ck.pt")
    payload = torch.load(tmp_path / "ck.pt", weights_only=True)
    rebuilt = rebuild_user(payload["arch"], payload["state_dict"])
    x = ds.to_tensor(ds.test.x[:8])
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), user["model"](x), atol=1e-4)
    if form != "module":
        Path(spec.model).write_bytes(Path(spec.model).read_bytes() + b"\0")
        with pytest.raises(EdgeCompressError, match=r"changed since this checkpoint was written"):
            rebuild_user(payload["arch"], {})


@pytest.mark.parametrize("form", ["module", "exported", "onnx"])
def test_save_and_load_checkpoint_of_every_form(user: dict, form: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_checkpoint`` dispatches kind user; MACs count through a module's layers or PyTorch's FLOP
    counter (the exported program: the same number) and are None for an ONNX graph."""
    monkeypatch.chdir(user["dir"].parent)
    from edgecompress.checkpoint import load_checkpoint, save_checkpoint
    from edgecompress.models import count_macs
    from edgecompress.usermodel import user_arch

    ds = user["ds"]
    model = load_user_model(_spec(user, form), ds.input_shape, ds.num_classes)
    arch = user_arch(_spec(user, form), model, ds.input_shape, ds.num_classes, ds.mean, ds.std)
    save_checkpoint(tmp_path / "t.pt", model, arch, {"metrics": {}})
    loaded, meta = load_checkpoint(tmp_path / "t.pt")
    x = ds.to_tensor(ds.test.x[:8])
    with torch.no_grad():
        assert torch.allclose(loaded(x), user["model"](x), atol=1e-4)
    macs = count_macs(loaded, ds.input_shape)
    assert macs == (None if form == "onnx" else count_macs(user["model"], ds.input_shape)) and meta["arch"]["kind"] == "user"
    # An ONNX graph's weights are counted from its initializers (BN folded into the convolutions: fewer).
    assert 0.8 * count_params(user["model"]) < count_params(loaded) <= count_params(user["model"])


def test_pruned_teacher_checkpoints_round_trip(user: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pruned network its arch's widths cannot describe (our ResNet, the user's module) keeps its layer shapes."""
    monkeypatch.chdir(user["dir"].parent)
    from edgecompress.checkpoint import arch_after_pruning, load_checkpoint, save_checkpoint
    from edgecompress.models import ResNetTeacher
    from edgecompress.usermodel import module_arch

    x = user["ds"].to_tensor(user["ds"].test.x[:8])
    resnet_arch = {"kind": "resnet", "in_channels": 1, "num_classes": 4, "widths": [8, 16], "blocks": [1, 1],
                   "stem": 8, "dropout": 0.0}
    resnet = ResNetTeacher(**{k: v for k, v in resnet_arch.items() if k != "kind"})
    factory = f"{user['dir']}/my_models.py:small"
    for model, arch in ((resnet, resnet_arch), (copy.deepcopy(user["model"]), module_arch(factory, user["model"], (1, 12, 12), 4))):
        pruned = prune_channels(model, (1, 12, 12), 0.5, PruneConfig(ratio=0.5, round_to=1)).eval()
        save_checkpoint(tmp_path / "p.pt", pruned, arch_after_pruning(pruned, arch), {"metrics": {}})
        loaded, _ = load_checkpoint(tmp_path / "p.pt")
        with torch.no_grad():
            assert torch.allclose(loaded(x), pruned(x), atol=1e-6)
        assert count_params(loaded) == count_params(pruned)


def test_feature_kd_reads_the_users_layers(user: dict) -> None:
    """Hint and relation KD on a module without ``features()``: its last spatial map, found by hooks."""
    from edgecompress.models import forward_with_features
    from edgecompress.training.losses import CombinedKDLoss, kd_loss_config

    ds = user["ds"]
    x = ds.to_tensor(ds.test.x[:8])
    teacher = user["model"]
    logits, feat = forward_with_features(teacher, x)
    with torch.no_grad():
        assert torch.allclose(logits, teacher(x)) and feat.shape == (8, 32, 3, 3)  # the head conv, before pooling
    student = build_module(f"{user['dir']}/my_models.py:narrow", 4, 1, 12)
    cfg = kd_loss_config({"losses": {"response": 0.5, "hint": 1.0, "rkd_distance": 1.0}}, "test")
    loss_fn = CombinedKDLoss(cfg, student, teacher, x[:2])
    s_logits, s_feat = forward_with_features(student, x)
    with torch.no_grad():
        t_logits, t_feat = forward_with_features(teacher, x)
    loss = loss_fn(s_logits, s_feat, t_logits, t_feat, torch.from_numpy(ds.test.y[:8]).long())[0]
    loss.backward()
    assert torch.isfinite(loss) and student.stem[0].weight.grad is not None


def test_params_for_a_brought_teacher_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.config import load_params
    from edgecompress.training.teacher import TeacherConfig
    from edgecompress.validate import validate_params

    repo = Path(__file__).resolve().parents[1]
    params = load_params(repo / "params.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "t.onnx").write_bytes(b"x")
    (tmp_path / "elsewhere.onnx").write_bytes(b"x")
    targets = repo / "targets"
    byo = {**params["train_teacher"], "source": "onnx", "model": "user/t.onnx", "ensemble_size": 1, "members": []}
    ok = {**params, "train_teacher": byo, "distill": {**params["distill"], "source": "teacher"}}
    assert validate_params(ok, targets_dir=targets)["train_teacher"].source == "onnx"
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.model: elsewhere\.onnx is outside user/"):
        validate_params({**ok, "train_teacher": {**byo, "model": "elsewhere.onnx"}}, targets_dir=targets)
    with pytest.raises(EdgeCompressError, match=r"train_teacher\.model: user/gone\.onnx not found"):
        validate_params({**ok, "train_teacher": {**byo, "model": "user/gone.onnx"}}, targets_dir=targets)
    with pytest.raises(EdgeCompressError, match=r"brings an ONNX graph, which cannot serve prune\.source_model: "
                                                r"teacher.*source: module"):
        validate_params({**ok, "prune": {**params["prune"], "source_model": "teacher"}}, targets_dir=targets)
    with pytest.raises(EdgeCompressError, match=r"distill\.student: user/s\.py is outside|distill\.student: user/s\.py not found"):
        validate_params({**ok, "distill": {**ok["distill"], "student": "user/s.py:build"}}, targets_dir=targets)
    with pytest.raises(EdgeCompressError, match=r"ensemble_size.*must be left at the default"):
        from_dict(TeacherConfig, {"source": "onnx", "model": "user/t.onnx", "ensemble_size": 2, "members": [1]})
    with pytest.raises(EdgeCompressError, match=r"model/weights are set but source is 'train'"):
        from_dict(TeacherConfig, {"model": "user/t.onnx"})


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_qat_runs_on_the_users_module(user: dict, tmp_path: Path) -> None:
    """Quantization-aware training (PT2E, LiteRT's quantizer) through the squeeze-excite and concatenation."""
    from edgecompress.compression.qat import QATConfig, export_tflite_qat
    from edgecompress.compression.tflite import tflite_interpreter

    ds = user["ds"]
    x, y = ds.normalize(ds.train.x[:64]), ds.train.y[:64]
    history = export_tflite_qat(copy.deepcopy(user["model"]), (1, 12, 12), tmp_path / "qat.tflite", x, y,
                                QATConfig(enabled=True, epochs=1, lr=1e-3, batch_size=32))
    assert len(history) == 1
    interp = tflite_interpreter(tmp_path / "qat.tflite")
    i_d, o_d = interp.get_input_details()[0], interp.get_output_details()[0]
    assert i_d["dtype"] == np.int8 and o_d["dtype"] == np.int8  # full-integer: int8 in and out
    xt = ds.normalize(ds.test.x)
    scale, zero = i_d["quantization"]
    agree = []
    for k in range(len(xt)):
        q = np.clip(np.round(xt[k:k + 1].transpose(0, 2, 3, 1) / scale) + zero, -128, 127).astype(np.int8)
        interp.set_tensor(i_d["index"], q)
        interp.invoke()
        agree.append(int(interp.get_tensor(o_d["index"]).argmax()))
    with torch.no_grad():
        want = user["model"](torch.from_numpy(xt)).argmax(1).numpy()
    assert (np.array(agree) == want).mean() >= 0.75
