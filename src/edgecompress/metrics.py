"""Classification quality from probabilities: accuracy, calibration (NLL, ECE, Brier), reliability
diagrams, and the uncertainty of several predictions (ensemble members, heads, MC samples).

Total uncertainty H(mean_m p_m) splits into an aleatoric part, the expected entropy
mean_m H(p_m), and an epistemic part, the mutual information between prediction and member,
H(mean) - mean_m H(p_m) (Depeweg et al. 2018; Malinin & Gales 2018).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecompress.errors import EdgeCompressError


def confidence_bins(conf: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges, bin index per sample) for equal-width confidence bins (lo, hi]; shared by ECE and diagrams."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Confidence 0 cannot occur for a softmax, so the first bin's open lower edge is safe.
    return edges, np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017): sum_b |B|/N * |acc(B) - conf(B)|."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    _, idx = confidence_bins(conf, bins)
    ece = 0.0
    n = len(labels)
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.sum() / n * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, Brier score, ECE and mean predictive entropy of predicted probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    eps = 1e-12
    p_true = probs[np.arange(len(labels)), labels]
    onehot = np.eye(probs.shape[1])[labels]
    return {
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "nll": float(-np.log(np.clip(p_true, eps, 1.0)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "ece": expected_calibration_error(probs, labels, bins),
        "entropy": float(-(probs * np.log(np.clip(probs, eps, 1.0))).sum(axis=1).mean()),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
