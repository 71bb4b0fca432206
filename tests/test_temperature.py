"""Temperature scaling: the fit recovers a known scale, folding it equals dividing the logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.compression.temperature import can_fold, fit_temperature, fold_temperature
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher


def _logits(n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5))
    logits[np.arange(n), y] += 2.5
    return logits, y


def test_fit_scales_with_the_logits_and_lowers_the_nll() -> None:
    logits, y = _logits()
    t = fit_temperature(logits, y)
    # Over-confident logits (x3) need three times the temperature to get the same probabilities back.
    assert fit_temperature(3 * logits, y) == pytest.approx(3 * t, rel=1e-3)

    def nll(tt: float) -> float:
        z = logits / tt
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())

    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1), nll(1.0))


def test_fold_divides_the_logits_and_keeps_the_predictions() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    for model in (MobileNetStudent(1, 4, [8, 16], [2]).eval(), ResNetTeacher(1, 4, widths=[8], blocks=[1], stem=8).eval()):
        assert can_fold(model)
        folded = fold_temperature(model, 2.5)
        with torch.no_grad():
            assert torch.allclose(folded(x), model(x) / 2.5, atol=1e-5)
            assert torch.equal(folded(x).argmax(1), model(x).argmax(1))
        assert folded is not model and model.fc.weight.abs().sum() > folded.fc.weight.abs().sum()


def test_errors() -> None:
    with pytest.raises(EdgeCompressError, match="no final linear layer"):
        fold_temperature(torch.nn.Conv2d(1, 1, 1), 2.0)
    with pytest.raises(EdgeCompressError, match="temperature must be > 0"):
        fold_temperature(MobileNetStudent(1, 4, [8, 16], [2]), 0.0)
    with pytest.raises(EdgeCompressError, match="at least one held-out image"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
