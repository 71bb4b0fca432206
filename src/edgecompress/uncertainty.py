"""Predictive uncertainty of ensembles, multi-head students and MC dropout, from probabilities.

Total uncertainty H(mean_m p_m) splits into an aleatoric part, the expected entropy
mean_m H(p_m), and an epistemic part, the mutual information between prediction and member,
H(mean) - mean_m H(p_m) (Depeweg et al. 2018; Malinin & Gales 2018). Accuracy, NLL, Brier, ECE
come from ``edgecompress.metrics.classification_metrics`` on the mean prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import classification_metrics, confidence_bins

_EPS = 1e-12


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis=-1)


def _as_members(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        return p[None]
    if p.ndim != 3:
        raise EdgeCompressError(f"probabilities must be (N, C) or (M, N, C); got shape {p.shape}")
    return p


def uncertainty_decomposition(member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample (N,) total, aleatoric (expected entropy) and epistemic (mutual information) parts."""
    p = _as_members(member_probs)
    total = entropy(p.mean(axis=0))
    expected = entropy(p).mean(axis=0)
    # MI >= 0 by Jensen; clip the tiny negatives that rounding can produce when members agree.
    return {"total": total, "expected_entropy": expected, "mutual_information": np.clip(total - expected, 0.0, None)}


def predictive_metrics(probs: np.ndarray) -> dict[str, float]:
    """Mean total uncertainty H(mean prediction); for (M, N, C) input also its decomposition.

    ``probs`` is one model's (N, C) or members'/heads'/MC samples' (M, N, C) probabilities.
    """
    p = np.asarray(probs, dtype=np.float64)
    parts = uncertainty_decomposition(p)
    out = {"predictive_entropy": float(parts["total"].mean())}
    if p.ndim == 3:
        out["expected_entropy"] = float(parts["expected_entropy"].mean())
        out["mutual_information"] = float(parts["mutual_information"].mean())
    return out


def ensemble_metrics(member_probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, float]:
    """classification_metrics of the mean prediction plus ``mutual_information`` and ``expected_entropy``.

    ``entropy`` (from classification_metrics) is the total uncertainty; it equals
    mutual_information + expected_entropy up to rounding.
    """
    p = _as_members(member_probs)
    labels = np.asarray(labels, dtype=np.int64)
    if p.shape[1] != len(labels):
        raise EdgeCompressError(f"member_probs has {p.shape[1]} samples but labels has {len(labels)}")
    out = classification_metrics(p.mean(axis=0), labels, bins)
    parts = uncertainty_decomposition(p)
    out["mutual_information"] = float(parts["mutual_information"].mean())
    out["expected_entropy"] = float(parts["expected_entropy"].mean())
    return out


def reliability_diagram(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict[str, Any]]:
    """Per confidence bin: lower, upper, count, confidence (mean), accuracy; JSON-able for ``dvc plots``.

    Bins are equal-width and (lower, upper], exactly as in metrics.expected_calibration_error, so the
    count-weighted |confidence - accuracy| over these rows is the reported ECE. Empty bins are kept
    (count 0, confidence and accuracy None -> JSON null) so every diagram has the same rows.
    """
    if bins < 1:
        raise EdgeCompressError(f"invalid value bins={bins!r}: must be >= 1")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 3:
        p = p.mean(axis=0)
    labels = np.asarray(labels, dtype=np.int64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    edges, idx = confidence_bins(conf, bins)
    rows = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                     "confidence": float(conf[mask].mean()) if n else None,
                     "accuracy": float(correct[mask].mean()) if n else None})
    return rows


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


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
    from edgecompress.multihead import MultiHeadStudent

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].contiguous(memory_format=torch.channels_last)
            if isinstance(model, MultiHeadStudent):
                outs.append(torch.softmax(model.forward_heads(xb).double(), -1))
            else:
                outs.append(torch.softmax(model(xb).double(), -1))
    dim = 1 if isinstance(model, MultiHeadStudent) else 0
    return torch.cat(outs, dim=dim).numpy()


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
        p = torch.cat([mc_dropout_probs(model, x[i:i + 1000], mc_samples).double() for i in range(0, len(x), 1000)], 1)
        add(f"{mc_model}-mc-dropout", p.numpy(), rows[mc_model]["params"], rows[mc_model]["macs"] * mc_samples)
    return rows, diagrams
