"""Classification quality: accuracy and calibration (NLL, ECE, Brier), from probabilities."""

from __future__ import annotations

import numpy as np


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
