"""Ensembles of teachers, ensemble KD and the multi-head (Ferianc & Rodrigues 2022) student."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_blobs
from edgecompress.data import Dataset, Split
from edgecompress.training.distill import DistillConfig, distill_ensemble, distill_multihead
from edgecompress.training.ensemble import (EnsembleTeacher, ensemble_kd_loss, ensemble_report, head_probs,
                                            member_logits, train_ensemble)
from edgecompress.training.teacher import TeacherConfig
from edgecompress.errors import EdgeCompressError
from edgecompress.training.multihead import MultiHeadKDConfig
from edgecompress.training.loop import TrainConfig

ONE_EPOCH = TrainConfig(epochs=1, batch_size=32, lr=0.05, crop_pad=0, flip=False)
STUDENT = DistillConfig(channels=(8, 16, 16, 32), strides=(2, 1, 2), train=ONE_EPOCH)
TEACHER = TeacherConfig(stem=8, widths=(8, 16), blocks=(1, 1), train=ONE_EPOCH)
METRIC_KEYS = {"accuracy", "nll", "brier", "ece", "entropy"}


def blob_dataset() -> Dataset:
    """make_blobs' 4-class quadrant problem as uint8 images in a real Dataset (train/val/test)."""
    x, y = make_blobs(192)
    u8 = ((x.clamp(-1, 3) + 1) / 4 * 255).round().to(torch.uint8).numpy()
    y = y.numpy().astype(np.int64)

    def split(a: int, b: int) -> Split:
        return Split(u8[a:b].copy(), y[a:b].copy())

    return Dataset(split(0, 128), split(128, 160), split(160, 192), ["a", "b", "c", "d"], (0.3,), (0.3,))


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return blob_dataset()


@pytest.fixture(scope="module")
def members(ds: Dataset) -> list[torch.nn.Module]:
    return train_ensemble(ds, TEACHER, 2)


def test_members_differ_and_member_logits_shape(ds: Dataset, members: list[torch.nn.Module]) -> None:
    x = ds.to_tensor(ds.test.x)
    logits = member_logits(members, x, batch_size=7)  # batching must not change anything
    assert logits.shape == (2, len(x), 4)
    assert torch.allclose(logits, member_logits(members, x), atol=1e-5)
    assert not torch.allclose(logits[0], logits[1])  # seeds differ -> different members
    assert EnsembleTeacher(members)(x.contiguous(memory_format=torch.channels_last)).shape == (2, len(x), 4)
    with pytest.raises(EdgeCompressError):
        member_logits([], x)


def test_ensemble_kd_loss_prefers_the_mean_distribution() -> None:
    torch.manual_seed(0)
    t = torch.randn(3, 16, 5) * 2
    y = torch.randint(0, 5, (16,))
    temperature = 2.0
    mean = torch.softmax(t / temperature, -1).mean(0)
    matching = temperature * mean.log()  # softmax(matching / T) == the ensemble's mean distribution
    loss = ensemble_kd_loss(temperature, alpha=1.0)
    assert loss(matching, t, y).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(torch.randn(16, 5), t, y).item() > 0.01
    # Not the mean of logits and not one member: each is further from the mean distribution.
    assert loss(t.mean(0), t, y).item() > loss(matching, t, y).item()
    assert loss(t[0], t, y).item() > loss(matching, t, y).item()
    # alpha = 0 and no teacher: plain cross-entropy.
    ce = torch.nn.functional.cross_entropy(matching, y)
    assert ensemble_kd_loss(temperature, 0.0)(matching, t, y).item() == pytest.approx(ce.item())
    assert ensemble_kd_loss(temperature, 0.9)(matching, None, y).item() == pytest.approx(ce.item())


def test_ensemble_report_has_uncertainty(ds: Dataset, members: list[torch.nn.Module]) -> None:
    rep = ensemble_report(members, ds)
    assert METRIC_KEYS | {"mutual_information", "expected_entropy"} <= set(rep["test"])
    assert len(rep["members"]) == 2 and rep["test"]["mutual_information"] > 0
    assert rep["params"] == sum(rep["member_params"]) and rep["macs"] == sum(rep["member_macs"])


def test_distill_ensemble_runs_one_epoch(ds: Dataset, members: list[torch.nn.Module]) -> None:
    student, rep = distill_ensemble(members, ds, STUDENT)
    assert METRIC_KEYS <= set(rep["test"]) and len(rep["history"]) == 1
    assert rep["params"] > 0 and rep["macs"] > 0
    assert student(ds.to_tensor(ds.test.x[:3])).shape == (3, 4)


def test_distill_multihead_runs_and_heads_stay_diverse(ds: Dataset, members: list[torch.nn.Module]) -> None:
    mh_cfg = MultiHeadKDConfig(num_heads=7, lam_max=1.0, warmup_fraction=0.5)  # num_heads follows the members
    model, rep = distill_multihead(members, ds, STUDENT, mh_cfg)
    assert model.num_heads == 2 and rep["config"]["num_heads"] == 2
    assert METRIC_KEYS | {"mutual_information", "expected_entropy"} <= set(rep["test"])
    assert len(rep["head_accuracy"]) == 2 and len(rep["history"]) == 1
    assert 0 < rep["history"][0]["lam"] <= 1.0 and "diversity" in rep["history"][0]
    hp = head_probs(model, ds.to_tensor(ds.test.x))
    assert hp.shape == (2, 32, 4)
    assert np.abs(hp[0] - hp[1]).max() > 1e-3 and rep["test"]["mutual_information"] > 0
    # Params exclude the core's unused classifier; MACs include every head.
    assert rep["params"] == sum(p.numel() for p in model.parameters())
    assert not any(n.startswith("core.fc") for n in model.state_dict())  # the heads replace it
    single = distill_ensemble(members, ds, STUDENT)[1]
    assert rep["macs"] == single["macs"] + model.heads[0].in_features * 4  # one extra head's Linear


def test_distill_multihead_needs_members(ds: Dataset) -> None:
    with pytest.raises(EdgeCompressError):
        distill_multihead([], ds, STUDENT, MultiHeadKDConfig())


def _pruned_channels(model: torch.nn.Module) -> list[int]:
    core = getattr(model, "core", model)
    return [b.pw[0].out_channels for b in core.blocks]


def test_prune_finetunes_from_the_whole_ensemble(ds: Dataset, members: list[torch.nn.Module]) -> None:
    """prune.source ensemble: the fine-tune distils teacher + members, and that changes what is learned."""
    import copy

    from edgecompress.compression.prune import PruneConfig, prune_and_finetune

    student, _ = distill_ensemble(members, ds, STUDENT)
    cfg = PruneConfig(ratio=0.5, steps=1, latency_runs=0, finetune=ONE_EPOCH)
    from_ensemble, report = prune_and_finetune(copy.deepcopy(student), members[0], ds, cfg,
                                               members=members[1:])
    from_teacher, alone = prune_and_finetune(copy.deepcopy(student), members[0], ds, cfg)
    assert report["finetune_teacher"] == "ensemble of 2" and alone["finetune_teacher"] == "teacher"
    assert _pruned_channels(from_ensemble) == _pruned_channels(from_teacher) < _pruned_channels(student)
    assert not torch.allclose(from_ensemble.fc.weight, from_teacher.fc.weight)


def test_prune_keeps_the_multihead_loss_and_the_heads(ds: Dataset, members: list[torch.nn.Module]) -> None:
    from edgecompress.models import MultiHeadStudent
    from edgecompress.compression.prune import PruneConfig, prune_and_finetune

    mh, _ = distill_multihead(members, ds, STUDENT, MultiHeadKDConfig())
    width = mh.heads[0].in_features
    pruned, report = prune_and_finetune(mh, members[0], ds, PruneConfig(ratio=0.5, steps=1, latency_runs=0,
                                                                          finetune=ONE_EPOCH), members=members[1:],
                                        multihead=MultiHeadKDConfig(num_heads=2))
    assert report["finetune_teacher"] == "multi-head ensemble of 2"
    assert isinstance(pruned, MultiHeadStudent) and pruned.num_heads == 2
    assert pruned.heads[0].in_features == pruned.heads[1].in_features < width  # heads follow the pruned core
    assert head_probs(pruned, torch.zeros(3, 1, 12, 12)).shape == (2, 3, 4)


def test_members_warm_started_from_the_teacher(ds: Dataset, tmp_path) -> None:
    """member_init: teacher starts member i from the teacher's weights (its own seed, epochs and peak lr);
    scratch members start from their own random initialisation."""
    from edgecompress.checkpoint import save_checkpoint
    from edgecompress.training.teacher import train_teacher

    cfg = dataclasses.replace(TEACHER, ensemble_size=3, members=(1, 2), member_init="teacher", member_epochs=2,
                              member_lr=1e-6)
    teacher, arch, _ = train_teacher(ds, cfg)
    save_checkpoint(tmp_path / "teacher.pt", teacher, arch, {})
    m1 = cfg.member(1, str(tmp_path / "teacher.pt"))
    assert (m1.init, m1.train.epochs, m1.train.lr, m1.train.seed) == (str(tmp_path / "teacher.pt"), 2, 1e-6, 1)
    member, _, report = train_teacher(ds, m1)
    assert report["transfer"]["loaded"] > 0 and report["transfer"]["kept_fresh"] == []
    t, m = teacher.state_dict(), member.state_dict()
    convs = [k for k in t if k.endswith("weight") and t[k].ndim == 4]
    # A near-zero learning rate leaves the member at the teacher's weights; a scratch member is elsewhere.
    assert all(torch.allclose(t[k], m[k], atol=1e-4) for k in convs)
    scratch, _, _ = train_teacher(ds, dataclasses.replace(cfg, member_init="scratch").member(1))
    assert not torch.allclose(t[convs[0]], scratch.state_dict()[convs[0]], atol=1e-2)
    with pytest.raises(EdgeCompressError, match="needs the trained teacher's checkpoint"):
        cfg.member(1)
    with pytest.raises(EdgeCompressError, match="member_init='snapshot'"):
        dataclasses.replace(cfg, member_init="snapshot")
    with pytest.raises(EdgeCompressError, match="member_lr=0"):
        dataclasses.replace(cfg, member_lr=0)
