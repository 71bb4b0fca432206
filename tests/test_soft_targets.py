"""Stored soft targets (FKD): the teachers' logits computed once and replayed, exactly, to students."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from test_ensemble import ONE_EPOCH, STUDENT, TEACHER, blob_dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.training.distill import DistillConfig, distill, teacher_targets
from edgecompress.training.ensemble import train_ensemble
from edgecompress.training.loop import crop_fill, tensors
from edgecompress.training.soft_targets import (compute_soft_targets, load_soft_targets, save_soft_targets,
                                               view_images)

AUGMENTED = dataclasses.replace(ONE_EPOCH, crop_pad=2, flip=True)


@pytest.fixture(scope="module")
def ds():
    return blob_dataset()


@pytest.fixture(scope="module")
def members(ds):
    return train_ensemble(ds, TEACHER, 2)


def counting(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (same weights, same state dict) that counts the images it is run on."""
    twin = copy.deepcopy(model)
    twin.images = 0

    def count(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        twin.images += len(args[0])

    twin.register_forward_pre_hook(count)
    return twin


def test_stored_logits_are_the_members_outputs_on_the_regenerated_views(ds, members) -> None:
    x = tensors(ds)["train"][0]
    st = compute_soft_targets(members, x, crop_fill(ds), 3, AUGMENTED)
    assert st.logits.shape == (3, 2, len(x), ds.num_classes)
    views = view_images(x, st.seed, st.views, st.pad, st.flip, crop_fill(ds))
    assert not torch.equal(views[:len(x)], views[len(x):2 * len(x)])  # the views differ
    for v in range(3):
        for m, member in enumerate(members):
            with torch.no_grad():
                expect = member.eval()(views[v * len(x):(v + 1) * len(x)])
            torch.testing.assert_close(st.logits[v, m], expect, rtol=1e-4, atol=1e-4)


def test_replay_trains_the_same_student_as_online_kd(ds, members) -> None:
    """One view without augmentation is the online run's batches exactly: the same student comes out."""
    cfg = dataclasses.replace(STUDENT, source="ensemble", baseline=False, views=1)
    st, cost = teacher_targets(members[0], ds, cfg, members[1:])
    assert cost["forward_passes"] == 2 * len(ds.train.y)
    replayed, _, rep = distill(members[0], ds, cfg, members[1:], st)
    online, _, _ = distill(members[0], ds, dataclasses.replace(cfg, views=0), members[1:])
    for a, b in zip(replayed.parameters(), online.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_targets_precision_runs_the_stored_pass_in_bf16(ds, members, monkeypatch) -> None:
    """targets_precision: bf16 autocasts only the pass that stores the logits: they stay close to fp32's
    (bf16 keeps 8 bits of mantissa), and the student's own training precision is untouched."""
    from edgecompress.training import loop

    monkeypatch.setattr(loop, "_native_cpu_bf16", lambda: True)  # as on a bf16 CPU, whatever this one is
    cfg = dataclasses.replace(STUDENT, source="ensemble", baseline=False, views=1)
    fp32, cost32 = teacher_targets(members[0], ds, cfg, members[1:])
    bf16, cost16 = teacher_targets(members[0], ds, dataclasses.replace(cfg, targets_precision="bf16"), members[1:])
    assert (cost32["precision"], cost16["precision"]) == ("auto", "bf16")
    assert not torch.equal(fp32.logits, bf16.logits)
    scale = fp32.logits.abs().max()
    assert (fp32.logits - bf16.logits).abs().max() <= 0.05 * scale
    assert (fp32.logits.argmax(-1) == bf16.logits.argmax(-1)).float().mean() >= 0.95
    monkeypatch.setattr(loop, "_native_cpu_bf16", lambda: False)  # a CPU without: the record says what ran
    assert teacher_targets(members[0], ds, dataclasses.replace(cfg, targets_precision="bf16"), members[1:])[1][
        "precision"] == "fp32"
    with pytest.raises(EdgeCompressError, match="targets_precision='fp16'"):
        DistillConfig(targets_precision="fp16")


def test_replay_runs_no_teacher_and_distills_from_the_views(ds, members) -> None:
    cfg = dataclasses.replace(STUDENT, train=dataclasses.replace(AUGMENTED, epochs=3), baseline=False, views=2)
    teacher = counting(members[0])
    st, _ = teacher_targets(teacher, ds, cfg)
    after_store = teacher.images
    assert after_store == 2 * len(ds.train.y)
    student, _, report = distill(teacher, ds, cfg, (), st)
    assert teacher.images == after_store  # 3 epochs, not one teacher pass
    history = report["kd"]["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]


def test_prune_finetune_replays_the_distill_stage_targets(ds, members) -> None:
    from edgecompress.compression.prune import PruneConfig, prune_and_finetune

    cfg = dataclasses.replace(STUDENT, source="ensemble", train=AUGMENTED, baseline=False, views=2)
    st, _ = teacher_targets(members[0], ds, cfg, members[1:])
    student, _, _ = distill(members[0], ds, cfg, members[1:], st)
    teacher = counting(members[0])
    prune = PruneConfig(ratio=0.5, steps=1, latency_runs=0, source="teacher", finetune=AUGMENTED)
    _, report = prune_and_finetune(copy.deepcopy(student), teacher, ds, prune, targets=st)
    assert report["finetune_teacher"] == "teacher, stored logits" and teacher.images == 0
    _, report = prune_and_finetune(copy.deepcopy(student), members[0], ds, prune, members=members[1:], targets=st)
    assert report["finetune_teacher"] == "ensemble of 2, stored logits"
    # Another augmentation than the stored views': the teacher runs, as without a store.
    other = dataclasses.replace(prune, finetune=ONE_EPOCH)
    _, report = prune_and_finetune(copy.deepcopy(student), teacher, ds, other, targets=st)
    assert report["finetune_teacher"] == "teacher" and teacher.images > 0


def test_targets_for_other_weights_or_data_are_refused(ds, members, tmp_path) -> None:
    x = tensors(ds)["train"][0]
    st = compute_soft_targets(members[:1], x, crop_fill(ds), 1, AUGMENTED)
    with pytest.raises(EdgeCompressError, match="other teacher weights"):
        st.select(members[1:], x, "prune")
    with pytest.raises(EdgeCompressError, match="other training images"):
        st.select(members[:1], x[1:], "prune")
    path = tmp_path / "soft_targets.npz"
    save_soft_targets(path, st)
    back = load_soft_targets(path)
    assert torch.equal(back.logits, st.logits) and back.member_keys == st.member_keys
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EdgeCompressError, match="soft targets .* corrupt.*dvc repro distill"):
        load_soft_targets(path)
    np.savez(path, logits=np.zeros((1, 1, 1, 1)), header=np.array("{}"))
    with pytest.raises(EdgeCompressError, match="no valid header"):
        load_soft_targets(path)


def test_views_serve_response_kd_only() -> None:
    with pytest.raises(EdgeCompressError, match="views=4 .* response KD only"):
        DistillConfig(views=4, losses={"response": 0.9, "hint": 1.0})
    with pytest.raises(EdgeCompressError, match="views=-1"):
        DistillConfig(views=-1)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
