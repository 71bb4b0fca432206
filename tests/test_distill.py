"""Transfer learning (init/freeze) and multi-kind distillation wired through the stage functions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from edgecompress.checkpoint import save_checkpoint
from edgecompress.data import Dataset, Split
from edgecompress.training.distill import DistillConfig, distill
from edgecompress.training.losses import CombinedKDLoss, kd_loss_config
from edgecompress.training.teacher import TeacherConfig, load_pretrained, train_teacher
from edgecompress.errors import EdgeCompressError
from edgecompress.models import ResNetTeacher
from edgecompress.config import from_dict

TINY_TEACHER = {"stem": 8, "widths": [8, 16], "blocks": [1, 1]}
ONE_EPOCH = {"epochs": 1, "batch_size": 32, "lr": 0.05, "crop_pad": 0, "flip": False}


def tiny_dataset(classes: int = 4, n: int = 96) -> Dataset:
    rng = np.random.default_rng(0)

    def split(m: int) -> Split:
        y = rng.integers(0, classes, m).astype(np.int64)
        x = rng.integers(0, 40, (m, 1, 12, 12)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 0, 3 * c:3 * c + 3, :] = 250
        return Split(x, y)

    return Dataset(split(n), split(32), split(32), [f"c{i}" for i in range(classes)], (0.2,), (0.3,))


def test_load_pretrained_copies_matching_layers_and_keeps_a_new_head(tmp_path) -> None:
    torch.manual_seed(1)
    source = ResNetTeacher(1, 10, [8, 16], [1, 1], 8)
    save_checkpoint(tmp_path / "src.pt", source, {"kind": "resnet"}, {})
    target = ResNetTeacher(1, 4, [8, 16], [1, 1], 8)
    report = load_pretrained(target, str(tmp_path / "src.pt"))
    assert torch.equal(target.stem[0].weight, source.stem[0].weight)
    assert set(report["kept_fresh"]) == {"fc.weight", "fc.bias"}  # 4 classes, not 10


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    (b"not a checkpoint", "cannot load"),
])
def test_load_pretrained_errors(tmp_path, content, match) -> None:
    path = tmp_path / "init.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EdgeCompressError, match=match):
        load_pretrained(ResNetTeacher(1, 4, [8], [1], 8), str(path))


class _Code:  # an object a weights-only load must refuse to rebuild
    pass


def test_load_pretrained_refuses_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Code()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(EdgeCompressError, match="weights_only=True"):
        load_pretrained(ResNetTeacher(1, 4, [8], [1], 8), str(path))


def test_freeze_keeps_frozen_weights_and_bn_statistics(tmp_path) -> None:
    ds = tiny_dataset()
    torch.manual_seed(2)
    source = ResNetTeacher(1, 4, [8, 16], [1, 1], 8)
    save_checkpoint(tmp_path / "src.pt", source, {"kind": "resnet"}, {})
    cfg = from_dict(TeacherConfig, {**TINY_TEACHER, "init": str(tmp_path / "src.pt"), "freeze": 2, "train": ONE_EPOCH})
    model, _, report = train_teacher(ds, cfg)
    assert report["transfer"]["frozen"] == ["stem", "stages.0"]
    sd, src = model.state_dict(), source.state_dict()
    for k in ("stem.0.weight", "stem.1.running_mean", "stages.0.conv1.weight", "stages.0.bn2.running_var"):
        assert torch.equal(sd[k], src[k]), k
    assert not torch.equal(sd["stages.1.conv1.weight"], src["stages.1.conv1.weight"])
    assert all(p.requires_grad for p in model.parameters())  # frozen only while training


def test_distill_with_feature_and_relation_losses_runs_and_records_them() -> None:
    ds = tiny_dataset()
    torch.manual_seed(0)
    teacher = ResNetTeacher(1, 4, [8, 16], [1, 1], 8).eval()
    cfg = from_dict(DistillConfig, {"channels": [8, 12, 12], "strides": [2, 2], "baseline": False,
                                   "losses": {"response": 0.9, "hint": 1.0, "rkd_distance": 1.0, "attention": 1.0},
                                   "train": ONE_EPOCH})
    student, arch, report = distill(teacher, ds, cfg)
    assert report["kd"]["losses"]["hint"] == 1.0
    assert student(torch.zeros(2, 1, 12, 12)).shape == (2, 4)
    assert arch["channels"] == [8, 12, 12]


def test_distill_config_rejects_unknown_kind() -> None:
    with pytest.raises(EdgeCompressError, match="allowed"):
        from_dict(DistillConfig, {"losses": {"dark_knowledge": 1.0}})


def test_fit_trains_the_hint_adapter_with_the_student() -> None:
    from edgecompress.models import MobileNetStudent
    from edgecompress.training.loop import TrainConfig, fit

    ds = tiny_dataset()
    x, y = ds.to_tensor(ds.train.x), torch.from_numpy(ds.train.y)
    torch.manual_seed(0)
    teacher = ResNetTeacher(1, 4, [8, 16], [1, 1], 8).eval()
    student = MobileNetStudent(1, 4, [8, 12, 12], [2, 2])
    loss = CombinedKDLoss(kd_loss_config({"losses": {"response": 0.9, "hint": 1.0}}, "t"), student, teacher, x[:2])
    before = [p.detach().clone() for p in loss.parameters()]
    assert before, "the hint term must bring a learned adapter"
    fit(student, x, y, TrainConfig(**ONE_EPOCH), teacher=teacher, feature_loss=loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, loss.parameters()))


# ---------------------------------------------------------------- schemes, sources, teacher assistant


def _teacher(seed: int = 0) -> ResNetTeacher:
    torch.manual_seed(seed)
    return ResNetTeacher(1, 4, [8, 16], [1, 1], 8).eval()


def _cfg(**kw) -> DistillConfig:
    return from_dict(DistillConfig, {"channels": [8, 12, 12], "strides": [2, 2], "baseline": False,
                                    "train": ONE_EPOCH, **kw})


def test_online_scheme_trains_the_peer_and_the_student_together() -> None:
    ds, teacher = tiny_dataset(), _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, arch, report = distill(teacher, ds, _cfg(scheme="online"))
    # The given teacher only lends its architecture: a fresh peer of that shape is trained.
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert report["peer"]["params"] == sum(p.numel() for p in teacher.parameters())
    hist = report["kd"]["history"][0]
    assert hist["student_loss"] > 0 and hist["peer_loss"] > 0
    assert arch["kind"] == "mobilenet" and student(torch.zeros(1, 1, 12, 12)).shape == (1, 4)


def test_born_again_trains_fresh_generations_from_the_previous_student() -> None:
    student, _arch, report = distill(_teacher(), tiny_dataset(), _cfg(scheme="born_again", generations=2))
    gens = report["generations"]
    assert len(gens) == 3 and all(g["params"] == gens[0]["params"] for g in gens)
    assert report["kd"]["test"] == gens[-1]["test"]


def test_teacher_assistant_sits_between_teacher_and_student() -> None:
    _student, _arch, report = distill(_teacher(), tiny_dataset(), _cfg(assistant_width=2.0))
    assert report["kd"]["params"] < report["assistant"]["params"] < sum(p.numel() for p in _teacher().parameters())


def test_ensemble_sources_give_ensemble_kd_or_a_multihead_student() -> None:
    ds = tiny_dataset()
    members = [_teacher(1), _teacher(2)]
    student, arch, report = distill(_teacher(), ds, _cfg(source="ensemble"), members)
    assert arch["kind"] == "mobilenet" and report["kd"]["members"] == 3
    mh, arch, report = distill(_teacher(), ds, _cfg(source="ensemble", heads=3, multihead={"lam_max": 0.5}), members)
    assert arch == {"kind": "multihead", "heads": 3, "core": _cfg().arch(ds)}
    assert report["kd"]["config"]["lam_max"] == 0.5 and len(report["kd"]["head_accuracy"]) == 3
    assert report["kd"]["test"]["mutual_information"] >= 0
    with pytest.raises(EdgeCompressError, match="set heads: 3"):
        distill(_teacher(), ds, _cfg(source="ensemble", heads=2), members)


@pytest.mark.parametrize("kw, match", [
    ({"scheme": "offline-ish"}, "scheme"),
    ({"source": "crowd"}, "source"),
    ({"heads": 3}, "source: ensemble"),
    ({"scheme": "online", "assistant_width": 2.0}, "deep mutual learning"),
    ({"source": "ensemble", "losses": {"hint": 1.0}}, "losses: null"),
    ({"source": "ensemble", "heads": 2, "multihead": {"num_heads": 2}}, "distill.heads"),
    ({"source": "ensemble", "heads": 2, "multihead": {"beta": 1}}, "unknown key"),
    ({"generations": 0}, "generations"),
])
def test_distill_config_rejects_bad_scheme_settings(kw, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        _cfg(**kw)


def test_teacher_config_checks_members_against_ensemble_size() -> None:
    assert from_dict(TeacherConfig, {"ensemble_size": 3, "members": [1, 2]}).member(2).train.seed == 2
    with pytest.raises(EdgeCompressError, match=r"set members: \[1, 2\]"):
        from_dict(TeacherConfig, {"ensemble_size": 3, "members": [1]})
    with pytest.raises(EdgeCompressError, match="needs dropout"):
        from_dict(TeacherConfig, {"mc_samples": 4})
