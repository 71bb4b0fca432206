"""Temperature scaling (Guo et al. 2017) folded into the classifier: calibrated probabilities, same argmax, no cost.

The temperature is fitted on held-out logits by minimizing the NLL; dividing the final linear layer's
weights and bias by it makes the exported graph output the scaled logits with no extra operator, so
every runtime and quantizer sees an ordinary classifier.
"""

from __future__ import annotations

import copy
import math

import numpy as np
from torch import nn

from edgecompress.errors import EdgeCompressError

_LOG_T = (math.log(0.05), math.log(20.0))  # search range; a fitted T at either end means a broken model


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iters: int = 60) -> float:
    """The T > 0 minimizing the NLL of softmax(logits / T): golden-section search on log T (unimodal there)."""
    if len(labels) == 0:
        raise EdgeCompressError("temperature scaling needs at least one held-out image")
    logits = np.asarray(logits, np.float64)
    a, b = _LOG_T
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def can_fold(model: nn.Module) -> bool:
    """Whether the model ends in one linear classifier (``.fc``) whose output is its logits."""
    return isinstance(getattr(model, "fc", None), nn.Linear)


def fold_temperature(model: nn.Module, t: float) -> nn.Module:
    """A copy of ``model`` whose logits are divided by ``t`` (the classifier's weight and bias scaled)."""
    if not can_fold(model):
        raise EdgeCompressError(f"{type(model).__name__} has no final linear layer .fc to fold a temperature into")
    if not t > 0:
        raise EdgeCompressError(f"temperature must be > 0, got {t}")
    out = copy.deepcopy(model)
    fc = out.fc
    fc.weight.data.div_(t)  # type: ignore[operator]
    if fc.bias is not None:  # type: ignore[union-attr]
        fc.bias.data.div_(t)  # type: ignore[union-attr]
    return out
