"""Knowledge distillation of the teacher (or the ensemble) into a depthwise-separable student."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from edgecompress.config import from_dict
from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, MultiHeadStudent, student_channels
from edgecompress.training.ensemble import EnsembleTeacher, ensemble_kd_loss, fit_multihead, multihead_report
from edgecompress.training.loop import (Tensors, TrainConfig, crop_fill, fit, model_report, precision_that_runs,
                                       tensors, train_device)
from edgecompress.training.losses import CombinedKDLoss, kd_loss, kd_loss_config
from edgecompress.training.multihead import MultiHeadKDConfig
from edgecompress.usermodel import build_module, module_arch, user_file
from edgecompress.training.soft_targets import (SoftTargets, compute_soft_targets, fit_on_soft_targets,
                                               no_soft_targets, response)


SCHEMES = ("offline", "online", "born_again")
SOURCES = ("teacher", "ensemble")


@dataclass(frozen=True)
class DistillConfig:
    """MobileNet-style student, what it learns from (``source``, ``scheme``) and the KD settings."""

    channels: tuple[int, ...] = (16, 32, 32, 64, 64, 128, 128)  # stem, then each block's output
    strides: tuple[int, ...] = (2, 1, 2, 1, 2, 1)
    width: float = 1.0  # MobileNet width multiplier applied to ``channels``
    dropout: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term; 1 - alpha on the labels
    baseline: bool = True  # also train the same student from labels only, to measure KD's gain
    # Distillation kinds and weights, e.g. {response: 0.9, rkd_distance: 25.0}; None: Hinton only.
    losses: dict[str, float] | None = None
    # offline: a trained, frozen teacher; online: deep mutual learning (a fresh teacher-sized peer and
    # the student learn together, each from the other); born_again: after the offline step, a fresh
    # copy of the student learns from the trained one, ``generations`` times.
    scheme: str = "offline"
    generations: int = 1
    # teacher: the teacher checkpoint; ensemble: the teacher and its ensemble members (train_member).
    source: str = "teacher"
    # With source ensemble: 1 = ensemble KD (the members' mean distribution); M > 1 = the
    # Ferianc & Rodrigues (2022) multi-head student, one head per member (M = ensemble size).
    heads: int = 1
    multihead: dict[str, float] | None = None  # MultiHeadKDConfig overrides: a, b, t_member, t_mean, lam_max, ...
    # Teacher assistant (Mirzadeh et al. 2020): a MobileNet of this width multiplier first learns from
    # the teacher, then teaches the student; for capacity gaps where direct KD does worse.
    assistant_width: float | None = None
    # Stored soft targets (FKD): 0 runs the teacher (every member) on every student batch; V >= 1 runs
    # them once on V augmented views of each training image and replays those logits (response KD of
    # the teacher, the ensemble or the multi-head student; the prune stage's fine-tunes reuse them).
    views: int = 0
    # Precision of the pass that stores them: auto = train.precision (the student's); bf16 runs the
    # teachers 2x faster on avx512_bf16 CPUs (a ResNet forward, measured), as they trained.
    targets_precision: str = "auto"
    # The user's own student: "file.py:factory" (called with num_classes, in_channels, image_size)
    # replaces our MobileNet (channels, strides, width and dropout then do not apply).
    student: str | None = None
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
        if self.losses is not None:
            kd_loss_config({"losses": self.losses, "temperature": self.temperature, "alpha": self.alpha},
                           "losses")  # fail at load time, naming the bad kind or weight
        if self.scheme not in SCHEMES:
            raise EdgeCompressError(f"invalid value scheme={self.scheme!r}: allowed {list(SCHEMES)}")
        if self.source not in SOURCES:
            raise EdgeCompressError(f"invalid value source={self.source!r}: allowed {list(SOURCES)}")
        if not isinstance(self.generations, int) or self.generations < 1:
            raise EdgeCompressError(f"invalid value generations={self.generations!r}: must be an integer >= 1")
        if not isinstance(self.heads, int) or self.heads < 1:
            raise EdgeCompressError(f"invalid value heads={self.heads!r}: must be an integer >= 1")
        if self.assistant_width is not None and not self.assistant_width > 0:
            raise EdgeCompressError(f"invalid value assistant_width={self.assistant_width!r}: must be > 0 or null")
        if self.heads > 1 and self.source != "ensemble":
            raise EdgeCompressError(f"heads={self.heads} needs source: ensemble (head i learns from member i)")
        if self.heads > 1 and self.scheme != "offline":
            raise EdgeCompressError(f"heads={self.heads} works with scheme: offline only, got {self.scheme!r}")
        if self.scheme == "online" and (self.source != "teacher" or self.losses or self.assistant_width):
            raise EdgeCompressError("scheme online (deep mutual learning) trains one teacher-sized peer with the "
                                    "student on soft targets: it needs source: teacher, losses: null, "
                                    "assistant_width: null")
        if self.source == "ensemble" and (self.losses or self.assistant_width):
            raise EdgeCompressError("source ensemble distils the members' predictions: set losses: null and "
                                    "assistant_width: null (feature and relation kinds need one teacher)")
        if self.multihead is not None:
            self.multihead_config(self.heads)  # fail at load time, naming the bad key
        if not isinstance(self.views, int) or self.views < 0:
            raise EdgeCompressError(f"invalid value views={self.views!r}: must be an integer >= 0 (0: online)")
        if self.targets_precision not in ("auto", "fp32", "bf16"):
            raise EdgeCompressError(f"invalid value targets_precision={self.targets_precision!r}: must be auto, "
                                    f"fp32 or bf16")
        if self.student is not None and (not isinstance(self.student, str) or self.heads > 1 or self.assistant_width):
            raise EdgeCompressError(f"invalid value student={self.student!r}: a 'file.py:factory' string, used with "
                                    f"heads: 1 and assistant_width: null (both build MobileNets of ours)")
        if self.views and (self.scheme == "online" or self.losses or self.assistant_width):
            raise EdgeCompressError(f"views={self.views} stores the teachers' logits, which serve response KD "
                                    f"only: set views: 0 with scheme online, losses or assistant_width")


    def multihead_config(self, heads: int) -> Any:
        """The MultiHeadKDConfig for ``heads`` heads with ``multihead``'s overrides."""
        extra = dict(self.multihead or {})
        if "num_heads" in extra:
            raise EdgeCompressError("multihead.num_heads: set distill.heads instead")
        return from_dict(MultiHeadKDConfig, {**extra, "num_heads": heads}, "params.yaml:distill.multihead")

    def new_student(self, ds: Dataset, width: float | None = None) -> nn.Module:
        """A freshly initialised student: the user's factory's network, or our MobileNet (``width`` overrides
        the multiplier, e.g. for the teacher assistant)."""
        if self.student:
            user_file(self.student, "distill.student")  # resolved: only code inside user/ runs (validate says so too)
            return build_module(self.student, ds.num_classes, ds.channels, ds.input_shape[1], "distill.student")
        return MobileNetStudent(**{k: v for k, v in self.arch(ds, width).items() if k != "kind"})

    def arch(self, ds: Dataset, width: float | None = None) -> dict[str, Any]:
        """The student's arch (``width`` overrides the multiplier, e.g. for the teacher assistant)."""
        return {"kind": "mobilenet", "in_channels": ds.channels, "num_classes": ds.num_classes,
                "channels": student_channels(list(self.channels), width or self.width), "strides": list(self.strides),
                "dropout": self.dropout}


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """Same architecture, new random weights (and BN statistics), trainable."""
    twin = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in twin.modules():
        if hasattr(m, "reset_parameters") and m is not twin:
            m.reset_parameters()  # type: ignore[operator]
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin.train()


def _kd(teacher: nn.Module, ds: Dataset, cfg: DistillConfig, t: Tensors, width: float | None = None,
        name: str = "distill", targets: SoftTargets | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """One offline KD run: a fresh MobileNet (``width``) learns from the frozen ``teacher`` (its stored
    ``targets`` when given)."""
    _frozen(teacher)
    torch.manual_seed(cfg.train.seed)
    student = cfg.new_student(ds, width)
    loss = kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    combined = None
    if cfg.losses is not None:
        kcfg = kd_loss_config({"losses": cfg.losses, "temperature": cfg.temperature, "alpha": cfg.alpha},
                              "params.yaml:distill")
        combined = CombinedKDLoss(kcfg, student, teacher, t["train"][0][:2])
        torch.manual_seed(cfg.train.seed)  # the adapter's init must not shift the student's batches
    if targets is not None and combined is None and targets.fits(cfg.train):
        x = t["train"][0]
        history = fit_on_soft_targets(student, x, t["train"][1], cfg.train, targets.select([teacher], x, name),
                                      targets, response(loss, ensemble=False), crop_fill(ds), val=t["val"], name=name)
    else:
        history = fit(student, *t["train"], cfg.train, loss_fn=loss, fill=crop_fill(ds), val=t["val"],
                      name=name, teacher=teacher, feature_loss=combined)
    return student, {**model_report(student, ds, t), "history": history,
                     "losses": cfg.losses or {"response": cfg.alpha}}


def _mutual(teacher: nn.Module, ds: Dataset, cfg: DistillConfig, t: Tensors) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """Deep mutual learning (Zhang et al. 2018): a fresh teacher-sized peer and the student train together.

    Each minimises (1 - alpha) * CE + alpha * T^2 * KL(other's softened prediction || its own), the
    other's prediction detached, on the same augmented batch; one optimiser (``cfg.train``) steps both.
    """
    torch.manual_seed(cfg.train.seed)
    student = cfg.new_student(ds)
    peer = fresh_copy(teacher, cfg.train.seed + 1)
    loss = kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)

    def step_loss(xb: torch.Tensor, yb: torch.Tensor, _step: int, _total: int) -> tuple[torch.Tensor, dict[str, float]]:
        s, p = student(xb), peer(xb)
        ls, lp = loss(s, p.detach(), yb), loss(p, s.detach(), yb)
        return ls + lp, {"student_loss": float(ls.detach()), "peer_loss": float(lp.detach())}

    history = fit(student, *t["train"], cfg.train, fill=crop_fill(ds), val=t["val"], name="mutual",
                  step_loss=step_loss, params=list(student.parameters()) + list(peer.parameters()),
                  companions=(peer,))
    peer.eval()
    return student, peer, {**model_report(student, ds, t), "history": history, "losses": {"mutual": cfg.alpha}}


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: rep[k] for k in ("test", "val", "params", "macs") if k in rep}


def teacher_targets(teacher: nn.Module, ds: Dataset, cfg: DistillConfig,
                    members: Sequence[nn.Module] = ()) -> tuple[SoftTargets, dict[str, Any]]:
    """The stored soft targets of what the student learns from (the teacher, or the teacher and
    ``members``), and what computing them cost; empty (zero views) when ``cfg.views`` is 0."""
    sources = [_frozen(teacher), *(_frozen(m) for m in members)] if cfg.source == "ensemble" else [_frozen(teacher)]
    x = tensors(ds)["train"][0]
    if not cfg.views:
        return no_soft_targets(sources, x, cfg.train), {"views": 0}
    t0 = time.time()
    run = cfg.train if cfg.targets_precision == "auto" else dataclasses.replace(cfg.train, precision=cfg.targets_precision)
    st = compute_soft_targets(sources, x, crop_fill(ds), cfg.views, run)
    return st, {"views": cfg.views, "members": len(sources), "forward_passes": cfg.views * len(sources) * len(x),
                "precision": precision_that_runs(train_device(run.device), run.precision), "seconds": time.time() - t0}


def distill(teacher: nn.Module, ds: Dataset, cfg: DistillConfig, members: Sequence[nn.Module] = (),
            targets: SoftTargets | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train the student as ``cfg`` says; returns (student, arch, report).

    ``members`` are the ensemble's other members (source: ensemble; the teacher is member 0); their
    stored ``targets`` (``teacher_targets``) are replayed where the scheme allows. The
    report's "kd" entry describes the returned student; "assistant", "peer" and "generations" describe
    the intermediate models of those schemes; "baseline" the same student trained from labels only.
    """
    t = tensors(ds)
    arch = cfg.arch(ds)
    report: dict[str, Any] = {"scheme": cfg.scheme, "source": cfg.source}
    if cfg.scheme == "online":
        student, peer, kd = _mutual(teacher, ds, cfg, t)
        report["peer"] = _summary(model_report(peer, ds, t))
    elif cfg.source == "ensemble":
        ensemble = [_frozen(teacher), *(_frozen(m) for m in members)]
        if cfg.heads > 1:
            if cfg.heads != len(ensemble):
                raise EdgeCompressError(f"distill.heads={cfg.heads} but the ensemble has {len(ensemble)} members "
                                        f"(train_teacher.ensemble_size): set heads: {len(ensemble)}")
            student, kd = distill_multihead(ensemble, ds, cfg, cfg.multihead_config(cfg.heads), targets)
            arch = {"kind": "multihead", "heads": cfg.heads, "core": arch}
        else:
            if len(ensemble) < 2:
                raise EdgeCompressError("source: ensemble needs train_teacher.ensemble_size >= 2")
            student, kd = distill_ensemble(ensemble, ds, cfg, targets)
    else:
        source = teacher
        if cfg.assistant_width:
            source, assistant = _kd(teacher, ds, cfg, t, width=cfg.assistant_width, name="assistant")
            report["assistant"] = {**_summary(assistant), "width": cfg.assistant_width}
        student, kd = _kd(source, ds, cfg, t, targets=None if cfg.assistant_width else targets)
    if cfg.scheme == "born_again":
        generations = [_summary(kd)]
        for g in range(1, cfg.generations + 1):
            student, kd = _kd(student, ds, cfg, t, name=f"born-again-{g}")
            generations.append(_summary(kd))
        report["generations"] = generations  # [0] is the offline student every later one descends from
    report["kd"] = kd
    if cfg.baseline:
        torch.manual_seed(cfg.train.seed)
        base = cfg.new_student(ds)
        bh = fit(base, *t["train"], cfg.train, fill=crop_fill(ds), val=t["val"], name="baseline")
        report["baseline"] = {**model_report(base, ds, t), "history": bh}
        report["kd_gain_points"] = 100 * (report["kd"]["test"]["accuracy"] - report["baseline"]["test"]["accuracy"])
    if cfg.student:
        arch = module_arch(cfg.student, student, tuple(ds.input_shape), ds.num_classes)  # type: ignore[arg-type]
    return student, arch, report


def distill_ensemble(members: Sequence[nn.Module], ds: Dataset, student_cfg: DistillConfig,
                     targets: SoftTargets | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A MobileNet student (``student_cfg``'s architecture) distilled from the members' mean distribution
    (the members' stored ``targets`` replayed when given).

    Uses ``student_cfg.temperature``/``alpha``/``train``; ``losses`` and ``baseline`` are not used.
    """
    cfg = student_cfg
    t = tensors(ds)
    teacher = EnsembleTeacher(members)
    torch.manual_seed(cfg.train.seed)
    student = cfg.new_student(ds)
    t0 = time.time()
    loss = ensemble_kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    if targets is not None and targets.fits(cfg.train):
        x = t["train"][0]
        history = fit_on_soft_targets(student, x, t["train"][1], cfg.train, targets.select(members, x, "ensemble-kd"),
                                      targets, response(loss, ensemble=True), crop_fill(ds), val=t["val"],
                                      name="ensemble-kd")
    else:
        history = fit(student, *t["train"], cfg.train, loss_fn=loss, fill=crop_fill(ds), val=t["val"],
                      name="ensemble-kd", teacher=teacher)
    report = {**model_report(student, ds, t), "history": history, "seconds": time.time() - t0,
              "members": len(members), "temperature": cfg.temperature, "alpha": cfg.alpha}
    return student, report


def distill_multihead(members: Sequence[nn.Module], ds: Dataset, student_cfg: DistillConfig,
                      mh_cfg: MultiHeadKDConfig,
                      targets: SoftTargets | None = None) -> tuple[MultiHeadStudent, dict[str, Any]]:
    """A MultiHeadStudent (M = len(members) heads on a ``student_cfg`` MobileNet core) trained with
    ``ferianc_loss``; ``mh_cfg.num_heads`` is overridden by the number of members."""
    if len(members) == 0:
        raise EdgeCompressError("distill_multihead needs at least one member")
    mh_cfg = dataclasses.replace(mh_cfg, num_heads=len(members))
    cfg = student_cfg
    kw = {k: v for k, v in cfg.arch(ds).items() if k != "kind"}
    t = tensors(ds)
    torch.manual_seed(cfg.train.seed)
    model = MultiHeadStudent(MobileNetStudent(**kw), num_heads=len(members))
    t0 = time.time()
    history = fit_multihead(model, members, *t["train"], cfg.train, mh_cfg, fill=crop_fill(ds), val=t["val"],
                            targets=targets)
    report = {**multihead_report(model, ds, t), "history": history, "seconds": time.time() - t0,
              "config": dataclasses.asdict(mh_cfg)}
    return model, report


def distill_metrics(report: dict[str, Any], cfg: DistillConfig, teacher_params: int) -> dict[str, Any]:
    """The distill stage's metrics from ``distill``'s report: the student's, and how it compares."""
    kd = report["kd"]
    metrics = {"test": kd["test"], "val": kd["val"], "params": kd["params"], "macs": kd["macs"],
               "scheme": cfg.scheme, "source": cfg.source, "heads": cfg.heads, "teacher_params": teacher_params,
               "params_fraction_of_teacher": kd["params"] / teacher_params if teacher_params else None}
    for key in ("assistant", "peer", "generations"):
        if key in report:
            metrics[key] = report[key]
    if "head_accuracy" in kd:
        metrics["head_accuracy"] = kd["head_accuracy"]
    if "baseline" in report:
        metrics["baseline_test"] = report["baseline"]["test"]
        metrics["kd_gain_points"] = report["kd_gain_points"]
    return metrics
