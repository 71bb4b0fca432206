"""Ensemble uncertainty metrics, reliability diagram and MC dropout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgecompress.metrics import classification_metrics
from edgecompress.models import MobileNetStudent
from edgecompress.uncertainty import (ensemble_metrics, mc_dropout_probs, predictive_metrics,
                                      reliability_diagram)

LABELS = np.array([0, 1, 2])


def test_mutual_information_zero_when_members_agree() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    m = ensemble_metrics(np.stack([p, p, p]), LABELS)
    assert m["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert m["expected_entropy"] == pytest.approx(m["entropy"], rel=1e-12)
    base = classification_metrics(p, LABELS)
    assert all(m[k] == pytest.approx(base[k]) for k in base)


def test_mutual_information_positive_when_members_disagree_confidently() -> None:
    a = np.array([[0.98, 0.01, 0.01]] * 3)
    b = np.array([[0.01, 0.98, 0.01]] * 3)
    m = ensemble_metrics(np.stack([a, b]), LABELS)
    mean = (a + b) / 2
    h = lambda p: -(p * np.log(p)).sum(1).mean()  # noqa: E731
    assert m["mutual_information"] == pytest.approx(h(mean) - h(a), rel=1e-9)
    assert m["mutual_information"] > 0.5  # close to log 2: almost all uncertainty is epistemic
    assert m["mutual_information"] + m["expected_entropy"] == pytest.approx(m["entropy"], rel=1e-9)
    pm = predictive_metrics(np.stack([a, b]))
    assert pm["predictive_entropy"] == pytest.approx(m["entropy"]) and "mutual_information" in pm
    assert set(predictive_metrics(a)) == {"predictive_entropy"}


def test_reliability_diagram_counts_and_perfect_calibration() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, size=50)
    rows = reliability_diagram(probs, labels, bins=15)
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 50
    json.dumps(rows)  # JSON-able
    ece = sum(r["count"] / 50 * abs(r["confidence"] - r["accuracy"]) for r in rows if r["count"])
    assert ece == pytest.approx(classification_metrics(probs, labels)["ece"], rel=1e-9)
    # Perfectly calibrated: 4 samples at confidence 0.75 with 3 right, 2 at confidence 1.0 both right.
    p = np.array([[0.75, 0.25]] * 4 + [[1.0, 0.0]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    filled = [r for r in reliability_diagram(p, y, bins=10) if r["count"]]
    assert [r["count"] for r in filled] == [4, 2]
    assert all(abs(r["confidence"] - r["accuracy"]) == 0 for r in filled)


def test_mc_dropout_varies_with_dropout_and_restores_modes() -> None:
    x = torch.randn(4, 1, 12, 12)
    torch.manual_seed(0)
    model = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2], dropout=0.5).eval()
    samples = mc_dropout_probs(model, x, samples=5)
    assert samples.shape == (5, 4, 4)
    assert torch.allclose(samples.sum(-1), torch.ones(5, 4), atol=1e-5)
    assert not torch.allclose(samples[0], samples[1])
    assert not any(m.training for m in model.modules())
    bn = model.stem[1]
    stats = bn.running_mean.clone()
    mc_dropout_probs(model, x, samples=2)
    assert torch.equal(bn.running_mean, stats)  # BN stayed in eval: statistics untouched

    torch.manual_seed(0)
    plain = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2], dropout=0.0).train()
    same = mc_dropout_probs(plain, x, samples=3)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    assert all(m.training for m in plain.modules())  # train mode restored too
