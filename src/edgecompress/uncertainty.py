"""Accuracy, calibration and uncertainty of every PyTorch model in the chain (the uncertainty stage).

Members, the ensemble's mean prediction, multi-head students (their heads' disagreement) and MC
dropout; the formulas live in ``edgecompress.metrics``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import ensemble_metrics, reliability_diagram
from edgecompress.models import MultiHeadStudent, batched


# A bin with fewer images than this, or than this share of the test set, is left out of the plots:
# its accuracy is a few coin flips (one image draws 0 or 1) and its weight in the ECE is as small.
MIN_BIN_COUNT = 10
MIN_BIN_SHARE = 0.01

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def has_dropout(model: nn.Module) -> bool:
    """Whether MC dropout can sample ``model``: some dropout layer with p > 0."""
    return any(isinstance(m, _DROPOUT) and m.p > 0 for m in model.modules())


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, x: torch.Tensor, samples: int, outputs: str = "logits") -> torch.Tensor:
    """MC dropout (Gal & Ghahramani 2016): ``samples`` stochastic passes, probabilities (S, N, C).

    Only dropout layers are switched to train mode; BatchNorm stays in eval so the running
    statistics are used and not updated. Every module's mode is restored afterwards.
    ``outputs`` says what the model returns: "logits" (softmaxed here) or "probs" (used as-is,
    e.g. MultiHeadStudent).
    """
    if samples < 1:
        raise EdgeCompressError(f"invalid value samples={samples!r}: must be >= 1")
    if outputs not in ("logits", "probs"):
        raise EdgeCompressError(f"invalid value outputs={outputs!r}: allowed ['logits', 'probs']")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, _DROPOUT):
                m.train()
        outs = [model(x) for _ in range(samples)]
    finally:
        for m, training in modes.items():
            m.training = training
    stacked = torch.stack(outs)
    return torch.softmax(stacked, dim=-1) if outputs == "logits" else stacked


def model_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Test-time probabilities: (N, C) for one network, (M, N, C) per head for a multi-head student."""
    model.eval()
    heads = isinstance(model, MultiHeadStudent)
    forward = model.forward_heads if heads else model
    return batched(lambda xb: torch.softmax(forward(xb).double(), -1), x, batch_size, dim=1 if heads else 0).numpy()


def evaluate_models(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, input_shape: tuple[int, ...],
                    ensemble: list[str] | None = None, mc_model: str | None = None,
                    mc_samples: int = 0) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Metrics (accuracy, NLL, Brier, ECE, entropy; MI where several predictions are averaged), size
    and a reliability diagram per model; plus "ensemble" (the mean of the ``ensemble`` models) and
    "<mc_model>-mc-dropout" (``mc_samples`` stochastic passes of that model) when asked."""
    from edgecompress.models import count_macs, count_params

    labels = y.numpy()
    rows: dict[str, dict[str, Any]] = {}
    diagrams: dict[str, list[dict[str, Any]]] = {}
    probs: dict[str, np.ndarray] = {}

    def add(name: str, p: np.ndarray, params: int, macs: int) -> None:
        m = ensemble_metrics(p, labels)
        if p.ndim == 2:  # one prediction: MI is zero by definition, not a measurement
            m.pop("mutual_information")
            m.pop("expected_entropy")
        rows[name] = {**m, "params": params, "macs": macs}
        diagrams[name] = [{"model": name, **r} for r in reliability_diagram(p, labels) if r["count"]]

    for name, model in models.items():
        probs[name] = model_probs(model, x)
        add(name, probs[name], count_params(model), count_macs(model, input_shape))
    if ensemble:
        missing = [n for n in ensemble if n not in probs]
        if missing:
            raise EdgeCompressError(f"ensemble members {missing} are not among the models {list(probs)}")
        add("ensemble", np.stack([probs[n] for n in ensemble]), sum(rows[n]["params"] for n in ensemble),
            sum(rows[n]["macs"] for n in ensemble))
    if mc_model and mc_samples:
        model = models[mc_model]
        p = batched(lambda xb: mc_dropout_probs(model, xb, mc_samples).double(), x, 1000, channels_last=False, dim=1)
        add(f"{mc_model}-mc-dropout", p.numpy(), rows[mc_model]["params"], rows[mc_model]["macs"] * mc_samples)
    return rows, diagrams


def min_bin_count(samples: int) -> int:
    """Fewest images a reliability bin needs to be plotted: max(MIN_BIN_COUNT, MIN_BIN_SHARE of ``samples``)."""
    return max(MIN_BIN_COUNT, math.ceil(MIN_BIN_SHARE * samples))


def plot_rows(diagrams: dict[str, list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Every reliability diagram in one list, for one ``dvc plots`` chart coloured by ``key``.

    Each row is labelled ``{key: name}`` (``key`` is "model" or "artifact", what the template colours
    by). Bins under ``min_bin_count`` of that diagram's images (the sum of its counts) are left out.
    """
    rows = []
    for name, diagram in diagrams.items():
        least = min_bin_count(sum(r["count"] for r in diagram))
        rows += [{key: name, **{k: v for k, v in r.items() if k not in ("model", "artifact")}}
                 for r in diagram if r["count"] >= least]
    return rows
