"""The once-for-all student: one elastic MobileNet trained once, sliced into ordinary students per size.

Training (Cai et al. 2020, once-for-all; Yu & Huang 2019, universally slimmable networks): every step
runs the sandwich rule, the largest sub-network, the smallest and ``random_subnets`` random ones on the
same batch, and sums their losses (one backward: the gradient of the sum is the accumulated gradient
of each). The largest learns from the stored ensemble soft targets (``soft_targets.py``: the logits
the distill stage stored, replayed, so no teacher runs here) and the labels; the smaller ones also
learn from the largest's outputs on that batch (in-place distillation), weighted by ``inplace``.
BatchNorm is shared across widths while training, so every extracted slice gets its statistics
re-estimated on training images (``elastic_net.recalibrate_bn``) before it is scored or saved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.checkpoint import save_checkpoint
from edgecompress.data import Dataset
from edgecompress.dirs import whole_dir
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.models import MobileNetStudent
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic_net import ElasticMobileNet, SubnetSpec, extract, recalibrate_bn, sort_channels
from edgecompress.training.loop import Tensors, TrainConfig, crop_fill, model_report, tensors
from edgecompress.training.losses import ensemble_kd, hinton_kd
from edgecompress.training.soft_targets import SoftTargets, TargetLoss, fit_on_soft_targets

log = get_logger("elastic")

WIDTHS_EXAMPLE = "[0.5, 0.75, 1.0, 1.5, 2.0]"


@dataclass(frozen=True)
class ElasticConfig:
    """``elastic`` in params.yaml: the elastic student's choices, its training and the slices to extract."""

    enabled: bool = True  # false: the stage writes no slices (e.g. with your own student, distill.student)
    # Width multipliers every stage can take, relative to today's student (distill.channels x distill.width);
    # the largest is the elastic maximum: the network that is trained and sliced.
    widths: tuple[float, ...] = (0.5, 1.0, 1.5)
    elastic_depth: bool = False  # also train sub-networks that skip a stage's trailing stride-1 blocks
    # auto: one slice per width (every stage at that width), a spread along size; or a list of slices, each a
    # width, a list of one width per stage (stem, then the block stages) or {width: ..., depth: [...]}.
    slices: str | tuple[Any, ...] = "auto"
    random_subnets: int = 1  # random sub-networks per step besides the largest and the smallest
    # per_stage: each stage's width drawn on its own (once-for-all) | uniform: one width for the whole network,
    # from those between the smallest and the largest (the networks slices: auto extracts get direct steps)
    sample: str = "uniform"
    random_every: int = 2  # the random sub-networks join every k-th step (2: every other one, less compute a step)
    random_weight: float = 1.0  # weight of a random sub-network's loss (random_every: as if it ran every step)
    # The smallest network joins every k-th step, on the steps between the random ones' (random_every 2 and
    # smallest_every 2: the middle and the smallest take turns); 1: every step (the sandwich rule)
    smallest_every: int = 1
    # Switchable BatchNorm (slimmable networks): each width its own BatchNorm scale, shift and statistics
    # while training; a slice takes its width's. false: one BatchNorm shared by all widths (once-for-all).
    private_bn: bool = False
    # Progressive shrinking (once-for-all's schedule): the largest network alone for this many epochs first (the
    # same KD, its own one-cycle at train.lr), its channels sorted by importance, then the sandwich rule for
    # train.epochs at peak shrink_lr. 0: the sandwich rule from the start.
    largest_epochs: int = 0
    shrink_lr: float | None = None  # peak learning rate of the sandwich phase after a largest-only one (None: train.lr)
    inplace: float = 0.5  # weight of the largest's outputs in the smaller ones' soft target (the rest: the ensemble's)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft targets; 1 - alpha on the labels
    recalibration_images: int = 2000  # plain training images each slice's BatchNorm statistics are re-estimated on
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, weight_decay=1e-4))

    def __post_init__(self) -> None:
        if not self.widths or any(isinstance(w, bool) or not w > 0 for w in self.widths):
            raise EdgeCompressError(f"invalid value widths={list(self.widths)}: every width must be a number > 0 "
                                    f"(a multiplier of today's student channels, e.g. {WIDTHS_EXAMPLE})")
        if len(set(self.widths)) != len(self.widths):
            raise EdgeCompressError(f"invalid value widths={list(self.widths)}: list each width once")
        if self.sample not in ("per_stage", "uniform"):
            raise EdgeCompressError(f"invalid value sample={self.sample!r}: allowed per_stage (each stage's width "
                                    f"drawn on its own) or uniform (one width for the whole network)")
        # The types are from_dict's to check (params.yaml); these are the ranges.
        checks = [("random_subnets", self.random_subnets >= 0, "an integer >= 0"),
                  ("random_every", self.random_every >= 1, "an integer >= 1 (1: random sub-networks every step)"),
                  ("random_weight", self.random_weight > 0, "a number > 0"),
                  ("smallest_every", self.smallest_every >= 1, "an integer >= 1 (1: the smallest every step)"),
                  ("largest_epochs", self.largest_epochs >= 0, "an integer >= 0"),
                  ("shrink_lr", self.shrink_lr is None or self.shrink_lr > 0,
                   "a number > 0, or null (the sandwich phase uses train.lr)"),
                  ("inplace", 0 <= self.inplace <= 1, "within [0, 1]"), ("temperature", self.temperature > 0, "> 0"),
                  ("alpha", 0 <= self.alpha <= 1, "within [0, 1]"),
                  ("recalibration_images", self.recalibration_images >= 1, ">= 1")]
        for name, ok, allowed in checks:
            if not ok:
                raise EdgeCompressError(f"invalid value {name}={getattr(self, name)!r}: must be {allowed}")
        if isinstance(self.slices, str) and self.slices != "auto" or not self.slices:
            raise EdgeCompressError(f"invalid value slices={self.slices!r}: must be auto or a non-empty list of "
                                    f"slices (a width, a list of one width per stage, or {{width: ..., depth: [...]}})")
        if not isinstance(self.slices, str):
            for i, entry in enumerate(self.slices):
                self._check_slice(i, entry)

    def _check_slice(self, i: int, entry: Any) -> None:
        """One slice's widths are trained ones (the elastic maximum at most); its depth needs elastic_depth."""
        where = f"slices[{i}]"
        width, depth = (entry.get("width"), entry.get("depth")) if isinstance(entry, Mapping) else (entry, None)
        if isinstance(entry, Mapping) and (width is None or set(entry) - {"width", "depth"}):
            raise EdgeCompressError(f"invalid value {where}={dict(entry)!r}: a mapping takes the keys width "
                                    f"(required) and depth")
        ws = width if isinstance(width, (list, tuple)) else [width]
        top = max(self.widths)
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
                raise EdgeCompressError(f"invalid value {where}={entry!r}: widths must be numbers > 0, from "
                                        f"elastic.widths {list(self.widths)}")
            if w > top:
                raise EdgeCompressError(f"invalid value {where}={entry!r}: width {w} is larger than the elastic "
                                        f"maximum {top} (the largest of elastic.widths); add {w} to elastic.widths "
                                        f"or slice a width up to {top}")
            if w not in self.widths:
                raise EdgeCompressError(f"invalid value {where}={entry!r}: width {w} was never trained; use one of "
                                        f"elastic.widths {list(self.widths)} or add it there")
        if depth is not None and not self.elastic_depth:
            raise EdgeCompressError(f"invalid value {where}={entry!r}: a slice with fewer blocks needs "
                                    f"elastic.elastic_depth: true (else those depths are never trained)")


def check_distill(distill: DistillConfig) -> None:
    """The elastic student is our MobileNet trained from the distill stage's stored soft targets."""
    if distill.student:
        raise EdgeCompressError(f"params.yaml:elastic: distill.student is set ({distill.student!r}: your own "
                                f"student), but the elastic student slices our MobileNet only; set "
                                f"elastic.enabled: false, or distill.student: null")
    if not distill.views:
        raise EdgeCompressError("params.yaml:elastic: the elastic student learns from the stored soft targets, but "
                                "distill.views is 0; set distill.views: 4 (or elastic.enabled: false)")


def elastic_net(ds: Dataset, distill: DistillConfig, cfg: ElasticConfig) -> ElasticMobileNet:
    """A freshly initialised elastic MobileNet around today's student (``distill``'s channels, strides, width)."""
    check_distill(distill)
    arch = distill.arch(ds)
    torch.manual_seed(cfg.train.seed)
    return ElasticMobileNet(arch["in_channels"], arch["num_classes"], arch["channels"], arch["strides"],
                            cfg.widths, arch["dropout"], private_bn=cfg.private_bn)


def slice_specs(net: ElasticMobileNet, cfg: ElasticConfig) -> list[SubnetSpec]:
    """The sub-networks to extract: ``auto`` is one per width (every stage at it), narrowest first."""
    if cfg.slices == "auto":
        return [net.spec(w) for w in net.widths]
    specs = []
    for i, entry in enumerate(cfg.slices):
        width, depth = (entry["width"], entry.get("depth")) if isinstance(entry, Mapping) else (entry, None)
        try:
            spec = net.spec(width, depth)
        except EdgeCompressError as e:
            raise EdgeCompressError(f"params.yaml:elastic.slices[{i}]: {e}") from None
        if spec not in specs:
            specs.append(spec)
    return specs


def sandwich_loss(net: ElasticMobileNet, cfg: ElasticConfig, ensemble: bool, label_smoothing: float = 0.0,
                  seed: int = 0, largest_only: bool = False) -> TargetLoss:
    """The step loss of the sandwich rule with in-place distillation, as ``fit_on_soft_targets`` calls it:
    ``t`` holds the members' stored logits (M, B, C) for exactly the batch's views. ``largest_only``: the
    largest network's loss alone (progressive shrinking's first phase)."""
    gen = torch.Generator().manual_seed(seed)
    temp, alpha, beta = cfg.temperature, cfg.alpha, cfg.inplace

    def stored(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ensemble_kd(s, t, temp) if ensemble else hinton_kd(s, t[0], temp)

    def loss(model: nn.Module, xb: torch.Tensor, t: torch.Tensor, yb: torch.Tensor,
             step: int, _total: int) -> tuple[torch.Tensor, dict[str, float]]:
        randoms = cfg.random_subnets if step % cfg.random_every == 0 else 0
        smallest = (step + 1) % cfg.smallest_every == 0  # offset by one from the random ones' steps
        others = [] if largest_only else [
            *([("smallest", net.smallest(cfg.elastic_depth), 1.0)] if smallest else []),
            *(("random", net.sample(gen, cfg.elastic_depth, cfg.sample == "per_stage"), cfg.random_weight)
              for _ in range(randoms))]
        big = net.run(xb, net.largest())
        total = alpha * stored(big, t) + (1 - alpha) * F.cross_entropy(big, yb, label_smoothing=label_smoothing)
        parts = {"largest": float(total.detach())}
        teacher = big.detach()  # in-place distillation: the largest teaches, it does not learn from them
        for role, spec, weight in others:
            s = net.run(xb, spec)
            soft = (1 - beta) * stored(s, t) + beta * hinton_kd(s, teacher, temp)
            part = alpha * soft + (1 - alpha) * F.cross_entropy(s, yb, label_smoothing=label_smoothing)
            if role == "smallest":
                parts["smallest"] = float(part.detach())
            total = total + weight * part
        return total, parts

    return loss


def train_elastic(net: ElasticMobileNet, x: torch.Tensor, y: torch.Tensor, cfg: ElasticConfig, logits: torch.Tensor,
                  st: SoftTargets, fill: torch.Tensor, ensemble: bool) -> list[dict[str, float]]:
    """Train ``net`` in place on the stored views and ``logits`` (V, M, N, C); returns fit's per-epoch history
    (no validation while training: shared BatchNorm statistics mean nothing before recalibration)."""
    if not st.fits(cfg.train):
        raise EdgeCompressError(f"params.yaml:elastic.train: the stored soft targets were made with crop_pad "
                                f"{st.pad} and flip {st.flip}; set elastic.train.crop_pad: {st.pad} and "
                                f"elastic.train.flip: {str(st.flip).lower()} (the views are replayed as stored)")
    smooth, seed = cfg.train.label_smoothing, cfg.train.seed
    history: list[dict[str, float]] = []
    sandwich = cfg.train
    if cfg.largest_epochs:
        first = replace(cfg.train, epochs=cfg.largest_epochs)
        history += [{**h, "phase": "largest"} for h in fit_on_soft_targets(
            net, x, y, first, logits, st, sandwich_loss(net, cfg, ensemble, smooth, seed, largest_only=True), fill,
            name="elastic-largest")]
        sort_channels(net)  # the narrower slices start from the largest's most important channels
        sandwich = replace(cfg.train, lr=cfg.shrink_lr or cfg.train.lr)
    history += [{**h, "phase": "sandwich"} for h in fit_on_soft_targets(
        net, x, y, sandwich, logits, st, sandwich_loss(net, cfg, ensemble, smooth, seed), fill, name="elastic")]
    net.active = net.largest()
    return history


@dataclass(frozen=True)
class Slice:
    """One extracted sub-network: an ordinary student, its arch dict and its report (val, test, size)."""

    name: str  # elastic-w100, elastic-w050-100-150-200, ...
    spec: SubnetSpec
    model: MobileNetStudent
    arch: dict[str, Any]
    report: dict[str, Any]


def extract_slices(net: ElasticMobileNet, specs: Sequence[SubnetSpec], ds: Dataset, cfg: ElasticConfig,
                   t: Tensors | None = None) -> list[Slice]:
    """Each ``spec`` extracted, its BatchNorm statistics recalibrated on ``recalibration_images`` plain training
    images (a seeded draw), and scored (val, test, params, MACs)."""
    t = t or tensors(ds)
    x = t["train"][0]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.train.seed))[:cfg.recalibration_images]
    calib = x[pick]
    out = []
    for spec in specs:
        model, arch = extract(net, spec)
        recalibrate_bn(model, calib)
        report = {**model_report(model, ds, t), "widths": list(spec.widths), "depths": list(spec.depths)}
        name = f"elastic-{net.name(spec)}"
        log.info(f"{name}: {report['params']} params, val accuracy {report['val']['accuracy']:.4f}"
                 if report["val"] else f"{name}: {report['params']} params")
        out.append(Slice(name, spec, model, arch, report))
    return out


def elastic(ds: Dataset, distill: DistillConfig, cfg: ElasticConfig, targets: SoftTargets,
            sources: Sequence[nn.Module]) -> tuple[ElasticMobileNet, list[Slice], dict[str, Any]]:
    """Train the elastic student from ``targets`` (stored for ``sources``: the teacher, then the members when
    distill.source is ensemble) and extract ``cfg.slices``; returns (net, slices, report)."""
    net = elastic_net(ds, distill, cfg)
    specs = slice_specs(net, cfg)  # before training: a bad slice list fails in seconds, not after it
    t = tensors(ds)
    x, y = t["train"]
    logits = targets.select(sources, x, "elastic")
    ensemble = distill.source == "ensemble"
    t0 = time.time()
    history = train_elastic(net, x, y, cfg, logits, targets, crop_fill(ds), ensemble)
    seconds = time.time() - t0
    slices = extract_slices(net, specs, ds, cfg, t)
    report = {"training_seconds": seconds, "epoch_seconds": [round(h["seconds"], 2) for h in history],
              "epochs": cfg.train.epochs, "largest_epochs": cfg.largest_epochs, "widths": list(net.widths), "max_channels": net.layout(net.largest())[1],
              "source": distill.source, "history": history,
              "slices": {s.name: {k: s.report[k] for k in ("val", "test", "params", "macs", "widths", "depths")}
                         for s in slices}}
    return net, slices, report


def save_slices(out: str | Path, slices: Sequence[Slice], meta: Callable[[Slice], dict[str, Any]]) -> list[Path]:
    """Each slice as an ordinary checkpoint ``out/<name>.pt`` (+ .json: arch, params, val and test metrics);
    the directory appears whole, so it holds this run's slices only."""
    with whole_dir(out) as scratch:
        for s in slices:
            save_checkpoint(scratch / f"{s.name}.pt", s.model, s.arch, meta(s))
    return [Path(out) / f"{s.name}.pt" for s in slices]
