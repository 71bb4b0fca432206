"""The once-for-all student: slicing, extraction, BN recalibration, the sandwich step, checkpoints, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.config import from_dict
from edgecompress.data import Dataset, Split
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher, build_model, count_params
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic import ElasticConfig, elastic, elastic_net, sandwich_loss, slice_specs
from edgecompress.training.elastic_net import ElasticMobileNet, block_stages, extract, recalibrate_bn, sort_channels
from edgecompress.training.loop import TrainConfig, crop_fill, tensors
from edgecompress.training.soft_targets import compute_soft_targets

BASE = [8, 16, 16, 32, 32]  # stem, then 4 blocks: stages [stem], [0, 1], [2, 3]
STRIDES = [2, 1, 2, 1]
WIDTHS = (0.5, 1.0, 1.5)


def tiny_elastic(seed: int = 0, private_bn: bool = False) -> ElasticMobileNet:
    torch.manual_seed(seed)
    net = ElasticMobileNet(1, 4, BASE, STRIDES, WIDTHS, private_bn=private_bn)
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():  # BN statistics and affine terms away from their defaults: slicing must carry them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_stages_and_channels_follow_the_strides() -> None:
    net = tiny_elastic()
    assert block_stages(STRIDES) == [[0, 1], [2, 3]]
    assert net.layout(net.largest())[1] == [12, 24, 24, 48, 48]  # 1.5x, multiples of 4
    assert net.layout(net.spec(1.0))[1] == BASE  # width 1.0 is today's student exactly
    blocks, channels, strides = net.layout(net.spec([0.5, 1.0, 1.5], depths=[1, 2]))
    assert (blocks, channels, strides) == ([0, 2, 3], [4, 16, 48, 48], [2, 2, 1])
    assert net.name(net.spec(0.5)) == "w050"
    assert net.name(net.spec([0.5, 1.0, 1.5], depths=[1, 2])) == "w050-100-150-d1-2"


@pytest.mark.parametrize("private_bn", [False, True])
@pytest.mark.parametrize("widths, depths", [(0.5, None), (1.0, None), (1.5, None), ([1.5, 0.5, 1.0], None),
                                            ([0.5, 1.5, 1.5], [1, 1]), (0.75, [2, 1])])
def test_extracted_slice_gives_the_elastic_nets_logits(widths, depths, private_bn) -> None:
    net = tiny_elastic(private_bn=private_bn)
    spec = net.spec(widths, depths)
    sub, arch = extract(net, spec)
    x = images()
    with torch.no_grad():
        expect, got = net.run(x, spec), sub(x)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    assert arch["channels"] == net.layout(spec)[1] and len(arch["strides"]) == len(net.layout(spec)[0])
    if spec != net.largest():  # a narrower slice is a different function of the same weights
        assert not torch.allclose(expect, net.run(x, net.largest()), atol=1e-3)


def test_bn_recalibration_changes_only_bn_statistics_and_measures_the_batch() -> None:
    net = tiny_elastic()
    sub, _ = extract(net, net.spec(1.0))
    before = {k: v.clone() for k, v in sub.state_dict().items()}
    params_before = {k: p.detach().clone() for k, p in sub.named_parameters()}
    x = images(64, seed=3)
    assert recalibrate_bn(sub, x, batch_size=64) == 1 + 2 * 4  # stem + dw and pw of every block
    after = sub.state_dict()
    stats = {k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    for k in after:
        if k in stats:
            if not k.endswith("num_batches_tracked"):
                assert not torch.allclose(after[k], before[k]), f"{k} was not recalibrated"
        else:
            assert torch.equal(after[k], before[k]), f"{k} is not a BN statistic but changed"
    for k, p in sub.named_parameters():
        assert torch.equal(p, params_before[k])
    assert not sub.training and sub.stem[1].momentum == 0.1  # mode and momentum restored
    with torch.no_grad():  # one batch: the running mean is that batch's mean of the stem conv's output
        conv_out = sub.stem[0](x)
    torch.testing.assert_close(sub.stem[1].running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_recalibrating_the_elastic_net_in_place_matches_the_extracted_slice() -> None:
    """The sliced forward honours momentum None too, so both ways give the same statistics."""
    net, x = tiny_elastic(), images(48, seed=5)
    spec = net.spec(0.5)
    sub, _ = extract(net, spec)
    recalibrate_bn(sub, x, batch_size=16)
    net.active = spec
    recalibrate_bn(net, x, batch_size=16)
    sub_again, _ = extract(net, spec)
    torch.testing.assert_close(sub_again.state_dict()["blocks.1.pw.1.running_var"],
                               sub.state_dict()["blocks.1.pw.1.running_var"])


def test_channel_sorting_keeps_the_largest_exact_and_puts_the_loudest_channels_first() -> None:
    net = tiny_elastic()
    x = images()
    with torch.no_grad():
        before_big, before_small = net.run(x, net.largest()), net.run(x, net.smallest())
    perms = sort_channels(net)
    with torch.no_grad():
        after_big, after_small = net.run(x, net.largest()), net.run(x, net.smallest())
    torch.testing.assert_close(after_big, before_big, rtol=1e-5, atol=1e-5)  # the same function, reordered
    assert not torch.allclose(after_small, before_small, atol=1e-3)  # the narrow slice now keeps other channels
    producers = [net.net.stem] + [b.pw for b in net.net.blocks]
    for seq, perm in zip(producers, perms):
        gamma = seq[1].weight.detach().abs()
        assert torch.all(gamma[:-1] >= gamma[1:])  # most important first
        assert sorted(perm) == list(range(len(gamma))) and perm != sorted(perm)


def pool_around(tmp_path: Path, model: nn.Module, arch: dict[str, Any], **dirs: Path) -> list[str]:
    """The pool's model names with a tiny teacher and ``model`` as the student and the pruned student, plus the
    extra checkpoint directories ``dirs`` (pool_models' keywords: elastic=..., students=...)."""
    from edgecompress.compression.pool import pool_models

    teacher = ResNetTeacher(1, 4, [8, 16], [1, 1], 8)
    save_checkpoint(tmp_path / "teacher.pt", teacher, {"kind": "resnet", "in_channels": 1, "num_classes": 4,
                                                       "widths": [8, 16], "blocks": [1, 1], "stem": 8}, {})
    for name in ("student", "pruned"):
        save_checkpoint(tmp_path / f"{name}.pt", model, arch, {})
    models, _ = pool_models(tmp_path / "teacher.pt", [], tmp_path / "student.pt", tmp_path / "pruned.pt", None, 0.3,
                            **dirs)
    return models


def stored_targets(epochs: int) -> tuple[Dataset, TrainConfig, list[nn.Module], Any]:
    """A tiny data set, its training config, two tiny teachers and their stored soft targets (2 views)."""
    ds = tiny_dataset()
    train = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, crop_pad=1, flip=True, seed=0)
    torch.manual_seed(0)
    members = [ResNetTeacher(1, 4, [8, 16], [1, 1], 8).eval() for _ in range(2)]
    st = compute_soft_targets(members, tensors(ds)["train"][0], crop_fill(ds), 2, train)
    return ds, train, members, st


def test_progressive_shrinking_trains_the_largest_first_then_the_sandwich() -> None:
    ds, train, members, st = stored_targets(epochs=1)
    cfg = ElasticConfig(widths=WIDTHS, largest_epochs=2, shrink_lr=0.01, recalibration_images=32, train=train)
    _, slices, report = elastic(ds, DistillConfig(**TINY_DISTILL, train=train), cfg, st, members)
    phases = [h["phase"] for h in report["history"]]
    assert phases == ["largest", "largest", "sandwich"] and report["largest_epochs"] == 2
    assert "smallest" not in report["history"][0] and "smallest" in report["history"][2]
    assert report["history"][2]["lr"] <= 0.01  # the sandwich phase's own one-cycle peak
    assert [s.name for s in slices] == ["elastic-w050", "elastic-w100", "elastic-w150"]


def test_uniform_sampling_draws_one_middle_width_for_the_whole_network() -> None:
    net = ElasticMobileNet(1, 4, BASE, STRIDES, (0.5, 0.75, 1.0, 1.5))
    gen = torch.Generator().manual_seed(0)
    drawn = [net.sample(gen, per_stage=False).widths for _ in range(40)]
    assert all(len(set(ws)) == 1 for ws in drawn)  # one width everywhere: the networks slices: auto extracts
    assert {ws[0] for ws in drawn} == {0.75, 1.0}  # the extremes are trained every step anyway
    mixed = [net.sample(gen).widths for _ in range(40)]
    assert any(len(set(ws)) > 1 for ws in mixed) and {w for ws in mixed for w in ws} == {0.5, 0.75, 1.0, 1.5}
    two = ElasticMobileNet(1, 4, BASE, STRIDES, (0.5, 1.5))  # nothing in between: any width
    assert {two.sample(gen, per_stage=False).widths[0] for _ in range(20)} == {0.5, 1.5}


def test_private_bn_gives_each_narrower_width_its_own_batchnorm() -> None:
    """Switchable BatchNorm: a layer keeps one BN per narrower channel count it runs at; a slice carries its
    width's (not the shared corner), the largest runs on the network's own, and sorting restarts them."""
    shared, net = tiny_elastic(private_bn=False), tiny_elastic(private_bn=True)
    assert len(shared.private_bn) == 0
    assert sorted(net.private_bn) == sorted(["stem:4", "stem:8"] + [f"b{i}{p}:{c}" for i, p, cs in [
        (0, "dw", (4, 8)), (0, "pw", (8, 16)), (1, "dw", (8, 16)), (1, "pw", (8, 16)),
        (2, "dw", (8, 16)), (2, "pw", (16, 32)), (3, "dw", (16, 32)), (3, "pw", (16, 32))] for c in cs])
    sub, _ = extract(net, net.spec(0.5))
    assert torch.equal(sub.blocks[3].pw[1].weight, net.private_bn["b3pw:16"].weight)
    assert not torch.equal(sub.blocks[3].pw[1].weight, net.net.blocks[3].pw[1].weight[:16])
    big, _ = extract(net, net.largest())
    assert torch.equal(big.blocks[3].pw[1].weight, net.net.blocks[3].pw[1].weight)
    x = images()
    with torch.no_grad():
        before = net.run(x, net.largest())
        sort_channels(net)
        torch.testing.assert_close(net.run(x, net.largest()), before, rtol=1e-5, atol=1e-5)
    assert torch.equal(net.private_bn["b3pw:16"].weight, net.net.blocks[3].pw[1].weight[:16])
    # Training: the shared BN's scale learns from the largest only, each private one from its own width.
    net.train()
    x, t, y = images(8), torch.randn(2, 8, 4), torch.zeros(8, dtype=torch.long)
    cfg = ElasticConfig(widths=WIDTHS, random_subnets=0)
    sandwich_loss(net, cfg, ensemble=True)(net, x, t, y, 0, 1)[0].backward()
    assert net.private_bn["b3pw:16"].weight.grad.abs().sum() > 0  # the smallest (0.5) ran at 16 channels
    assert net.private_bn["b3pw:32"].weight.grad is None  # width 1.0 did not run this step
    shared_grad = net.net.blocks[3].pw[1].weight.grad.clone()
    net.zero_grad()
    sandwich_loss(net, cfg, ensemble=True, largest_only=True)(net, x, t, y, 0, 1)[0].backward()
    torch.testing.assert_close(net.net.blocks[3].pw[1].weight.grad, shared_grad)


def test_random_weight_scales_only_the_random_subnets_loss() -> None:
    net = tiny_elastic()  # eval: every pass sees the same BN statistics, so the parts are comparable
    x, y, t = images(8), torch.zeros(8, dtype=torch.long), torch.randn(2, 8, 4)
    one, parts = sandwich_loss(net, ElasticConfig(widths=WIDTHS, random_weight=1.0), ensemble=True)(net, x, t, y, 0, 2)
    two, _ = sandwich_loss(net, ElasticConfig(widths=WIDTHS, random_weight=2.0), ensemble=True)(net, x, t, y, 0, 2)
    middle = float(one.detach()) - parts["largest"] - parts["smallest"]  # the one random width (1.0)
    assert middle > 0.01
    assert float(two.detach()) == pytest.approx(parts["largest"] + parts["smallest"] + 2 * middle, rel=1e-5)


def test_random_subnets_join_every_kth_step_only() -> None:
    net = tiny_elastic().train()
    x, y = images(8), torch.randint(0, 4, (8,))
    t = torch.randn(2, 8, 4)
    cfg = ElasticConfig(widths=WIDTHS, random_subnets=2, random_every=3)
    counted = []
    real_run = net.run
    net.run = lambda xb, spec: counted.append(spec) or real_run(xb, spec)  # type: ignore[method-assign]
    loss = sandwich_loss(net, cfg, ensemble=True)
    for step in range(6):
        counted.clear()
        loss(net, x, t, y, step, 6)
        assert len(counted) == (4 if step % 3 == 0 else 2)  # largest + smallest, and the 2 random ones every 3rd


def test_smallest_every_k_takes_turns_with_the_random_subnets() -> None:
    net = tiny_elastic().train()
    x, y, t = images(8), torch.randint(0, 4, (8,)), torch.randn(2, 8, 4)
    cfg = ElasticConfig(widths=WIDTHS, random_every=2, smallest_every=2)
    ran: list[list[float]] = []
    real_run = net.run
    net.run = lambda xb, spec: ran[-1].append(spec) or real_run(xb, spec)  # type: ignore[method-assign]
    loss = sandwich_loss(net, cfg, ensemble=True)
    for step in range(4):
        ran.append([])
        _, parts = loss(net, x, t, y, step, 4)
        assert ran[-1][0] == net.largest() and len(ran[-1]) == 2  # the largest, then one other
        if step % 2:
            assert ran[-1][1] == net.smallest()
        else:
            assert ran[-1][1] not in (net.largest(), net.smallest())  # a random width between them
        assert ("smallest" in parts) == bool(step % 2)  # the smallest on the random ones' off steps


def test_one_sandwich_step_trains_every_width_and_lowers_the_loss() -> None:
    net = tiny_elastic().train()
    cfg = ElasticConfig(widths=WIDTHS, random_subnets=2, inplace=0.5)
    x, y = images(32, seed=1), torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(1))
    t = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(2)) * 3  # two members' stored logits
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    loss, parts = sandwich_loss(net, cfg, ensemble=True, seed=7)(net, x, t, y, 0, 1)
    assert set(parts) == {"largest", "smallest"} and float(loss.detach()) > parts["largest"] + parts["smallest"] - 1e-6
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt.zero_grad()
    loss.backward()
    pw = net.net.blocks[3].pw[0].weight.grad  # 48 x 48 at the top: rows past the smallest's 16 learn from bigger ones only
    assert pw[:16, :16].abs().sum() > 0 and pw[16:, 16:].abs().sum() > 0
    opt.step()
    assert any(not torch.equal(p, before[k]) for k, p in net.named_parameters())
    again, _ = sandwich_loss(net, cfg, ensemble=True, seed=7)(net, x, t, y, 0, 1)  # same sub-networks, same batch
    assert float(again) < float(loss)


def test_inplace_distillation_makes_the_small_ones_follow_the_largest() -> None:
    """With alpha 1 and inplace 1 a sub-network as wide as the largest has nothing to learn: loss 0."""
    net = ElasticMobileNet(1, 4, BASE, STRIDES, (1.0,)).train()
    cfg = ElasticConfig(widths=(1.0,), random_subnets=1, inplace=1.0, alpha=1.0)
    x, y, t = images(8), torch.zeros(8, dtype=torch.long), torch.randn(1, 8, 4)
    net.eval()  # eval: the same BN statistics for every pass, so the widths' outputs are identical
    _, parts = sandwich_loss(net, cfg, ensemble=False)(net, x, t, y, 0, 1)
    assert parts["largest"] > 0.01 and parts["smallest"] == pytest.approx(0.0, abs=1e-6)


def test_slice_round_trips_through_checkpoint_and_build_model(tmp_path) -> None:
    net = tiny_elastic()
    sub, arch = extract(net, net.spec([0.5, 1.5, 1.0], depths=[1, 2]))
    assert isinstance(build_model(arch), MobileNetStudent)
    save_checkpoint(tmp_path / "elastic-x.pt", sub, arch, {"stage": "elastic"})
    loaded, meta = load_checkpoint(tmp_path / "elastic-x.pt")
    assert meta["arch"] == arch and count_params(loaded) == count_params(sub)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sub(x))


@pytest.mark.parametrize("section, match", [
    ({"widths": [0, 1.0]}, r"params.yaml:elastic: invalid value widths=\[0, 1.0\]: every width must be a number > 0"),
    ({"widths": [1.0, 1.0]}, "list each width once"),
    ({"widths": [0.5, 2.0], "slices": [3.0]}, r"slices\[0\]=3.0: width 3.0 is larger than the elastic maximum 2.0 "
                                              r".*add 3.0 to elastic.widths"),
    ({"widths": [0.5, 2.0], "slices": [[0.5, 0.5, 2.5, 2.0]]}, "larger than the elastic maximum"),
    ({"widths": [0.5, 2.0], "slices": [1.0]}, r"width 1.0 was never trained; use one of elastic.widths"),
    ({"widths": [0.5, 2.0], "slices": [0]}, r"slices\[0\]=0: widths must be numbers > 0"),
    ({"slices": [{"width": 1.0, "depth": [1, 1, 1]}]}, "needs elastic.elastic_depth: true"),
    ({"slices": [{"depth": [1, 1, 1]}]}, "takes the keys width"),
    ({"slices": "all"}, "invalid value slices='all': must be auto or a non-empty list"),
    ({"inplace": 1.5}, r"inplace=1.5: must be within \[0, 1\]"),
    ({"random_subnets": -1}, "random_subnets=-1: must be an integer >= 0"),
    ({"largest_epochs": -2}, "largest_epochs=-2: must be an integer >= 0"),
    ({"sample": "random"}, "invalid value sample='random': allowed per_stage .* or uniform"),
    ({"random_weight": 0}, r"random_weight=0: must be a number > 0"),
    ({"random_every": 0}, r"random_every=0: must be an integer >= 1 \(1: random sub-networks every step\)"),
    ({"smallest_every": 0}, r"smallest_every=0: must be an integer >= 1 \(1: the smallest every step\)"),
    ({"largest_epochs": 1.5}, "largest_epochs=1.5: must be an integer"),
    ({"shrink_lr": 0}, r"shrink_lr=0: must be a number > 0, or null \(the sandwich phase uses train.lr\)"),
])
def test_config_errors_name_the_key_and_the_fix(section, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        from_dict(ElasticConfig, section, "params.yaml:elastic")


def tiny_dataset(n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)

    def split(m: int) -> Split:
        y = rng.integers(0, 4, m).astype(np.int64)
        x = rng.integers(0, 40, (m, 1, 12, 12)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 0, 3 * c:3 * c + 3, :] = 250
        return Split(x, y)

    return Dataset(split(n), split(24), split(24), list("abcd"), (0.2,), (0.3,))


TINY_DISTILL = dict(channels=[8, 16, 16, 32, 32], strides=[2, 1, 2, 1], width=1.0, views=2, source="ensemble")


@pytest.mark.parametrize("distill, match", [
    ({**TINY_DISTILL, "student": "user/mine.py:build"}, r"distill.student is set .* set elastic.enabled: false, or "
                                                         r"distill.student: null"),
    ({**TINY_DISTILL, "views": 0}, "distill.views is 0; set distill.views: 4"),
])
def test_elastic_needs_our_student_and_stored_targets(distill, match) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        elastic_net(tiny_dataset(), DistillConfig(**distill), ElasticConfig())


def test_slice_list_is_checked_against_the_stages() -> None:
    net = elastic_net(tiny_dataset(), DistillConfig(**TINY_DISTILL), ElasticConfig(widths=WIDTHS))
    assert [net.name(s) for s in slice_specs(net, ElasticConfig(widths=WIDTHS))] == ["w050", "w100", "w150"]
    with pytest.raises(EdgeCompressError, match=r"elastic.slices\[0\]: a slice needs one width per stage \(3"):
        slice_specs(net, ElasticConfig(widths=WIDTHS, slices=([0.5, 1.0],)))


def test_elastic_trains_from_stored_targets_and_scores_each_slice() -> None:
    ds, train, members, st = stored_targets(epochs=2)
    distill = DistillConfig(**TINY_DISTILL, train=train)
    cfg = ElasticConfig(widths=WIDTHS, slices=(0.5, [0.5, 1.5, 1.0], 1.5), recalibration_images=32, train=train)
    net, slices, report = elastic(ds, distill, cfg, st, members)
    assert [s.name for s in slices] == ["elastic-w050", "elastic-w050-150-100", "elastic-w150"]
    sizes = [s.report["params"] for s in slices]
    assert sizes[0] < sizes[1] < sizes[2] == report["slices"]["elastic-w150"]["params"]
    assert len(report["epoch_seconds"]) == 2 and all(0 <= s.report["val"]["accuracy"] <= 1 for s in slices)
    assert {"largest", "smallest"} <= set(report["history"][0])
    with pytest.raises(EdgeCompressError, match="set elastic.train.crop_pad: 1"):
        elastic(ds, distill, dataclasses.replace(cfg, train=dataclasses.replace(train, crop_pad=0)), st, members)
    with pytest.raises(EdgeCompressError, match="other teacher weights"):
        elastic(ds, distill, cfg, st, members[::-1])


def test_validate_checks_the_elastic_section_with_distill() -> None:
    from pathlib import Path

    from edgecompress.config import load_params
    from edgecompress.validate import validate_params

    root = Path(__file__).resolve().parent.parent
    params = load_params(root / "params.yaml")
    validate_params(params, targets_dir=root / "targets")  # the repository's params are valid as they are
    on = {**params, "elastic": {**params["elastic"], "enabled": True}}
    validate_params(on, targets_dir=root / "targets")
    with pytest.raises(EdgeCompressError, match="distill.views is 0; set distill.views: 4"):
        validate_params({**on, "distill": {**params["distill"], "views": 0}}, targets_dir=root / "targets")
    with pytest.raises(EdgeCompressError, match=r"elastic: invalid value widths=\[0.5, -1\]"):
        validate_params({**on, "elastic": {"widths": [0.5, -1]}}, targets_dir=root / "targets")


def test_saved_slices_join_the_candidate_pool(tmp_path) -> None:
    from edgecompress.training.elastic import Slice, save_slices

    net = tiny_elastic()
    slices = []
    for w in (0.5, 1.5):
        model, arch = extract(net, net.spec(w))
        slices.append(Slice(f"elastic-{net.name(net.spec(w))}", net.spec(w), model, arch, {}))
    out = tmp_path / "elastic"
    out.mkdir()
    (out / "elastic-w999.pt").write_bytes(b"stale")  # an earlier run's slice this run did not make
    paths = save_slices(out, slices, lambda s: {"stage": "elastic", "metrics": {"params": count_params(s.model)}})
    assert sorted(p.name for p in out.iterdir()) == ["elastic-w050.pt", "elastic-w050.pt.json",
                                                     "elastic-w150.pt", "elastic-w150.pt.json"]
    models = pool_around(tmp_path, slices[0].model, slices[0].arch, elastic=out)
    names = [m.name for m in models]
    assert names == ["teacher", "student", "pruned", "elastic-w050", "elastic-w150"]
    assert count_params(models[-1].model) == count_params(slices[1].model) and paths[1].exists()
