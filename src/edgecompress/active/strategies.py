"""Which unlabeled images to label next: one function per strategy, on numpy arrays only.

Every strategy takes what a model said about the pool (``Scored``) and a budget ``k`` and returns
``k`` distinct pool indices, most wanted first, with the score that ranked them:

* uncertainty: ``least_confidence``, ``margin``, ``entropy`` of the mean prediction; ``bald``, the
  mutual information between the prediction and the model (Houlsby et al. 2011; Gal, Islam &
  Ghahramani 2017) over MC-dropout samples, ensemble members or a multi-head student's heads;
* diversity: ``kcenter``, greedy k-center on embeddings, the labeled images as the first centres
  (core-set, Sener & Savarese 2018);
* hybrid: ``badge``, k-means++ seeding on gradient embeddings (Ash et al. 2020), and
  ``weighted_kcenter``, k-center whose distances are scaled by each image's entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import entropy, uncertainty_decomposition


@dataclass(frozen=True)
class Scored:
    """A model's view of the pool: mean probabilities (N, C), optional samples (S, N, C) from MC dropout,
    members or heads, optional embeddings (N, D) and the embeddings of the images already labeled."""

    probs: np.ndarray
    samples: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or not len(self.probs):
            raise EdgeCompressError(f"the pool's probabilities must be (N, C) with N >= 1, got {self.probs.shape}")
        if self.samples is not None and (self.samples.ndim != 3 or self.samples.shape[1:] != self.probs.shape):
            raise EdgeCompressError(f"samples must be (S, N, C) = (S, *{self.probs.shape}), got {self.samples.shape}")
        if self.embeddings is not None and len(self.embeddings) != len(self.probs):
            raise EdgeCompressError(f"{len(self.embeddings)} embeddings for {len(self.probs)} pool images")


Picked = tuple[np.ndarray, np.ndarray]  # (indices, their scores), most wanted first


def top_k(score: np.ndarray, k: int) -> Picked:
    # Stable order on ties (lowest index first), so a selection is reproducible.
    order = np.argsort(-score, kind="stable")[:k]
    return order, score[order]


def least_confidence(s: Scored, k: int, seed: int = 0) -> Picked:
    return top_k(1.0 - s.probs.max(1), k)


def margin(s: Scored, k: int, seed: int = 0) -> Picked:
    top2 = np.sort(s.probs, 1)[:, -2:]
    return top_k(-(top2[:, 1] - top2[:, 0]), k)  # the smaller the margin, the more wanted


def entropy_(s: Scored, k: int, seed: int = 0) -> Picked:
    return top_k(entropy(s.probs), k)


def bald(s: Scored, k: int, seed: int = 0) -> Picked:
    if s.samples is None or len(s.samples) < 2:
        raise EdgeCompressError("strategy bald needs several predictions per image: MC dropout (a model with "
                                "dropout and mc_samples >= 2), ensemble members or a multi-head student")
    return top_k(uncertainty_decomposition(s.samples)["mutual_information"], k)


def _embeddings(s: Scored, what: str) -> np.ndarray:
    if s.embeddings is None:
        raise EdgeCompressError(f"strategy {what} needs the model's embeddings of the pool")
    return np.asarray(s.embeddings, np.float64).reshape(len(s.embeddings), -1)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from every row of ``a`` to its nearest row of ``b`` (len(a),), in blocks."""
    out = np.empty(len(a))
    bb = (b ** 2).sum(1)
    for i in range(0, len(a), 2048):
        blk = a[i:i + 2048]
        out[i:i + 2048] = np.maximum((blk ** 2).sum(1)[:, None] - 2 * blk @ b.T + bb[None], 0.0).min(1)
    return out


def _greedy_kcenter(emb: np.ndarray, k: int, centres: np.ndarray | None, weight: np.ndarray | None,
                    seed: int) -> Picked:
    n = len(emb)
    if centres is not None and len(centres):
        dist = _sq_dist(emb, np.asarray(centres, np.float64).reshape(len(centres), -1))
    else:  # no labeled images yet: start from a seeded random point
        first = int(np.random.default_rng(seed).integers(n))
        dist = _sq_dist(emb, emb[first:first + 1])
        dist[first] = np.inf  # picked first, below
    picked: list[int] = []
    scores: list[float] = []
    w = np.ones(n) if weight is None else np.asarray(weight, np.float64)
    taken = np.zeros(n, bool)
    while len(picked) < min(k, n):
        gain = np.where(taken, -1.0, dist * w)
        i = int(gain.argmax())
        picked.append(i)
        scores.append(float(gain[i]) if np.isfinite(gain[i]) else float("inf"))
        taken[i] = True
        dist = np.minimum(dist, _sq_dist(emb, emb[i:i + 1]))
    return np.array(picked, np.int64), np.array(scores)


def kcenter(s: Scored, k: int, seed: int = 0) -> Picked:
    return _greedy_kcenter(_embeddings(s, "kcenter"), k, s.labeled, None, seed)


def weighted_kcenter(s: Scored, k: int, seed: int = 0) -> Picked:
    return _greedy_kcenter(_embeddings(s, "weighted_kcenter"), k, s.labeled, entropy(s.probs), seed)


def gradient_embeddings(probs: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """BADGE's embedding: the last layer's loss gradient for the predicted label, (p - onehot(argmax)) x emb.

    Its norm grows with uncertainty, its direction says which classes and features are involved.
    """
    g = probs.copy()
    g[np.arange(len(g)), probs.argmax(1)] -= 1.0
    return (g[:, :, None] * emb[:, None, :]).reshape(len(g), -1)


def badge(s: Scored, k: int, seed: int = 0) -> Picked:
    """k-means++ seeding on gradient embeddings: diverse among the uncertain (Ash et al. 2020)."""
    g = gradient_embeddings(np.asarray(s.probs, np.float64), _embeddings(s, "badge"))
    rng = np.random.default_rng(seed)
    n = len(g)
    first = int(np.argmax((g ** 2).sum(1)))  # the largest gradient starts, as in the paper's code
    picked, scores = [first], [float((g[first] ** 2).sum())]
    dist = _sq_dist(g, g[first:first + 1])
    taken = np.zeros(n, bool)
    taken[first] = True
    while len(picked) < min(k, n):
        p = np.where(taken, 0.0, dist)
        total = p.sum()
        i = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.choice(np.flatnonzero(~taken)))
        picked.append(i)
        scores.append(float(dist[i]))
        taken[i] = True
        dist = np.minimum(dist, _sq_dist(g, g[i:i + 1]))
    return np.array(picked, np.int64), np.array(scores)


def random_(s: Scored, k: int, seed: int = 0) -> Picked:
    order = np.random.default_rng(seed).permutation(len(s.probs))[:k]
    return order, np.zeros(len(order))


STRATEGIES: dict[str, Callable[[Scored, int, int], Picked]] = {
    "random": random_, "least_confidence": least_confidence, "margin": margin, "entropy": entropy_,
    "bald": bald, "kcenter": kcenter, "weighted_kcenter": weighted_kcenter, "badge": badge}
NEEDS_SAMPLES = ("bald",)
NEEDS_EMBEDDINGS = ("kcenter", "weighted_kcenter", "badge")


def choose(strategy: str, s: Scored, k: int, seed: int = 0) -> Picked:
    """``k`` distinct pool indices by ``strategy``; a clear error for an unknown one or a budget too large."""
    if strategy not in STRATEGIES:
        raise EdgeCompressError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EdgeCompressError(f"budget {k!r} must be an integer >= 1")
    if k > len(s.probs):
        raise EdgeCompressError(f"budget {k} is larger than the pool ({len(s.probs)} images); lower the budget "
                                f"or add images to the pool")
    idx, score = STRATEGIES[strategy](s, k, seed)
    if len(np.unique(idx)) != len(idx):  # a strategy bug, never the user's
        raise AssertionError(f"strategy {strategy} picked an image twice")
    return idx, score


def class_histogram(predicted: np.ndarray, num_classes: int) -> list[int]:
    """How many of the chosen images the model puts in each class (a collapsed selection shows here)."""
    return np.bincount(np.asarray(predicted, np.int64), minlength=num_classes).tolist()
