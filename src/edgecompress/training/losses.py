"""Knowledge-distillation losses that can be combined with weights.

Kinds (each a function here, combined by ``CombinedKDLoss`` from a ``KDLossConfig``):

* ``response``     - Hinton, Vinyals & Dean (2015): T^2 * KL(p_teacher,T || p_student,T).
* ``hint``         - FitNets (Romero et al. 2015): MSE between a learned 1x1 projection of the
                     student's feature map and the teacher's feature map.
* ``rkd_distance`` - Relational KD (Park et al. 2019), distance-wise: pairwise distances of the
                     pooled embeddings, each normalised by its mean, compared with smooth L1.
* ``rkd_angle``    - Relational KD, angle-wise: cosines of the angles formed by triplets.
* ``attention``    - Attention transfer (Zagoruyko & Komodakis 2017): L2-normalised spatial
                     attention maps mean_c |A_c|^p.

Ensemble distillation (``ensemble_kd``) distils the mean of several teachers' softened
probabilities. Teacher tensors are detached everywhere: the teacher is a fixed target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.config import from_dict
from edgecompress.errors import EdgeCompressError
from edgecompress.models import feature_map
from edgecompress.training.loop import LossFn

KINDS = ("response", "hint", "rkd_distance", "rkd_angle", "attention")
FEATURE_KINDS = ("hint", "rkd_distance", "rkd_angle", "attention")


# --------------------------------------------------------------------------- response (Hinton)


def hinton_kd(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    The T^2 factor keeps soft-target gradients on the scale of the hard-label term as T changes.
    """
    t = temperature
    return F.kl_div(F.log_softmax(s_logits / t, 1), F.log_softmax(t_logits.detach() / t, 1),
                    reduction="batchmean", log_target=True) * t ** 2


def ensemble_mean_probs(member_logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Mean over ensemble members of softmax(z_i / T): the ensemble's (softened) prediction, (N, C)."""
    if len(member_logits) == 0:
        raise EdgeCompressError("ensemble_mean_probs needs at least one member's logits; got none")
    return torch.stack([F.softmax(z.detach() / temperature, 1) for z in member_logits]).mean(0)


def ensemble_kd(s_logits: torch.Tensor, member_logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Ensemble distillation: T^2 * KL(mean_i softmax(z_i/T) || softmax(s/T)), batch mean.

    The mean is over probabilities, not logits: averaging logits would distil a different (sharper)
    distribution than the one the ensemble actually predicts.
    """
    p = ensemble_mean_probs(member_logits, temperature)
    # kl_div with a probability target uses xlogy, so members that put exactly 0 mass are safe.
    return F.kl_div(F.log_softmax(s_logits / temperature, 1), p, reduction="batchmean") * temperature ** 2


# --------------------------------------------------------------------------- feature helpers


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two NC?HW maps to the smaller's spatial size.

    Pooling (rather than upsampling) never invents detail the smaller map does not have.
    """
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    if a.shape[-2:] != (h, w):
        a = F.adaptive_avg_pool2d(a, (h, w))
    if b.shape[-2:] != (h, w):
        b = F.adaptive_avg_pool2d(b, (h, w))
    return a, b


def pooled_embedding(feat: torch.Tensor) -> torch.Tensor:
    """Global average pool of an (N, C, H, W) map to an (N, C) embedding (what RKD relates)."""
    return feat.mean(dim=(-2, -1)) if feat.dim() == 4 else feat.flatten(1)


# --------------------------------------------------------------------------- hint (FitNets)


class HintAdapter(nn.Module):
    """FitNets regressor (Romero et al. 2015): 1x1 conv (+BN) from student to teacher channels.

    The adapter is trained with the student: pass its parameters to the optimizer. It is not part
    of the deployed student and is dropped after distillation.
    """

    def __init__(self, student_channels: int, teacher_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        # With BN the conv bias is redundant (BN's shift replaces it).
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=not batch_norm)
        self.bn: nn.Module = nn.BatchNorm2d(teacher_channels) if batch_norm else nn.Identity()

    def forward(self, s_feat: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(s_feat))


def hint_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    """FitNets hint loss: MSE(adapter(student map), teacher map), larger map pooled to the smaller.

    The projection runs at the student's resolution, then the larger map is pooled: a 1x1 conv (and
    BN in eval mode) commutes with average pooling, so this equals pooling first.
    """
    a, t = match_spatial(adapter(s_feat), t_feat.detach())
    return F.mse_loss(a, t)


# --------------------------------------------------------------------------- relational KD (Park et al.)


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    # Via the Gram matrix with a clamp: torch.cdist/norm have a NaN gradient at the zero diagonal.
    sq = (e * e).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    n = len(e)
    if n < 2:
        raise EdgeCompressError(f"RKD needs a batch of at least 2 embeddings; got {n}")
    d = _pairwise_distances(e)
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    # Dividing by the mean distance makes the loss invariant to the embeddings' overall scale,
    # which is what lets a narrow student mimic a wide teacher's *relations*.
    return d[off] / d[off].mean().clamp(min=1e-12)


def rkd_distance(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Distance-wise RKD (Park et al. 2019): smooth L1 between mean-normalised pairwise distances.

    Averaged over the N(N-1) ordered pairs i != j (the paper's set chi^2); the reference code also
    averages the zero diagonal in, which only rescales the loss by (N-1)/N. Student and teacher
    dimensions may differ: only distances are compared.
    """
    s, t = pooled_embedding(s_emb), pooled_embedding(t_emb).detach()
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))


def _triplet_cosines(e: torch.Tensor) -> torch.Tensor:
    n = len(e)
    if n < 3:
        raise EdgeCompressError(f"rkd_angle needs a batch of at least 3 embeddings; got {n}")
    # diff[j, i] = e_i - e_j: vectors from vertex j; cos[j, i, k] = cosine of angle i-j-k.
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    cos = diff @ diff.transpose(1, 2)
    idx = torch.arange(n, device=e.device)
    # Keep triplets of distinct points only (the paper's chi^3); degenerate ones carry no angle.
    distinct = (idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :]) \
        & (idx[None, :, None] != idx[None, None, :])
    return cos[distinct]


def rkd_angle(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Angle-wise RKD (Park et al. 2019): smooth L1 between cosines of triplet angles (mean).

    Angles are scale-free and dimension-free. Memory is O(N^2 D), fine for usual batch sizes.
    """
    s, t = pooled_embedding(s_emb), pooled_embedding(t_emb).detach()
    return F.smooth_l1_loss(_triplet_cosines(s), _triplet_cosines(t))


# --------------------------------------------------------------------------- attention transfer


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention mean_c |A_c|^p, shape (N, H, W) (not yet normalised)."""
    return feat.abs().pow(p).mean(1)


def attention_transfer(s_feat: torch.Tensor, t_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017): mean_n || Q_s/|Q_s| - Q_t/|Q_t| ||_2.

    The attention maps (not the raw activations, whose signs would cancel) are pooled to a common
    spatial size, flattened and L2-normalised. The paper adds (beta/2) * sum over layers of this
    norm; here one layer's norm is averaged over the batch, so the config weight plays beta/2.
    (The authors' code uses the squared difference's mean instead; we follow the paper's formula.)
    """
    qs, qt = match_spatial(attention_map(s_feat, p).unsqueeze(1), attention_map(t_feat.detach(), p).unsqueeze(1))
    qs, qt = F.normalize(qs.flatten(1), dim=1), F.normalize(qt.flatten(1), dim=1)
    return (qs - qt).norm(p=2, dim=1).mean()


# --------------------------------------------------------------------------- config + combination


@dataclass(frozen=True)
class KDLossConfig:
    """Which distillation terms to use and their weights.

    total = (1 - alpha) * CE(student, labels) + sum_k weight_k * loss_k. For Hinton's recipe use
    ``losses=(("response", alpha),)``; feature terms have their own scales (RKD: ~25-50 for
    distance, ~50 for angle in Park et al.; attention ~ beta/2 = 500 in Zagoruyko & Komodakis).
    """

    losses: tuple[tuple[str, float], ...] = (("response", 0.9),)
    temperature: float = 4.0
    alpha: float = 0.9
    attention_p: float = 2.0
    hint_batch_norm: bool = True

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for item in self.losses:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise EdgeCompressError(f"invalid value losses entry {item!r}: expected (kind, weight)")
            kind, weight = item
            if kind not in KINDS:
                raise EdgeCompressError(f"invalid value losses kind={kind!r}: allowed {list(KINDS)}")
            if kind in seen:
                raise EdgeCompressError(f"invalid value losses kind={kind!r}: listed twice")
            seen.add(kind)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise EdgeCompressError(f"invalid value weight={weight!r} for {kind!r}: must be a finite number >= 0")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not self.temperature > 0:
            raise EdgeCompressError(f"invalid value temperature={self.temperature!r}: must be > 0")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise EdgeCompressError(f"invalid value alpha={self.alpha!r}: must be within [0, 1]")
        if not self.attention_p > 0:
            raise EdgeCompressError(f"invalid value attention_p={self.attention_p!r}: must be > 0")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.losses)

    @property
    def needs_features(self) -> bool:
        """Whether the training loop must supply feature maps (see ``forward_with_features``)."""
        return any(k in FEATURE_KINDS for k in self.kinds)


def kd_loss_config(d: dict[str, Any] | None, where: str) -> KDLossConfig:
    """Build from a params section; ``losses`` may be a {kind: weight} mapping or [kind, weight] pairs."""
    d = dict(d or {})
    if "losses" in d:
        raw = d["losses"]
        if isinstance(raw, dict):
            pairs = list(raw.items())
        elif isinstance(raw, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
            pairs = [tuple(p) for p in raw]
        else:
            raise EdgeCompressError(f"{where}: invalid value losses={raw!r}: expected a mapping kind -> weight "
                                    f"with kinds from {list(KINDS)}")
        d["losses"] = tuple((str(k), float(w) if isinstance(w, int) and not isinstance(w, bool) else w)
                            for k, w in pairs)
    return from_dict(KDLossConfig, d, where)


def _probe_features(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    # Eval mode so the probe does not touch BN running statistics; restore the caller's mode.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return feature_map(model, example)
    finally:
        model.train(was_training)


class CombinedKDLoss(nn.Module):
    """Weighted sum of the configured distillation terms plus (1 - alpha) * cross-entropy.

    Built from the config and the (student, teacher, example input) it will train on; with a
    ``hint`` term it probes both models' feature shapes and creates a ``HintAdapter``. The adapter
    is trainable: give ``loss.parameters()`` to the optimizer together with the student's, e.g.
    ``SGD(list(student.parameters()) + list(loss.parameters()), ...)``, and call ``loss.train()``.
    """

    def __init__(self, cfg: KDLossConfig, student: nn.Module, teacher: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = dict(cfg.losses)
        self.adapter: HintAdapter | None = None
        if "hint" in self.weights:
            s_feat, t_feat = _probe_features(student, example), _probe_features(teacher, example)
            self.adapter = HintAdapter(s_feat.shape[1], t_feat.shape[1], cfg.hint_batch_norm)

    def forward(self, s_logits: torch.Tensor, s_feat: torch.Tensor | None, t_logits: torch.Tensor | None,
                t_feat: torch.Tensor | None, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, unweighted value of every term as floats, plus ``total``) for logging."""
        ce = F.cross_entropy(s_logits, labels)
        total = (1 - self.cfg.alpha) * ce
        parts = {"ce": float(ce.detach())}
        for kind, weight in self.weights.items():
            if kind == "response":
                if t_logits is None:
                    raise EdgeCompressError("KD term 'response' needs teacher logits; got None")
                value = hinton_kd(s_logits, t_logits, self.cfg.temperature)
            else:
                if s_feat is None or t_feat is None:
                    raise EdgeCompressError(f"KD term {kind!r} needs student and teacher feature maps; got None")
                if kind == "hint":
                    assert self.adapter is not None
                    value = hint_loss(s_feat, t_feat, self.adapter)
                elif kind == "rkd_distance":
                    value = rkd_distance(s_feat, t_feat)
                elif kind == "rkd_angle":
                    value = rkd_angle(s_feat, t_feat)
                else:
                    value = attention_transfer(s_feat, t_feat, self.cfg.attention_p)
            total = total + weight * value
            parts[kind] = float(value.detach())
        parts["total"] = float(total.detach())
        return total, parts


def with_labels(soft: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], alpha: float,
                label_smoothing: float = 0.0) -> LossFn:
    """alpha * soft(student, teacher) + (1 - alpha) * CE(labels): the recipe every KD scheme shares.

    Without a teacher output (or with alpha 0) it is the cross-entropy alone.
    """

    def loss(s: torch.Tensor, t: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
        if t is None or alpha == 0:
            return ce
        return alpha * soft(s, t) + (1 - alpha) * ce

    return loss


def kd_loss(temperature: float, alpha: float, label_smoothing: float = 0.0) -> LossFn:
    """Hinton et al. (2015) distillation: alpha*T^2*KL(p_T || q_T) + (1-alpha)*CE(labels)."""
    return with_labels(lambda s, t: hinton_kd(s, t, temperature), alpha, label_smoothing)
