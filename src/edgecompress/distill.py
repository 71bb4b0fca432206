"""Teacher training and knowledge distillation into a depthwise-separable student."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, ResNetTeacher, count_macs, count_params, student_channels
from edgecompress.train import TrainConfig, evaluate, fit, from_dict, kd_loss


@dataclass(frozen=True)
class TeacherConfig:
    """ResNet-style teacher: stem width, per-stage widths and block counts, and training."""

    stem: int = 32
    widths: tuple[int, ...] = (48, 96, 192)
    blocks: tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise EdgeCompressError(f"widths {list(self.widths)} and blocks {list(self.blocks)} must be non-empty and of equal length")
        if min(self.widths) < 1 or min(self.blocks) < 1 or self.stem < 1:
            raise EdgeCompressError("stem, widths and blocks must be positive integers")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "params.yaml:train_teacher") -> "TeacherConfig":
        d = dict(d)
        train = TrainConfig.from_dict(d.pop("train", {}), f"{where}.train")
        for k in ("widths", "blocks"):
            if k in d:
                d[k] = tuple(d[k])
        return from_dict(cls, {**d, "train": train}, where)

    def arch(self, ds: Dataset) -> dict[str, Any]:
        return {"kind": "resnet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                "widths": list(self.widths), "blocks": list(self.blocks), "stem": self.stem, "dropout": self.dropout}


@dataclass(frozen=True)
class DistillConfig:
    """MobileNet-style student and Hinton KD settings."""

    channels: tuple[int, ...] = (16, 32, 32, 64, 64, 128, 128)  # stem, then each block's output
    strides: tuple[int, ...] = (2, 1, 2, 1, 2, 1)
    width: float = 1.0  # MobileNet width multiplier applied to ``channels``
    dropout: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term; 1 - alpha on the labels
    baseline: bool = True  # also train the same student from labels only, to measure KD's gain
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides) + 1:
            raise EdgeCompressError(f"channels needs len(strides)+1 = {len(self.strides) + 1} entries, got {len(self.channels)}")
        if self.width <= 0:
            raise EdgeCompressError(f"invalid value width={self.width}: must be > 0")
        if self.temperature <= 0:
            raise EdgeCompressError(f"invalid value temperature={self.temperature}: must be > 0")
        if not 0 <= self.alpha <= 1:
            raise EdgeCompressError(f"invalid value alpha={self.alpha}: must be within [0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "params.yaml:distill") -> "DistillConfig":
        d = dict(d)
        train = TrainConfig.from_dict(d.pop("train", {}), f"{where}.train")
        for k in ("channels", "strides"):
            if k in d:
                d[k] = tuple(d[k])
        return from_dict(cls, {**d, "train": train}, where)

    def arch(self, ds: Dataset) -> dict[str, Any]:
        return {"kind": "mobilenet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                "channels": student_channels(list(self.channels), self.width), "strides": list(self.strides),
                "dropout": self.dropout}


def tensors(ds: Dataset) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Normalized float tensors for each split."""
    return {name: (ds.to_tensor(s.x), torch.from_numpy(s.y)) for name, s in
            (("train", ds.train), ("val", ds.val), ("test", ds.test))}


def model_report(model: nn.Module, ds: Dataset, t: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Test/val metrics plus size of ``model``."""
    shape = tuple(ds.input_shape)
    return {"test": evaluate(model, *t["test"]), "val": evaluate(model, *t["val"]) if len(t["val"][0]) else None,
            "params": count_params(model), "macs": count_macs(model, shape)}


def _fill(ds: Dataset) -> torch.Tensor:
    # Padding value for random crops = a black pixel after normalization.
    return torch.tensor([(0.0 - m) / s for m, s in zip(ds.mean, ds.std)], dtype=torch.float32)


def train_teacher(ds: Dataset, cfg: TeacherConfig) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train the teacher from scratch; returns (model, arch, report)."""
    arch = cfg.arch(ds)
    torch.manual_seed(cfg.train.seed)
    model = ResNetTeacher(**{k: v for k, v in arch.items() if k != "kind"})
    t = tensors(ds)
    history = fit(model, *t["train"], cfg.train, fill=_fill(ds), val=t["val"], name="teacher")
    return model, arch, {**model_report(model, ds, t), "history": history}


def distill(teacher: nn.Module, ds: Dataset, cfg: DistillConfig) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train the student with Hinton KD from a frozen teacher (and optionally a labels-only baseline)."""
    arch = cfg.arch(ds)
    kw = {k: v for k, v in arch.items() if k != "kind"}
    t = tensors(ds)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.train.seed)
    student = MobileNetStudent(**kw)
    loss = kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    history = fit(student, *t["train"], cfg.train, loss_fn=loss, fill=_fill(ds), val=t["val"],
                  name="distill", teacher=teacher)
    report: dict[str, Any] = {"kd": {**model_report(student, ds, t), "history": history}}
    if cfg.baseline:
        torch.manual_seed(cfg.train.seed)
        base = MobileNetStudent(**kw)
        bh = fit(base, *t["train"], cfg.train, fill=_fill(ds), val=t["val"], name="baseline")
        report["baseline"] = {**model_report(base, ds, t), "history": bh}
        report["kd_gain_points"] = 100 * (report["kd"]["test"]["accuracy"] - report["baseline"]["test"]["accuracy"])
    return student, arch, report
