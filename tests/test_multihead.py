"""Multi-head student and the Ferianc & Rodrigues (2022) loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, MultiHeadStudent, PerHeadOutputs
from edgecompress.training.multihead import (MultiHeadKDConfig, diversity_regulariser, ferianc_loss,
                                             head_parameter_vectors, lambda_schedule)


@pytest.fixture
def mh() -> MultiHeadStudent:
    torch.manual_seed(0)
    return MultiHeadStudent(MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]), num_heads=3).eval()


def test_forward_is_log_mean_probability_and_per_head_shapes(mh: MultiHeadStudent) -> None:
    x = torch.randn(5, 1, 12, 12)
    probs = mh(x).exp()
    assert probs.shape == (5, 4)
    assert torch.allclose(probs, F.softmax(mh.forward_heads(x), -1).mean(0), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    assert mh.forward_heads(x).shape == (3, 5, 4)
    mean, per_head = PerHeadOutputs(mh)(x)
    assert mean.shape == (5, 4) and per_head.shape == (5, 3, 4)
    assert torch.allclose(per_head.mean(1), mean, atol=1e-6)


def test_ferianc_loss_with_a_zero_is_ce_of_mean() -> None:
    torch.manual_seed(0)
    heads = torch.randn(3, 4, 5)
    members = torch.randn(3, 4, 5)
    y = torch.tensor([0, 1, 4, 2])
    loss, parts = ferianc_loss(heads, members, y, a=0.0, b=0.5, t_member=8, t_mean=1, lam=0.0, head_weights=[])
    want = F.nll_loss(torch.log(F.softmax(heads, -1).mean(0)), y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["ce"] == pytest.approx(want.item(), rel=1e-6)


def test_ferianc_loss_kl_terms_match_manual() -> None:
    torch.manual_seed(1)
    heads, members = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    a, b, tm, tmean = 0.7, 0.4, 4.0, 2.0

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (p.log() - q.log())).sum(1).mean()

    ce = F.nll_loss(F.softmax(heads, -1).mean(0).log(), y)
    kl_mean = kl(F.softmax(members / tmean, -1).mean(0), F.softmax(heads / tmean, -1).mean(0)) * tmean ** 2
    kl_heads = (kl(F.softmax(members[0] / tm, -1), F.softmax(heads[0] / tm, -1))
                + kl(F.softmax(members[1] / tm, -1), F.softmax(heads[1] / tm, -1))) / 2 * tm ** 2
    want = (1 - a) * ce + a * ((1 - b) * kl_mean + b * kl_heads)
    loss, _ = ferianc_loss(heads, members, y, a, b, tm, tmean, 0.0, [])
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    # Zero distillation terms when every head equals its member.
    _, parts = ferianc_loss(members, members, y, a, b, tm, tmean, 0.0, [])
    assert parts["kl_mean"] == pytest.approx(0, abs=1e-12) and parts["kl_heads"] == pytest.approx(0, abs=1e-12)


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return F.cosine_similarity(u, v, dim=0).item()


def test_diversity_regulariser_pushes_heads_apart() -> None:
    torch.manual_seed(0)
    base = torch.randn(4, 6, dtype=torch.float64)
    w1 = torch.nn.Parameter(base + 0.01 * torch.randn(4, 6, dtype=torch.float64))
    w2 = torch.nn.Parameter(base + 0.01 * torch.randn(4, 6, dtype=torch.float64))

    def sims() -> tuple[float, float]:
        t1, t2 = w1.detach().flatten(), w2.detach().flatten()
        mean = (t1 + t2) / 2
        return _cos(t1, t2), (_cos(mean, t1) + _cos(mean, t2)) / 2

    before = sims()
    opt = torch.optim.SGD([w1, w2], lr=1.0)
    # Constant logits: the CE term has no gradient w.r.t. the weights, so the step is lam * regulariser only.
    loss, parts = ferianc_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), torch.tensor([0]), a=0.0, b=0.0,
                               t_member=1, t_mean=1, lam=1.0, head_weights=[w1, w2])
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = sims()
    assert parts["diversity"] == pytest.approx(2 * (1 + before[1]) / 2, rel=1e-9)
    assert diversity_regulariser([w1, w2]).item() < parts["diversity"]
    assert after[0] < before[0]  # heads less similar to each other
    assert after[1] < before[1]  # and to their mean


def test_head_parameter_vectors_include_bias(mh: MultiHeadStudent) -> None:
    vecs = head_parameter_vectors(mh)
    assert len(vecs) == 3 and vecs[0].numel() == 32 * 4 + 4 and vecs[0].requires_grad


def test_lambda_schedule_and_config() -> None:
    assert lambda_schedule(0, 100, 2.0, 0.5) == 0.0
    assert lambda_schedule(25, 100, 2.0, 0.5) == pytest.approx(1.0)
    assert lambda_schedule(80, 100, 2.0, 0.5) == 2.0
    assert lambda_schedule(0, 100, 2.0, 0.0) == 2.0
    cfg = MultiHeadKDConfig()
    assert (cfg.a, cfg.b, cfg.t_member, cfg.t_mean) == (0.95, 0.5, 8.0, 1.0)
    with pytest.raises(EdgeCompressError, match=r"invalid value b=1.5: must be within \[0, 1\]"):
        MultiHeadKDConfig(b=1.5)
    with pytest.raises(EdgeCompressError, match=r"t_member=0"):
        MultiHeadKDConfig(t_member=0)


def test_config_loss_runs_and_backprops(mh: MultiHeadStudent) -> None:
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    mh.train()
    loss, parts = MultiHeadKDConfig(num_heads=3).loss(mh.forward_heads(x), torch.randn(3, 4, 4), y, mh, 50, 100)
    loss.backward()
    assert "diversity" in parts and all(h.weight.grad is not None for h in mh.heads)


def test_onnx_export_matches_pytorch(mh: MultiHeadStudent, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    wrapper = PerHeadOutputs(mh).eval()
    x = torch.randn(3, 1, 12, 12)
    path = tmp_path / "mh.onnx"
    torch.onnx.export(wrapper, (x[:1],), str(path), input_names=["input"], output_names=["probs", "head_probs"],
                      dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}, "head_probs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean, per_head = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want_mean, want_heads = wrapper(x)
    assert np.abs(mean - want_mean.numpy()).max() < 1e-5
    assert np.abs(per_head - want_heads.numpy()).max() < 1e-5
    assert np.allclose(mean, mh(x).exp().detach().numpy(), atol=1e-5)


def test_heads_artifacts_onnx_and_tflite_match_pytorch(tmp_path) -> None:
    """export_heads writes ONNX and TFLite with mean and per-head probabilities, verified against PyTorch."""
    pytest.importorskip("litert_torch")
    import json

    from edgecompress.compression.export import export_heads

    torch.manual_seed(0)
    model = MultiHeadStudent(MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]), num_heads=3).eval()
    meta = {"data": {"input_shape": [1, 12, 12], "mean": [0.2], "std": [0.3], "class_names": list("abcd")}}
    x = torch.randn(20, 1, 12, 12).numpy()
    res = export_heads(model, meta, tmp_path, x, "models/pruned.pt", "h")
    with torch.no_grad():
        want = F.softmax(model.forward_heads(torch.from_numpy(x)), -1)
    for name in ("heads.onnx", "heads.tflite"):
        assert res[name]["samples"] == 20
        assert res[name]["max_abs_mean_prob_diff"] < 1e-5 and res[name]["max_abs_head_prob_diff"] < 1e-5
        assert res[name]["mutual_information"] == pytest.approx(res[name]["pytorch_mutual_information"], abs=1e-5)
        side = json.loads((tmp_path / f"{name}.json").read_text())
        assert set(side["outputs"]) == {"probs", "head_probs"} and side["parent"] == "models/pruned.pt"
    # Independently of export_heads' own check: the ONNX file's outputs are the heads' probabilities.
    import onnxruntime as ort

    mean, heads = ort.InferenceSession(str(tmp_path / "heads.onnx")).run(None, {"input": x})
    assert np.abs(mean - want.mean(0).numpy()).max() < 1e-5
    assert np.abs(heads - want.transpose(0, 1).numpy()).max() < 1e-5
    # The main artifacts' single output is log(mean probabilities): exp gives the same mean.
    assert np.abs(model(torch.from_numpy(x)).exp().detach().numpy() - mean).max() < 1e-5
