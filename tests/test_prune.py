"""Structured pruning really removes channels consistently; magnitude pruning really zeroes weights."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import from_dict
from edgecompress.data import Dataset, Split
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher, arch_of, build_model, count_macs, count_params
from edgecompress.compression.importance import APoZImportance
from edgecompress.compression.prune import (PruneConfig, cumulative_ratios, ladder_ratios, prune_and_finetune,
                                            prune_magnitude, prune_step, sparsity, step_ratios)
from edgecompress.training.loop import TrainConfig
from edgecompress.compression.sparse import encoded_size, sparse_size

from conftest import make_blobs

SHAPE = (1, 12, 12)


def student() -> MobileNetStudent:
    torch.manual_seed(0)
    return MobileNetStudent(1, 4, [16, 32, 32, 64], [2, 1, 2]).eval()


def kept(c: int, ratio: float, round_to: int) -> int:
    """Channels a layer keeps: int(c * (1 - ratio)), floored to a multiple of round_to."""
    k = int(c * (1 - ratio))
    return k - k % round_to


def assert_student_consistent(m: MobileNetStudent) -> None:
    prev = m.stem[0].out_channels
    assert m.stem[1].num_features == prev
    for block in m.blocks:
        dw, pw = block.dw[0], block.pw[0]
        # Depthwise convs follow their producers: groups == in == out channels == BN width.
        assert dw.groups == dw.in_channels == dw.out_channels == prev == block.dw[1].num_features
        assert pw.in_channels == prev and block.pw[1].num_features == pw.out_channels
        prev = pw.out_channels
    assert m.fc.in_features == prev and m.fc.out_features == 4  # classes are protected
    rebuilt = build_model(arch_of(m))  # a plain dense model again: rebuild from arch and run
    rebuilt.load_state_dict(m.state_dict())
    assert rebuilt.eval()(torch.randn(3, *SHAPE)).shape == (3, 4)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_channel_pruning_shrinks_every_layer_consistently(criterion: str) -> None:
    m = student()
    params0, macs0 = count_params(m), count_macs(m, SHAPE)
    prune_step(m, PruneConfig(criterion=criterion, ratio=0.5, round_to=4), 0.5, SHAPE)
    assert arch_of(m)["channels"] == [8, 16, 16, 32]
    assert_student_consistent(m)
    assert count_params(m) < 0.4 * params0 and count_macs(m, SHAPE) < 0.4 * macs0


@pytest.mark.parametrize("ratio, round_to", [(0.3, 4), (0.3, 8), (0.6, 4), (0.25, 1)])
def test_channel_counts_match_ratio_and_round_to(ratio: float, round_to: int) -> None:
    m = student()
    prune_step(m, PruneConfig(ratio=ratio, round_to=round_to), ratio, SHAPE)
    assert arch_of(m)["channels"] == [kept(c, ratio, round_to) for c in (16, 32, 32, 64)]
    assert_student_consistent(m)


def test_protect_first_keeps_the_stem() -> None:
    m = student()
    prune_step(m, PruneConfig(ratio=0.5, protect=("first", "last")), 0.5, SHAPE)
    assert arch_of(m)["channels"] == [16, 16, 16, 32]
    assert_student_consistent(m)


def test_global_ranking_prunes_unevenly_but_consistently() -> None:
    m = student()
    n0 = sum(arch_of(m)["channels"])
    prune_step(m, PruneConfig(ratio=0.5, round_to=1, global_ranking=True), 0.5, SHAPE)
    assert sum(arch_of(m)["channels"]) == pytest.approx(n0 / 2, abs=2)
    assert_student_consistent(m)


@pytest.mark.parametrize("protect", [("last",), ("first", "last")])
def test_resnet_teacher_residual_channels_stay_consistent(tiny_teacher: ResNetTeacher, protect: tuple) -> None:
    x = torch.randn(2, *SHAPE)
    macs0 = count_macs(tiny_teacher, SHAPE)
    prune_step(tiny_teacher, PruneConfig(ratio=0.5, round_to=2, protect=protect), 0.5, SHAPE)
    t = tiny_teacher
    stem = t.stem[0].out_channels
    assert stem == (8 if "first" in protect else 4)
    prev = stem
    for block in t.stages:
        # The residual sum needs both branches at the same width: conv2/bn2 == shortcut projection.
        assert block.conv1.in_channels == prev and block.shortcut[0].in_channels == prev
        assert block.conv2.in_channels == block.conv1.out_channels == block.bn1.num_features
        assert block.conv2.out_channels == block.bn2.num_features == block.shortcut[0].out_channels
        assert block.shortcut[1].num_features == block.conv2.out_channels
        prev = block.conv2.out_channels
    assert [b.conv2.out_channels for b in t.stages] == [4, 8]
    assert t.fc.in_features == prev and t.fc.out_features == 4
    assert t.eval()(x).shape == (2, 4) and count_macs(t, SHAPE) < 0.5 * macs0


def test_resnet_identity_shortcut_is_pruned_with_its_producer() -> None:
    torch.manual_seed(0)
    t = ResNetTeacher(1, 4, widths=[8, 8], blocks=[1, 2], stem=8).eval()  # stages[2] has an identity shortcut
    prune_step(t, PruneConfig(ratio=0.5, round_to=1), 0.5, SHAPE)
    assert isinstance(t.stages[2].shortcut, nn.Identity)
    assert t.stages[1].conv2.out_channels == t.stages[2].conv2.out_channels == t.stages[2].conv1.in_channels
    assert t(torch.randn(2, *SHAPE)).shape == (2, 4)


def test_apoz_scores_dead_channels_lowest_and_prunes_the_expected_count() -> None:
    m = student()
    x, y = make_blobs(64)
    with torch.no_grad():  # kill 4 stem channels: BN output always negative -> ReLU zeros
        m.stem[1].bias[:4] = -100.0
    imp = APoZImportance()
    imp.measure(m, x)
    assert torch.all(imp.apoz[m.blocks[0].dw[0]][:4] == 1.0)
    prune_step(m, PruneConfig(criterion="apoz", ratio=0.25, round_to=4), 0.25, SHAPE, batch=(x, y))
    assert arch_of(m)["channels"] == [kept(c, 0.25, 4) for c in (16, 32, 32, 64)]
    assert_student_consistent(m)
    assert torch.all(m.stem[1].bias > -100.0)  # the dead channels were the ones removed


def test_taylor_criterion_runs_on_a_batch_and_prunes_the_expected_count(tiny_teacher: ResNetTeacher) -> None:
    x, y = make_blobs(32)
    m = student()
    prune_step(m, PruneConfig(criterion="taylor", ratio=0.5), 0.5, SHAPE, batch=(x, y))
    assert arch_of(m)["channels"] == [8, 16, 16, 32]
    assert_student_consistent(m)
    assert all(p.grad is None for p in m.parameters())
    prune_step(tiny_teacher, PruneConfig(criterion="taylor", ratio=0.5, round_to=2), 0.5, SHAPE, batch=(x, y))
    assert tiny_teacher(x[:2]).shape == (2, 4)


def test_data_criteria_need_a_batch() -> None:
    with pytest.raises(EdgeCompressError, match="batch"):
        prune_step(student(), PruneConfig(criterion="apoz"), 0.5, SHAPE)


@pytest.mark.parametrize("global_ranking", [True, False])
def test_magnitude_pruning_zeroes_weights_but_keeps_shapes(tiny_student, global_ranking: bool) -> None:
    params0 = count_params(tiny_student)
    fc = tiny_student.fc.weight.detach().clone()
    prune_magnitude(tiny_student, 0.6, global_ranking=global_ranking)
    assert sparsity(tiny_student, protect=("last",)) == pytest.approx(0.6, abs=0.01)
    assert torch.equal(tiny_student.fc.weight, fc)  # the classifier is protected
    assert count_params(tiny_student) == params0
    per_layer = [float((m.weight == 0).float().mean()) for m in tiny_student.modules() if isinstance(m, nn.Conv2d)]
    if not global_ranking:
        assert per_layer == pytest.approx([0.6] * len(per_layer), abs=0.06)


def test_sparse_size_of_a_hand_made_tensor() -> None:
    w = torch.zeros(4, 8)
    w[0, 1], w[0, 7], w[2, 3], w[3, 0], w[3, 5] = 1.0, -2.0, 3.0, 4.0, 5.0  # 5 nonzeros
    e = encoded_size(w)
    assert e["dense"] == 32 * 4
    assert e["bitmask"] == 4 + 5 * 4  # 32 bits + 5 fp32 values
    assert e["csr"] == 5 * 4 + 5 * (1 + 4)  # 5 int32 row pointers + 5 x (uint8 col, fp32 value)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.copy_(w)
    s = sparse_size(lin)
    assert s["dense_bytes"] == 128 + 16 and s["sparse_bytes"] == 24 + 16  # bias stays dense


def test_schedules_reach_the_target_ratio() -> None:
    ratios = step_ratios(PruneConfig(ratio=0.75, steps=2))
    keep = 1.0
    for r in ratios:
        keep *= 1 - r
    assert keep == pytest.approx(0.25) and ratios == pytest.approx([0.5, 0.5])
    assert cumulative_ratios(PruneConfig(ratio=0.6, steps=3, schedule="linear")) == pytest.approx([0.2, 0.4, 0.6])
    lin = step_ratios(PruneConfig(ratio=0.6, steps=3, schedule="linear"))
    assert lin == pytest.approx([0.2, 0.25, 1 / 3])  # fractions of the current width
    assert step_ratios(PruneConfig(method="magnitude", ratio=0.6, steps=3, schedule="linear")) == pytest.approx(
        [0.2, 0.4, 0.6])
    assert step_ratios(PruneConfig(method="magnitude", ratio=0.75, steps=2)) == pytest.approx([0.5, 0.75])


@pytest.mark.parametrize("kw, match", [
    ({"method": "random"}, r"method='random'.*allowed \['channel', 'magnitude', 'none'\]"),
    ({"criterion": "entropy"}, r"criterion='entropy'.*\['l1', 'l2', 'apoz', 'taylor'\]"),
    ({"method": "magnitude", "criterion": "apoz"}, "allowed criterion for magnitude"),
    ({"ratio": 1.0}, r"\[0, 1\)"), ({"ratio": -0.1}, "ratio"),
    ({"steps": 0}, "steps"), ({"round_to": 0}, "round_to"),
    ({"schedule": "cosine"}, r"schedule='cosine'.*\['geometric', 'linear'\]"),
    ({"protect": ["stem"]}, r"protect=\['stem'\].*\['first', 'last'\]"),
    ({"importance_samples": 0}, "importance_samples"), ({"latency_runs": -1}, "latency_runs"),
])
def test_prune_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        PruneConfig(**kw)


def test_protect_always_includes_the_classifier() -> None:
    assert PruneConfig(protect=["first"]).protect == ("first", "last")
    assert PruneConfig(protect=[]).protect == ("last",)


# ---------------------------------------------------------------- the pruning ladder

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = TrainConfig(epochs=1, batch_size=32, lr=0.05, crop_pad=0, flip=False)
LADDER = PruneConfig(ratio=0.3, steps=1, round_to=2, latency_runs=0, source="teacher", finetune=ONE_EPOCH,
                     ladder=(0.5, 0.7))


def kd_teacher() -> MobileNetStudent:
    """Any classifier can teach (the fine-tune needs its logits); a small MobileNet is quick and checkpointable."""
    torch.manual_seed(1)
    return MobileNetStudent(1, 4, [8, 16], [2]).eval()


def blob_arrays(n: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """make_blobs' quadrant problem as uint8 images and int64 labels."""
    x, y = make_blobs(n)
    return ((x.clamp(-1, 3) + 1) / 4 * 255).round().to(torch.uint8).numpy(), y.numpy().astype(np.int64)


def blob_dataset() -> Dataset:
    x, y = blob_arrays()
    return Dataset(Split(x[:128], y[:128]), Split(x[128:160], y[128:160]), Split(x[160:], y[160:]),
                   ["a", "b", "c", "d"], (0.3,), (0.3,))


@pytest.mark.parametrize("kw, match", [
    ({"ladder": (0.5, 0.5)}, r"invalid value ladder=\[0.5, 0.5\]: prune.ladder level 0.5 is not above the previous "
                             r"level 0.5; allowed: .*strictly increasing, each > ratio \(0.3\) and < 1"),
    ({"ladder": (0.6, 0.5)}, r"prune.ladder level 0.5 is not above the previous level 0.6"),
    ({"ladder": (0.2,)}, r"invalid value ladder=\[0.2\]: prune.ladder level 0.2 is not above ratio 0.3"),
    ({"ladder": (0.3,)}, r"prune.ladder level 0.3 is not above ratio 0.3"),
    ({"ladder": (0.5, 1.0)}, r"prune.ladder level 1.0 removes everything; allowed: .* < 1"),
    ({"ladder": (0.302,)}, r"prune.ladder level 0.302 has the same name \(pruned-30\) as ratio 0.3"),
    ({"ladder": ("half",)}, r"invalid value ladder=\['half'\]: prune.ladder must be numbers"),
    ({"ladder": (0.5,), "method": "none"}, r"prune.ladder prunes further, but method='none' prunes nothing; "
                                           r"allowed: method channel or magnitude, or ladder: \[\]"),
])
def test_prune_ladder_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        PruneConfig(**{"ratio": 0.3, **kw})


def test_prune_ladder_from_params_and_its_step_ratios() -> None:
    cfg = from_dict(PruneConfig, {"ratio": 0.3, "ladder": [0.5, 0.65]}, "params.yaml:prune")
    assert cfg.ladder == (0.5, 0.65) and PruneConfig().ladder == ()
    with pytest.raises(EdgeCompressError, match=r"params.yaml:prune: invalid value ladder=\[0.65, 0.5\]"):
        from_dict(PruneConfig, {"ratio": 0.3, "ladder": [0.65, 0.5]}, "params.yaml:prune")
    # Structured: fractions of the current channels, compounding from ratio to each level.
    assert ladder_ratios(cfg) == pytest.approx([1 - 0.5 / 0.7, 1 - 0.35 / 0.5])
    assert ladder_ratios(dataclasses.replace(cfg, method="magnitude")) == pytest.approx([0.5, 0.65])


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
def test_ladder_levels_shrink_and_leave_the_ratio_model_as_without_a_ladder() -> None:
    ds, levels = blob_dataset(), []
    model, report = prune_and_finetune(student(), kd_teacher(), ds, LADDER,
                                       on_level=lambda name, m, rep: levels.append((name, m, rep)))
    alone, alone_report = prune_and_finetune(student(), kd_teacher(), ds, dataclasses.replace(LADDER, ladder=()))
    assert [name for name, _, _ in levels] == ["pruned-30", "pruned-50", "pruned-70"]
    widths = [arch_of(m)["channels"] for _, m, _ in levels]
    for wider, narrower in zip(widths, widths[1:]):
        assert all(b <= a for a, b in zip(wider, narrower)) and sum(narrower) < sum(wider)
    for _, m, _ in levels:
        assert_student_consistent(m)
    # The ladder pruned copies: the returned model is the ratio level, as a run without a ladder gives it.
    assert all(m is not model for _, m, _ in levels) and arch_of(model) == arch_of(alone) == arch_of(levels[0][1])
    for k, v in alone.state_dict().items():
        assert torch.equal(model.state_dict()[k], v) and torch.equal(levels[0][1].state_dict()[k], v), k
    assert report["after"] == alone_report["after"] and alone_report["ladder"] == []
    assert [e["name"] for e in report["ladder"]] == ["pruned-50", "pruned-70"]
    for entry, (_, m, rep) in zip(report["ladder"], levels[1:]):
        assert rep is entry and entry["params"] == count_params(m) and entry["macs"] == count_macs(m, SHAPE)
        assert {"target_removed", "step_ratio", "val_accuracy", "val_accuracy_before_finetune", "test",
                "latency_p50_ms", "history"} <= set(entry) and len(entry["history"]) == 1
    assert [e["target_removed"] for e in report["ladder"]] == [0.5, 0.7]
    assert levels[0][2]["name"] == "pruned-30" and levels[0][2]["test"] == report["after"]["test"]


@pytest.mark.slow  # among the slowest unit tests: CI runs it, the fast lane does not
@pytest.mark.parametrize("ladder", [[0.5, 0.7], []])
def test_prune_stage_writes_every_ladder_level(tmp_path: Path, ladder: list) -> None:
    from edgecompress.checkpoint import save_checkpoint

    x, y = blob_arrays()
    np.savez(tmp_path / "blobs.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    prune = {**{k: v for k, v in dataclasses.asdict(LADDER).items() if k not in ("finetune", "protect")},
             "finetune": dataclasses.asdict(ONE_EPOCH), "ladder": ladder}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"data": {"format": "npz", "path": str(tmp_path / "blobs.npz"), "val_fraction": 0.2}, "prune": prune}))
    for name, m in (("student", student()), ("teacher", kd_teacher())):
        save_checkpoint(tmp_path / f"{name}.pt", m, arch_of(m), {})
    out = tmp_path / "models" / "ladder"
    out.mkdir(parents=True)
    (out / "pruned-90.pt").write_text("from an older ladder")  # the directory is replaced, not added to
    proc = subprocess.run([sys.executable, str(REPO / "stages/prune.py"), "--params", str(tmp_path / "params.yaml"),
                           "--student", str(tmp_path / "student.pt"), "--teacher", str(tmp_path / "teacher.pt"),
                           "--out", str(tmp_path / "pruned.pt"), "--metrics", str(tmp_path / "m.json"),
                           "--ladder", str(out), "--live", str(tmp_path / "live")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = ["pruned-30"] + [f"pruned-{round(100 * r)}" for r in ladder]
    assert sorted(p.name for p in out.glob("*.pt")) == sorted(f"{n}.pt" for n in names)
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]  # no scratch left
    pruned, _ = load_checkpoint(tmp_path / "pruned.pt")
    widths = []
    for n in names:
        m, meta = load_checkpoint(out / f"{n}.pt")
        assert meta["stage"] == "prune" and meta["metrics"]["name"] == n and "history" not in meta["metrics"]
        assert meta["params"]["prune"]["ladder"] == ladder
        widths.append(sum(arch_of(m)["channels"]))
    first, _ = load_checkpoint(out / "pruned-30.pt")
    for k, v in pruned.state_dict().items():  # the ratio level is pruned.pt
        assert torch.equal(first.state_dict()[k], v), k
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
    assert all(name in proc.stderr for name in names[1:])  # the summary line names each ladder level
    assert [e["name"] for e in json.loads((tmp_path / "m.json").read_text())["ladder"]] == names[1:]
    curves = sorted(p.name for p in (tmp_path / "live/plots/metrics").iterdir())
    assert curves == sorted(["step-1", *names[1:]])  # the ladder's fine-tune curves beside the steps'
