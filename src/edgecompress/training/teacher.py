"""The teacher: a ResNet-style network trained from scratch or fine-tuned from a local checkpoint
(transfer learning), and the shared helpers every training stage uses (tensors, reports)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.models import ResNetTeacher
from edgecompress.training.loop import TrainConfig, crop_fill, fit, model_report, tensors
from edgecompress.usermodel import FORMS, UserModelSpec, load_user_model, user_arch

SOURCES = ("train", *FORMS)



@dataclass(frozen=True)
class TeacherConfig:
    """The teacher: our ResNet trained here (stem, per-stage widths and block counts, training), or the
    user's own trained classifier (``source``: module | exported | onnx; see ``edgecompress.usermodel``)."""

    # train: the ResNet below, trained here. module: model = "file.py:factory" + weights (a state dict);
    # exported: model = a torch.export .pt2; onnx: model = an .onnx (layout, normalized_input describe its input).
    source: str = "train"
    model: str | None = None
    weights: str | None = None
    layout: str = "NCHW"
    normalized_input: bool = True
    stem: int = 32
    widths: tuple[int, ...] = (48, 96, 192)
    blocks: tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.0
    init: str | None = None  # transfer learning: a local checkpoint whose matching weights start training
    freeze: int = 0  # 0: train all; 1: freeze the stem; k: the stem and the first k-1 residual blocks
    train: TrainConfig = field(default_factory=TrainConfig)
    # Deep ensemble: the teacher is member 0; members 1..N-1 are dvc's train_member@i stages. DVC's
    # foreach cannot count, so ``members`` spells the indices out and must equal 1..ensemble_size-1.
    ensemble_size: int = 1
    members: tuple[int, ...] = ()
    # Members 1..N-1 may train shorter than the teacher: averaging recovers what each loses (docs/results.md).
    member_epochs: int | None = None  # None: train.epochs, as the teacher
    # scratch: each member trains from its own random initialisation (Lakshminarayanan et al.);
    # teacher: from the trained teacher's weights, a short restarted one-cycle with its own seed (data
    # order and augmentation), as snapshot/fast-geometric ensembles do: measured as accurate for a
    # fraction of the cost (docs/results.md).
    member_init: str = "scratch"
    member_lr: float | None = None  # the members' peak learning rate; None: train.lr
    mc_samples: int = 0  # > 0: also evaluate the teacher with that many MC-dropout passes (needs dropout)

    # Keys that say how many members there are and how they are evaluated, not how one is trained.
    ENSEMBLE_KEYS = ("ensemble_size", "members", "member_epochs", "member_init", "member_lr", "mc_samples")
    MEMBER_INITS = ("scratch", "teacher")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise EdgeCompressError(f"invalid value source={self.source!r}: allowed {list(SOURCES)}")
        if self.source == "train" and (self.model or self.weights):
            raise EdgeCompressError(f"model/weights are set but source is 'train' (the ResNet is trained here): "
                                    f"set source: module, exported or onnx to bring your own teacher, or remove them")
        if self.source != "train":
            self.user_spec()  # names a missing model or weights, a bad layout
            clash = [k for k, bad in (("ensemble_size", self.ensemble_size != 1), ("init", bool(self.init)),
                                      ("freeze", bool(self.freeze)), ("mc_samples", bool(self.mc_samples))) if bad]
            if clash:
                raise EdgeCompressError(f"source={self.source!r} brings a trained teacher, which is not trained "
                                        f"here: {', '.join(clash)} must be left at the default (ensemble_size: 1, "
                                        f"members: [], init: null, freeze: 0, mc_samples: 0)")
        if not isinstance(self.ensemble_size, int) or self.ensemble_size < 1:
            raise EdgeCompressError(f"invalid value ensemble_size={self.ensemble_size!r}: must be an integer >= 1")
        if list(self.members) != list(range(1, self.ensemble_size)):
            raise EdgeCompressError(
                f"members={list(self.members)} does not match ensemble_size={self.ensemble_size}: "
                f"set members: {list(range(1, self.ensemble_size))} (dvc.yaml's train_member stage loops over it; "
                f"member 0 is the teacher itself)")
        if self.member_epochs is not None and self.member_epochs < 1:
            raise EdgeCompressError(f"invalid value member_epochs={self.member_epochs!r}: must be >= 1, or null "
                                    f"for train.epochs")
        if self.member_init not in self.MEMBER_INITS:
            raise EdgeCompressError(f"invalid value member_init={self.member_init!r}: allowed {list(self.MEMBER_INITS)}")
        if self.member_lr is not None and not self.member_lr > 0:
            raise EdgeCompressError(f"invalid value member_lr={self.member_lr!r}: must be > 0, or null for train.lr")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 0:
            raise EdgeCompressError(f"invalid value mc_samples={self.mc_samples!r}: must be an integer >= 0")
        if self.mc_samples and not self.dropout > 0:
            raise EdgeCompressError(f"mc_samples={self.mc_samples} needs dropout > 0 (MC dropout samples the "
                                    f"dropout masks); set train_teacher.dropout, e.g. 0.2, or mc_samples: 0")
        if not isinstance(self.freeze, int) or not 0 <= self.freeze <= 1 + sum(self.blocks):
            raise EdgeCompressError(f"invalid value freeze={self.freeze!r}: must be an integer within "
                                    f"[0, {1 + sum(self.blocks)}] (stem + {sum(self.blocks)} blocks)")
        if self.freeze and not self.init:
            raise EdgeCompressError("freeze needs init: freezing randomly initialised layers only hurts")
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise EdgeCompressError(f"widths {list(self.widths)} and blocks {list(self.blocks)} must be non-empty and of equal length")
        if min(self.widths) < 1 or min(self.blocks) < 1 or self.stem < 1:
            raise EdgeCompressError("stem, widths and blocks must be positive integers")


    def user_spec(self) -> UserModelSpec:
        """Where the user's teacher comes from (``source`` is not ``train``)."""
        return UserModelSpec(self.source, self.model or "", self.weights, self.layout, self.normalized_input,
                             "train_teacher")

    def member(self, index: int, teacher: str | None = None) -> "TeacherConfig":
        """Config of ensemble member ``index``: the same teacher with seed ``train.seed + index``,
        ``member_epochs`` epochs and ``member_lr`` when set, and with ``member_init: teacher`` starting from
        the ``teacher`` checkpoint. Member 0, the teacher, is ``self``."""
        if index == 0:
            return self
        if index not in self.members:
            raise EdgeCompressError(f"member {index} is not in train_teacher.members {list(self.members)}")
        train = replace(self.train, seed=self.train.seed + index, epochs=self.member_epochs or self.train.epochs,
                        lr=self.member_lr or self.train.lr)
        if self.member_init == "scratch":
            return replace(self, train=train)
        if not teacher:
            raise EdgeCompressError("member_init: teacher needs the trained teacher's checkpoint "
                                    "(stages/train_teacher.py --member i --teacher models/teacher.pt)")
        if not Path(teacher).is_file():
            raise EdgeCompressError(f"train_teacher.member_init is 'teacher' but the teacher's checkpoint {teacher} "
                                    f"is missing: run `dvc repro train_teacher` first, or set member_init: scratch")
        return replace(self, train=train, init=teacher)

    def describe_member(self) -> str:
        """How this member config trains, for the stage's log line."""
        start = f"from {self.init}" if self.member_init == "teacher" else "from scratch"
        return f"seed {self.train.seed}, {start}, {self.train.epochs} epochs, peak lr {self.train.lr}"

    def arch(self, ds: Dataset) -> dict[str, Any]:
        return {"kind": "resnet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                "widths": list(self.widths), "blocks": list(self.blocks), "stem": self.stem, "dropout": self.dropout}


def load_pretrained(model: nn.Module, path: str) -> dict[str, Any]:
    """Copy every tensor of a local checkpoint whose name and shape match ``model``'s (weights only).

    Accepts our checkpoints (``{"state_dict": ...}``) and plain state dicts. Loading is
    ``weights_only=True``: a checkpoint can carry tensors and plain data, never code. Layers that
    differ (a new classifier for other classes) keep their fresh initialisation and are listed.
    """
    if not Path(path).is_file():
        raise EdgeCompressError(f"train_teacher.init: checkpoint {path} not found; give a local .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refuses code and corrupt files in many ways
        raise EdgeCompressError(f"train_teacher.init: cannot load {path} with weights_only=True "
                                f"({type(e).__name__}: {e}); save the weights as a state dict") from e
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise EdgeCompressError(f"train_teacher.init: {path} holds no state dict")
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not any(k.endswith("weight") for k in loaded):
        raise EdgeCompressError(f"train_teacher.init: no weight in {path} matches this teacher's layers "
                                f"(widths/blocks/stem must match the checkpoint's)")
    model.load_state_dict(loaded, strict=False)
    return {"init": path, "loaded": len(loaded), "kept_fresh": sorted(set(own) - set(loaded))}


def _freeze(model: ResNetTeacher, n: int) -> list[str]:
    """Freeze the stem (n >= 1) and the first n-1 residual blocks; returns the frozen parts."""
    parts = [("stem", model.stem)] + [(f"stages.{i}", b) for i, b in enumerate(model.stages)]
    for _, module in parts[:n]:
        for p in module.parameters():
            p.requires_grad_(False)
    return [name for name, _ in parts[:n]]


def train_teacher(ds: Dataset, cfg: TeacherConfig) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train the teacher from scratch, or fine-tune it from ``cfg.init``, or bring the user's (``cfg.source``);
    returns (model, arch, report)."""
    if cfg.source != "train":
        return bring_teacher(ds, cfg)
    arch = cfg.arch(ds)
    torch.manual_seed(cfg.train.seed)
    model = ResNetTeacher(**{k: v for k, v in arch.items() if k != "kind"})
    transfer: dict[str, Any] = {}
    if cfg.init:
        transfer = load_pretrained(model, cfg.init)
        transfer["frozen"] = _freeze(model, cfg.freeze)
    t = tensors(ds)
    history = fit(model, *t["train"], cfg.train, fill=crop_fill(ds), val=t["val"], name="teacher")
    for p in model.parameters():
        p.requires_grad_(True)
    report = {**model_report(model, ds, t), "history": history}
    if transfer:
        report["transfer"] = transfer
    return model, arch, report


def bring_teacher(ds: Dataset, cfg: TeacherConfig) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The user's trained classifier as the teacher, checked on a batch and measured like ours (no training)."""
    spec = cfg.user_spec()
    spec.check_user_dir()  # as the validate stage does, for a stage run on its own
    shape = tuple(ds.input_shape)
    model = load_user_model(spec, shape, ds.num_classes, tuple(ds.mean), tuple(ds.std))  # type: ignore[arg-type]
    arch = user_arch(spec, model, shape, ds.num_classes, tuple(ds.mean), tuple(ds.std))  # type: ignore[arg-type]
    report = {**model_report(model, ds, tensors(ds)), "history": [], "source": spec.form}
    return model, arch, report
