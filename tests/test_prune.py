"""Structured pruning really removes channels; magnitude pruning really zeroes weights."""

from __future__ import annotations

import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, arch_of, build_model, count_macs, count_params
from edgecompress.prune import PruneConfig, prune_magnitude, prune_step, sparsity, step_ratios


def test_channel_pruning_shrinks_every_layer_consistently() -> None:
    torch.manual_seed(0)
    m = MobileNetStudent(1, 4, [16, 32, 32, 64], [2, 1, 2]).eval()
    params0, macs0 = count_params(m), count_macs(m, (1, 12, 12))
    cfg = PruneConfig(method="l1_channel", ratio=0.5, round_to=4)
    prune_step(m, cfg, 0.5, (1, 12, 12))
    channels = arch_of(m)["channels"]
    assert channels == [8, 16, 16, 32]
    # Depthwise convs follow their producers: groups == in == out channels.
    for block in m.blocks:
        dw = block.dw[0]
        assert dw.groups == dw.in_channels == dw.out_channels
    assert m.fc.out_features == 4  # classes are protected
    assert count_params(m) < 0.4 * params0 and count_macs(m, (1, 12, 12)) < 0.4 * macs0
    # The pruned model is a plain dense model again: rebuild from arch and run.
    rebuilt = build_model(arch_of(m))
    rebuilt.load_state_dict(m.state_dict())
    assert rebuilt.eval()(torch.randn(3, 1, 12, 12)).shape == (3, 4)


def test_round_to_keeps_channel_multiples() -> None:
    torch.manual_seed(0)
    m = MobileNetStudent(1, 4, [16, 32, 32, 64], [2, 1, 2]).eval()
    prune_step(m, PruneConfig(ratio=0.3, round_to=8), 0.3, (1, 12, 12))
    assert all(c % 8 == 0 for c in arch_of(m)["channels"])


def test_magnitude_pruning_zeroes_weights_but_keeps_shapes(tiny_student) -> None:
    params0 = count_params(tiny_student)
    prune_magnitude(tiny_student, 0.6)
    assert sparsity(tiny_student) == pytest.approx(0.6, abs=0.01)
    assert count_params(tiny_student) == params0


def test_iterative_schedule_compounds_to_the_target_ratio() -> None:
    ratios = step_ratios(PruneConfig(ratio=0.75, steps=2))
    keep = 1.0
    for r in ratios:
        keep *= 1 - r
    assert keep == pytest.approx(0.25)
    assert step_ratios(PruneConfig(method="magnitude", ratio=0.6, steps=3)) == pytest.approx([0.2, 0.4, 0.6])


@pytest.mark.parametrize("kw, match", [
    ({"method": "random"}, "allowed"), ({"ratio": 1.0}, r"\[0, 1\)"), ({"ratio": -0.1}, "ratio"),
    ({"steps": 0}, "steps"), ({"round_to": 0}, "round_to"),
])
def test_prune_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        PruneConfig(**kw)
