"""Uncertainty-aware ensemble distillation into a multi-headed student (Ferianc & Rodrigues 2022).

"Simple Regularisation for Uncertainty-Aware Knowledge Distillation" (arXiv 2205.09526): an
ensemble of M teachers is distilled into one shared backbone with M linear heads. Head m learns
from member m, the heads' mean learns from the ensemble mean, and a cosine regulariser keeps the
heads' weights from collapsing onto each other, so the heads' disagreement still measures
(epistemic) uncertainty at the cost of M small linear layers instead of M networks.
"""

from __future__ import annotations


from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from edgecompress.errors import EdgeCompressError
from edgecompress.models import MultiHeadStudent, log_mean_softmax


def head_parameter_vectors(model: MultiHeadStudent) -> list[torch.Tensor]:
    """theta_m for every head: its weight and bias flattened into one vector (keeps the graph)."""
    return [torch.cat([p.flatten() for p in h.parameters()]) for h in model.heads]


def diversity_regulariser(head_weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_m (1 + cos(theta_mean, theta_m)) / 2, in [0, M]; minimising it spreads the heads apart.

    The (1 + cos)/2 form maps the similarity to [0, 1] so the term is non-negative.
    """
    thetas = torch.stack([w.flatten() for w in head_weights])
    mean = thetas.mean(0, keepdim=True)
    return ((1 + F.cosine_similarity(mean.expand_as(thetas), thetas, dim=1)) / 2).sum()


def ferianc_loss(head_logits: torch.Tensor, member_logits: torch.Tensor, labels: torch.Tensor, a: float, b: float,
                 t_member: float, t_mean: float, lam: float,
                 head_weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Ferianc & Rodrigues (2022) loss for M heads distilled from M ensemble members.

    loss = (1 - a) * CE(mean_m softmax(z_m), y)                                    (hard labels)
         + a * [(1 - b) * T_mean^2 * KL(mean_m softmax(e_m/T_mean) || mean_m softmax(z_m/T_mean))
                + b * T_member^2 * mean_m KL(softmax(e_m/T_member) || softmax(z_m/T_member))]
         + lam * sum_m (1 + cos(theta_mean, theta_m)) / 2                           (head diversity)

    with z = ``head_logits`` (M, N, C), e = ``member_logits`` (M, N, C, detached) and theta_m the
    flattened weight+bias of head m (``head_parameter_vectors``). The CE of the mean prediction is
    the NLL of the log of the *mean probabilities* (what the deployed model outputs), not the mean of
    per-head CEs. KL terms are batch means scaled by T^2 as in Hinton et al. (2015).
    Returns (loss, parts as floats).
    """
    if head_logits.shape != member_logits.shape or head_logits.dim() != 3:
        raise EdgeCompressError(f"head_logits {tuple(head_logits.shape)} and member_logits "
                                f"{tuple(member_logits.shape)} must both be (M, N, C)")
    members = member_logits.detach()
    ce = F.nll_loss(log_mean_softmax(head_logits, 1.0), labels)
    total = (1 - a) * ce
    parts = {"ce": float(ce.detach())}
    if a > 0:
        # Mean-to-mean term: the student's averaged prediction matches the ensemble's.
        p_ens = F.softmax(members / t_mean, dim=-1).mean(0)
        kl_mean = F.kl_div(log_mean_softmax(head_logits, t_mean), p_ens, reduction="batchmean") * t_mean ** 2
        # Head-to-member term: head m imitates member m, which carries the ensemble's diversity.
        kl_heads = torch.stack([
            F.kl_div(F.log_softmax(z / t_member, -1), F.log_softmax(e / t_member, -1),
                     reduction="batchmean", log_target=True)
            for z, e in zip(head_logits, members)]).mean() * t_member ** 2
        total = total + a * ((1 - b) * kl_mean + b * kl_heads)
        parts.update(kl_mean=float(kl_mean.detach()), kl_heads=float(kl_heads.detach()))
    if lam > 0:
        reg = diversity_regulariser(head_weights)
        total = total + lam * reg
        parts["diversity"] = float(reg.detach())
    parts["total"] = float(total.detach())
    return total, parts


def lambda_schedule(step: int, total_steps: int, lam_max: float, warmup_fraction: float) -> float:
    """Linear ramp of the regulariser weight from 0 to ``lam_max`` over the first warmup_fraction of steps.

    Ramping up lets the heads first learn their members before being pushed apart.
    """
    if total_steps < 1:
        raise EdgeCompressError(f"invalid value total_steps={total_steps!r}: must be >= 1")
    if not 0.0 <= warmup_fraction <= 1.0:
        raise EdgeCompressError(f"invalid value warmup_fraction={warmup_fraction!r}: must be within [0, 1]")
    warmup = warmup_fraction * total_steps
    if warmup <= 0:
        return float(lam_max)
    return float(lam_max * min(1.0, max(0, step) / warmup))


@dataclass(frozen=True)
class MultiHeadKDConfig:
    """Settings of ``ferianc_loss``; defaults are the paper's CIFAR-10 a, b and temperatures.

    ``lam_max`` and ``warmup_fraction`` are starting points to tune, not values taken from the paper.
    """

    num_heads: int = 4
    a: float = 0.95
    b: float = 0.5
    t_member: float = 8.0
    t_mean: float = 1.0
    lam_max: float = 1.0
    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise EdgeCompressError(f"invalid value num_heads={self.num_heads!r}: must be >= 1")
        for name in ("a", "b", "warmup_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise EdgeCompressError(f"invalid value {name}={v!r}: must be within [0, 1]")
        for name in ("t_member", "t_mean"):
            v = getattr(self, name)
            if not v > 0:
                raise EdgeCompressError(f"invalid value {name}={v!r}: must be > 0")
        if not self.lam_max >= 0:
            raise EdgeCompressError(f"invalid value lam_max={self.lam_max!r}: must be >= 0")

    def loss(self, head_logits: torch.Tensor, member_logits: torch.Tensor, labels: torch.Tensor,
             model: MultiHeadStudent, step: int, total_steps: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``ferianc_loss`` with this config and the scheduled lambda at ``step``."""
        lam = lambda_schedule(step, total_steps, self.lam_max, self.warmup_fraction)
        return ferianc_loss(head_logits, member_logits, labels, self.a, self.b, self.t_member, self.t_mean,
                            lam, head_parameter_vectors(model))
