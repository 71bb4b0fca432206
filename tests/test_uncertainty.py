"""Ensemble uncertainty metrics, reliability diagram and MC dropout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import classification_metrics, ensemble_metrics, predictive_metrics, reliability_diagram
from edgecompress.models import MobileNetStudent
from edgecompress.uncertainty import mc_dropout_probs

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


def test_calibration_metrics_match_torchmetrics() -> None:
    """Our ECE (15 bins) and NLL agree with torchmetrics' on random, deliberately miscalibrated predictions."""
    tm = pytest.importorskip("torchmetrics.classification")
    from edgecompress.metrics import classification_metrics

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=4000)
    labels = np.where(rng.random(4000) < 0.6, probs.argmax(1), rng.integers(0, 10, 4000))
    ours = classification_metrics(probs, labels)
    p, y = torch.from_numpy(probs).float(), torch.from_numpy(labels)
    ece = tm.MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(p, y).item()
    assert ours["ece"] == pytest.approx(ece, abs=1e-5) and ours["ece"] > 0.05
    assert ours["nll"] == pytest.approx(torch.nn.functional.nll_loss(p.double().log(), y).item(), rel=1e-6)
    assert ours["accuracy"] == pytest.approx(tm.MulticlassAccuracy(num_classes=10, average="micro")(p, y).item())


def test_evaluate_models_reports_members_ensemble_and_mc_dropout() -> None:
    from edgecompress.models import MobileNetStudent
    from edgecompress.models import MultiHeadStudent
    from edgecompress.uncertainty import evaluate_models

    torch.manual_seed(0)
    nets = {f"m{i}": MobileNetStudent(1, 3, [4, 8], [2], dropout=0.5).eval() for i in range(3)}
    nets["mh"] = MultiHeadStudent(MobileNetStudent(1, 3, [4, 8], [2]), num_heads=2).eval()
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,))
    rows, diagrams = evaluate_models(nets, x, y, (1, 8, 8), ensemble=["m0", "m1", "m2"], mc_model="m0", mc_samples=4)
    assert set(rows) == {"m0", "m1", "m2", "mh", "ensemble", "m0-mc-dropout"}
    assert "mutual_information" not in rows["m0"]  # one prediction: no epistemic part to measure
    for name in ("ensemble", "mh", "m0-mc-dropout"):
        assert rows[name]["mutual_information"] > 0
    assert rows["ensemble"]["params"] == 3 * rows["m0"]["params"]
    assert rows["m0-mc-dropout"]["macs"] == 4 * rows["m0"]["macs"]
    assert sum(r["count"] for r in diagrams["ensemble"]) == 40
    with pytest.raises(EdgeCompressError, match="not among"):
        evaluate_models(nets, x, y, (1, 8, 8), ensemble=["m0", "m9"])
