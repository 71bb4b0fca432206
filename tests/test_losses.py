"""Distillation losses on tiny tensors against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.models import forward_with_features
from edgecompress.training.losses import (CombinedKDLoss, HintAdapter, KDLossConfig, attention_transfer, ensemble_kd,
                                          ensemble_mean_probs, hint_loss, hinton_kd, kd_loss_config, rkd_angle,
                                          rkd_distance)


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T1 = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
T2 = np.array([[0.0, 3.0, -1.0], [0.5, 2.0, 1.0]])


def test_hinton_kd_matches_numpy_and_is_zero_for_equal_logits() -> None:
    t = 2.0
    want = t ** 2 * _np_kl(_np_softmax(T1 / t), _np_softmax(S / t))
    got = hinton_kd(torch.tensor(S), torch.tensor(T1), t)
    assert got.item() == pytest.approx(want, rel=1e-9)
    assert hinton_kd(torch.tensor(S), torch.tensor(S), t).item() == pytest.approx(0.0, abs=1e-12)


def test_ensemble_kd_matches_numpy() -> None:
    t = 3.0
    p = (_np_softmax(T1 / t) + _np_softmax(T2 / t)) / 2
    members = [torch.tensor(T1), torch.tensor(T2)]
    assert np.allclose(ensemble_mean_probs(members, t).numpy(), p)
    got = ensemble_kd(torch.tensor(S), members, t)
    assert got.item() == pytest.approx(t ** 2 * _np_kl(p, _np_softmax(S / t)), rel=1e-9)
    assert ensemble_kd(torch.tensor(S), [torch.tensor(S), torch.tensor(S)], t).item() == pytest.approx(0, abs=1e-12)


def test_hint_loss_zero_for_identity_adapter_and_pools_spatial_sizes() -> None:
    torch.manual_seed(0)
    adapter = HintAdapter(3, 3, batch_norm=False)
    with torch.no_grad():
        adapter.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        adapter.conv.bias.zero_()
    t = torch.randn(2, 3, 4, 4)
    assert hint_loss(t, t, adapter).item() == pytest.approx(0.0, abs=1e-12)
    # Student map twice the teacher's size: pooling 2x2 blocks of a nearest-upsampled map recovers it.
    s = t.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert hint_loss(s, t, adapter).item() == pytest.approx(0.0, abs=1e-10)
    # And with BN in eval mode with identity statistics (fresh BN: mean 0, var 1, eps tiny).
    bn_adapter = HintAdapter(3, 5, batch_norm=True).eval()
    assert hint_loss(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 3, 3), bn_adapter).dim() == 0
    bn_id = HintAdapter(3, 3, batch_norm=True).eval()
    bn_id.bn.eps = 0.0
    with torch.no_grad():
        bn_id.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    assert hint_loss(t, t, bn_id).item() == pytest.approx(0.0, abs=1e-12)


TRI_T = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # right isosceles
TRI_S = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]],
                     dtype=torch.float64)  # equilateral, side 1, in 3-D (dimensions differ)


def _huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


def test_rkd_distance_hand_value_zero_and_scale_invariance() -> None:
    mu = (2 + math.sqrt(2)) / 3
    t_norm = [1 / mu, 1 / mu, math.sqrt(2) / mu]  # student's normalised distances are all 1
    want = sum(_huber(1 - v) for v in t_norm) / 3
    assert rkd_distance(TRI_S, TRI_T).item() == pytest.approx(want, rel=1e-9)
    assert rkd_distance(TRI_T, TRI_T).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_distance(TRI_S, 7.5 * TRI_T).item() == pytest.approx(want, rel=1e-9)
    emb = torch.randn(6, 4, dtype=torch.float64)
    assert rkd_distance(emb, 0.01 * emb).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_angle_hand_value_and_zero() -> None:
    # Teacher angles 90, 45, 45 degrees; student 60, 60, 60.
    want = (_huber(0.5 - 0.0) + 2 * _huber(0.5 - math.sqrt(2) / 2)) / 3
    assert rkd_angle(TRI_S, TRI_T).item() == pytest.approx(want, rel=1e-9)
    assert rkd_angle(TRI_T, 3 * TRI_T).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_gradient_is_finite_and_accepts_feature_maps() -> None:
    s = torch.randn(4, 6, 3, 3, requires_grad=True)
    loss = rkd_distance(s, torch.randn(4, 10, 2, 2)) + rkd_angle(s, torch.randn(4, 10, 2, 2))
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_attention_transfer_hand_value_and_zero() -> None:
    s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t = torch.ones(1, 1, 2, 2)
    # Q_s = (1,0,0,0), Q_t = (.5,.5,.5,.5): ||Q_s - Q_t|| = sqrt(4 * 0.25) = 1.
    assert attention_transfer(s, t).item() == pytest.approx(1.0, rel=1e-6)
    x = torch.randn(2, 3, 4, 4)
    assert attention_transfer(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_transfer(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)).dim() == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"losses": (("feature", 1.0),)}, r"kind='feature'.*allowed \['response'"),
    ({"losses": (("response", -0.5),)}, r"weight=-0.5 for 'response'"),
    ({"losses": (("response", 1.0), ("response", 2.0))}, r"listed twice"),
    ({"temperature": 0}, r"temperature=0: must be > 0"),
    ({"temperature": -1.0}, r"temperature=-1.0"),
    ({"alpha": 1.5}, r"alpha=1.5: must be within \[0, 1\]"),
])
def test_kd_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        KDLossConfig(**kwargs)


def test_kd_config_from_dict() -> None:
    cfg = kd_loss_config({"losses": {"response": 0.9, "rkd_distance": 25}, "temperature": 4}, "distill.kd")
    assert cfg.losses == (("response", 0.9), ("rkd_distance", 25.0)) and cfg.needs_features
    with pytest.raises(EdgeCompressError, match=r"distill.kd: unknown key 'temp'; allowed keys: losses, temperature"):
        kd_loss_config({"temp": 4}, "distill.kd")
    with pytest.raises(EdgeCompressError, match=r"distill.kd: invalid value losses kind='fitnet'"):
        kd_loss_config({"losses": {"fitnet": 1.0}}, "distill.kd")


def test_combined_loss_builds_adapter_and_trains_it(tiny_student: nn.Module, tiny_teacher: nn.Module) -> None:
    x = torch.randn(4, 1, 12, 12)
    y = torch.tensor([0, 1, 2, 3])
    cfg = KDLossConfig(losses=(("response", 0.5), ("hint", 1.0), ("rkd_distance", 25.0), ("rkd_angle", 50.0),
                               ("attention", 100.0)), alpha=0.5)
    loss_fn = CombinedKDLoss(cfg, tiny_student, tiny_teacher, x[:1])
    assert loss_fn.adapter is not None and loss_fn.adapter.conv.in_channels == 32
    assert loss_fn.adapter.conv.out_channels == 16
    assert len(list(loss_fn.parameters())) > 0  # the adapter's, for the optimizer
    with torch.no_grad():
        t_logits, t_feat = forward_with_features(tiny_teacher, x)
    s_logits, s_feat = forward_with_features(tiny_student.train(), x)
    total, parts = loss_fn(s_logits, s_feat, t_logits, t_feat, y)
    assert set(parts) == {"ce", "response", "hint", "rkd_distance", "rkd_angle", "attention", "total"}
    want = 0.5 * parts["ce"] + 0.5 * parts["response"] + parts["hint"] + 25 * parts["rkd_distance"] \
        + 50 * parts["rkd_angle"] + 100 * parts["attention"]
    assert parts["total"] == pytest.approx(want, rel=1e-5)
    total.backward()
    assert loss_fn.adapter.conv.weight.grad is not None
    with pytest.raises(EdgeCompressError, match="needs student and teacher feature maps"):
        loss_fn(s_logits.detach(), None, t_logits, None, y)


def test_combined_response_only_equals_train_kd_loss(tiny_student: nn.Module) -> None:
    from edgecompress.training.losses import kd_loss

    s, t = torch.tensor(S, dtype=torch.float32), torch.tensor(T1, dtype=torch.float32)
    y = torch.tensor([0, 2])
    loss_fn = CombinedKDLoss(KDLossConfig(losses=(("response", 0.9),), temperature=4, alpha=0.9),
                             tiny_student, tiny_student, torch.zeros(1, 1, 12, 12))
    assert loss_fn(s, None, t, None, y)[0].item() == pytest.approx(kd_loss(4, 0.9)(s, t, y).item(), rel=1e-6)
