"""Deep ensembles of teachers and their distillation into one student (groundwork, not a pipeline stage).

* ``train_ensemble``    - N ResNet teachers that differ only in their seed (Lakshminarayanan et al. 2017).
* ``distill_ensemble``  - one MobileNet student learns the members' *mean* softened distribution
                          (kd_losses.ensemble_kd) plus (1 - alpha) cross-entropy, through train.fit.
* ``distill_multihead`` - Ferianc & Rodrigues (2022, arXiv 2205.09526): a MultiHeadStudent with one
                          linear head per member, trained with multihead.ferianc_loss (member i teaches
                          head i, a cosine regulariser with a ramped weight keeps the heads diverse), so
                          the heads' disagreement still measures epistemic uncertainty.

Reports carry accuracy, NLL, Brier, ECE, predictive entropy and, where several predictions are
averaged (ensemble, heads), mutual information and expected entropy (uncertainty.ensemble_metrics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import ensemble_metrics
from edgecompress.models import MultiHeadStudent, batched, count_macs, count_params
from edgecompress.training.loop import LossFn, Tensors, TrainConfig, fit, tensors
from edgecompress.training.losses import ensemble_kd, with_labels
from edgecompress.training.multihead import MultiHeadKDConfig, lambda_schedule
from edgecompress.training.soft_targets import SoftTargets, TargetLoss, fit_on_soft_targets
from edgecompress.training.teacher import TeacherConfig, train_teacher

# --------------------------------------------------------------------------- the ensemble


def train_ensemble(ds: Dataset, cfg: TeacherConfig, n: int) -> list[nn.Module]:
    """``n`` teachers trained with seeds ``cfg.train.seed + i`` (init and batch order both differ)."""
    if n < 1:
        raise EdgeCompressError(f"invalid value n={n!r}: an ensemble needs at least 1 member")
    members = []
    for i in range(n):
        member_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + i))
        model, _arch, _report = train_teacher(ds, member_cfg)
        members.append(model.eval())
    return members


class EnsembleTeacher(nn.Module):
    """Frozen members behind one ``forward`` that returns their stacked logits (M, N, C).

    train.fit only passes the teacher's output through to ``loss_fn``, so a loss that expects
    (M, N, C) (``ensemble_kd_loss``) can distil the whole ensemble through the ordinary loop.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise EdgeCompressError("EnsembleTeacher needs at least one member")
        self.members = nn.ModuleList(members)
        for p in self.members.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


@torch.no_grad()
def member_logits(members: Sequence[nn.Module], x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Every member's logits on ``x`` in eval mode, (M, N, C)."""
    if len(members) == 0:
        raise EdgeCompressError("member_logits needs at least one member")
    return torch.stack([batched(m.eval(), x, batch_size) for m in members])


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), -1).numpy()


def ensemble_report(members: Sequence[nn.Module], ds: Dataset, t: Tensors | None = None) -> dict[str, Any]:
    """The ensemble's test/val metrics (mean prediction, MI), each member's test metrics, summed size."""
    t = t if t is not None else tensors(ds)
    shape = tuple(ds.input_shape)
    test_probs = _probs(member_logits(members, t["test"][0]))
    y_test = t["test"][1].numpy()
    report: dict[str, Any] = {
        "test": ensemble_metrics(test_probs, y_test),
        "val": ensemble_metrics(_probs(member_logits(members, t["val"][0])), t["val"][1].numpy())
        if len(t["val"][0]) else None,
        "members": [ensemble_metrics(p[None], y_test) for p in test_probs],
        "member_params": [count_params(m) for m in members],
        "member_macs": [count_macs(m, shape) for m in members],
    }
    report["params"] = sum(report["member_params"])
    report["macs"] = sum(report["member_macs"])
    return report


# --------------------------------------------------------------------------- ensemble KD (one student)


def ensemble_kd_loss(temperature: float, alpha: float, label_smoothing: float = 0.0) -> LossFn:
    """alpha * T^2 * KL(mean_m softmax(e_m/T) || softmax(s/T)) + (1 - alpha) * CE(labels).

    The teacher argument is the stacked member logits (M, N, C) from ``EnsembleTeacher``.
    """

    def soft(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 3:
            raise EdgeCompressError(f"ensemble_kd_loss needs stacked member logits (M, N, C), got {tuple(t.shape)}")
        return ensemble_kd(s, t, temperature)

    return with_labels(soft, alpha, label_smoothing)


# --------------------------------------------------------------------------- multi-head student (Ferianc)


@torch.no_grad()
def head_probs(model: MultiHeadStudent, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per-head softmax probabilities (M, N, C) in eval mode."""
    model.eval()
    return _probs(batched(model.forward_heads, x, batch_size, dim=1))


def multihead_report(model: MultiHeadStudent, ds: Dataset, t: Tensors | None = None) -> dict[str, Any]:
    """Test/val metrics of the heads' mean prediction with MI from their disagreement, per-head
    test accuracy, and size (MACs of all heads: forward runs all)."""
    t = t if t is not None else tensors(ds)
    hp = head_probs(model, t["test"][0])
    y = t["test"][1].numpy()
    return {"test": ensemble_metrics(hp, y),
            "val": ensemble_metrics(head_probs(model, t["val"][0]), t["val"][1].numpy()) if len(t["val"][0]) else None,
            "head_accuracy": [float((p.argmax(1) == y).mean()) for p in hp],
            "params": count_params(model),
            "macs": count_macs(model, tuple(ds.input_shape))}


def multihead_loss(mh_cfg: MultiHeadKDConfig) -> TargetLoss:
    """``mh_cfg.loss`` on the per-head logits and the members' logits (M, B, C); its parts carry the
    ramped lambda (the history shows the epoch's mean)."""

    def loss(model: nn.Module, xb: torch.Tensor, e: torch.Tensor, yb: torch.Tensor,
             step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        value, parts = mh_cfg.loss(model.forward_heads(xb), e, yb, model, step, total)
        parts.pop("total", None)
        parts["lam"] = lambda_schedule(step, total, mh_cfg.lam_max, mh_cfg.warmup_fraction)
        return value, parts

    return loss


def fit_multihead(model: MultiHeadStudent, members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                  cfg: TrainConfig, mh_cfg: MultiHeadKDConfig, fill: torch.Tensor | None = None,
                  val: tuple[torch.Tensor, torch.Tensor] | None = None,
                  name: str = "multihead", targets: SoftTargets | None = None) -> list[dict[str, float]]:
    """train.fit with ``multihead_loss`` as its step loss (it needs the per-head logits and the global
    step for the lambda ramp); members see the same augmented batch as the student, or their stored
    ``targets`` are replayed when those fit ``cfg``'s augmentation."""
    if len(members) != model.num_heads:
        raise EdgeCompressError(f"{len(members)} members for {model.num_heads} heads: member i teaches head i")
    loss = multihead_loss(mh_cfg)
    if fill is None:
        fill = x.amin(dim=(0, 2, 3))
    if targets is not None and targets.fits(cfg):
        return fit_on_soft_targets(model, x, y, cfg, targets.select(members, x, name), targets, loss, fill,
                                   val=val, name=name)
    teacher = EnsembleTeacher(members).eval().to(memory_format=torch.channels_last)

    def step_loss(xb: torch.Tensor, yb: torch.Tensor, step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            e = teacher(xb)
        return loss(model, xb, e, yb, step, total)

    # teacher= too: fit moves it to the training device (the step loss ignores it otherwise).
    return fit(model, x, y, cfg, fill=fill, val=val, name=name, step_loss=step_loss, teacher=teacher)
