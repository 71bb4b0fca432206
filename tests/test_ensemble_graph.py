"""The ensemble exported as one graph predicts the PyTorch ensemble's mean distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_blobs
from edgecompress.compression.ensemble_graph import EnsembleGraph, export_ensemble_onnx
from edgecompress.compression.onnx import ort_session, run_onnx
from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import classification_metrics, softmax
from edgecompress.models import ResNetTeacher


def _members(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8).eval())
    return out


def test_exported_ensemble_is_the_mean_of_the_members_probabilities(tmp_path: Path) -> None:
    members = _members(3)
    x, y = make_blobs(40)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), -1) for m in members]).mean(0).double().numpy()
    path = tmp_path / "ensemble.onnx"
    export_ensemble_onnx(members, (1, 12, 12), path)
    logits = run_onnx(ort_session(path), x.numpy())[0]
    assert logits.shape == (40, 4)
    np.testing.assert_allclose(softmax(logits.astype(np.float64)), mean, rtol=1e-4, atol=1e-6)
    # Its metrics are the ensemble's (mean probability), not those of one member.
    ours, ref = classification_metrics(softmax(logits.astype(np.float64)), y.numpy()), classification_metrics(mean, y.numpy())
    assert ours["nll"] == pytest.approx(ref["nll"], rel=1e-4) and ours["accuracy"] == ref["accuracy"]
    with torch.no_grad():
        one = classification_metrics(torch.softmax(members[0](x), -1).double().numpy(), y.numpy())
    assert one["nll"] != pytest.approx(ours["nll"], rel=1e-3)


def test_an_ensemble_needs_two_members() -> None:
    with pytest.raises(EdgeCompressError, match="at least 2 members"):
        EnsembleGraph(_members(1))
