"""Early-exit networks (BranchyNet, Teerapittayanon et al. 2016): side classifiers after chosen blocks.

An ``EarlyExitNet`` wraps a trained backbone (our MobileNetStudent or ResNetTeacher, or any module with
a ``stem``, an ``nn.Sequential`` body named ``blocks``/``stages``/``features``, a ``pool`` and a Linear
``fc``) and attaches an ``ExitHead`` after each block in ``exits``. At inference an image leaves at the
first exit whose max softmax probability reaches that exit's threshold (``cascade_predict``); the
thresholds are chosen on the validation split (``choose_thresholds``).

Training (``train_early_exit``) fine-tunes the heads and the backbone jointly, every exit distilled
from the teacher (Hinton KD + CE), starting from the backbone's trained weights, so it is cheap.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.metrics import softmax
from edgecompress.models import count_macs, count_params
from edgecompress.training.loop import TrainConfig, crop_fill, fit, tensors
from edgecompress.training.losses import kd_loss

BODY_NAMES = ("blocks", "stages", "features")  # MobileNetStudent, ResNetTeacher, torchvision-style
EXIT_MODELS = ("teacher", "student", "pruned")  # the chain's checkpoints the early_exit stage can extend


@dataclass(frozen=True)
class EarlyExitConfig:
    """Where the exits go, what they look like, and how they are fine-tuned."""

    exits: tuple[int, ...] = (1, 3)  # 0-based body block indices; a head reads that block's output
    head_conv: int = 0  # > 0: a 1x1 conv (+BN+ReLU) to this many channels before pooling; 0: pool + Linear
    # Loss weight of each early exit, then of the final exit; None: all 1 (BranchyNet's equal weighting).
    weights: tuple[float, ...] | None = None
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target term at every exit; 1 - alpha on the labels
    # true: only the heads learn (the final exit stays exactly the backbone it wraps); false: joint fine-tune.
    freeze_backbone: bool = False
    train_samples: int | None = None  # fine-tune on a seeded subset of this many training images; None: all
    # The early_exit stage: which of the chain's models get exits (teacher | student | pruned; each becomes
    # the pool model <name>-ee, exported as cascades), and the validation accuracy the thresholds may give up.
    models: tuple[str, ...] = ()
    max_drop: float = 0.1  # accuracy points below the final exit, on the validation split
    # A fine-tune of trained weights: a short schedule with a learning rate well below training from scratch.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=0.01, weight_decay=1e-4))

    def __post_init__(self) -> None:
        exits = self.exits
        if isinstance(exits, (str, bytes)) or not isinstance(exits, (list, tuple)) or not exits:
            raise EdgeCompressError(f"invalid value exits={exits!r}: must be a non-empty list of block indices")
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in exits):
            raise EdgeCompressError(f"invalid value exits={list(exits)}: block indices must be integers >= 0")
        if any(b <= a for a, b in zip(exits, exits[1:])):
            raise EdgeCompressError(f"invalid value exits={list(exits)}: must be strictly increasing")
        object.__setattr__(self, "exits", tuple(exits))
        if isinstance(self.head_conv, bool) or not isinstance(self.head_conv, int) or self.head_conv < 0:
            raise EdgeCompressError(f"invalid value head_conv={self.head_conv!r}: must be an integer >= 0")
        if self.weights is not None:
            w = tuple(self.weights)
            if len(w) != len(exits) + 1:
                raise EdgeCompressError(f"invalid value weights={list(w)}: needs {len(exits) + 1} entries "
                                        f"(one per early exit, then the final exit)")
            if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in w) or sum(w) <= 0:
                raise EdgeCompressError(f"invalid value weights={list(w)}: must be numbers >= 0 with a positive sum")
            object.__setattr__(self, "weights", w)
        if not self.temperature > 0:
            raise EdgeCompressError(f"invalid value temperature={self.temperature!r}: must be > 0")
        if not 0 <= self.alpha <= 1:
            raise EdgeCompressError(f"invalid value alpha={self.alpha!r}: must be within [0, 1]")
        bad = [m for m in self.models if m not in EXIT_MODELS]
        if isinstance(self.models, str) or bad:
            raise EdgeCompressError(f"invalid value models={self.models!r}: a list among {list(EXIT_MODELS)}")
        object.__setattr__(self, "models", tuple(self.models))
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or self.max_drop < 0:
            raise EdgeCompressError(f"invalid value max_drop={self.max_drop!r}: accuracy points, a number >= 0")
        if self.train_samples is not None and (isinstance(self.train_samples, bool)
                                               or not isinstance(self.train_samples, int) or self.train_samples < 1):
            raise EdgeCompressError(f"invalid value train_samples={self.train_samples!r}: must be an integer >= 1 "
                                    f"or null (all)")

    @property
    def loss_weights(self) -> tuple[float, ...]:
        """One weight per exit, the final last."""
        return self.weights if self.weights is not None else (1.0,) * (len(self.exits) + 1)


class ExitHead(nn.Module):
    """Global average pool + Linear, optionally after a 1x1 conv + BN + ReLU (cheap, so exiting pays)."""

    def __init__(self, cin: int, num_classes: int, conv: int = 0) -> None:
        super().__init__()
        self.conv: nn.Module = nn.Identity()
        if conv:
            self.conv = nn.Sequential(nn.Conv2d(cin, conv, 1, bias=False), nn.BatchNorm2d(conv), nn.ReLU(inplace=True))
        self.fc = nn.Linear(conv or cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1))


def _body(backbone: nn.Module) -> nn.Sequential:
    for name in BODY_NAMES:
        body = getattr(backbone, name, None)
        if isinstance(body, nn.Sequential):
            return body
    raise EdgeCompressError(f"EarlyExitNet needs a backbone whose body is an nn.Sequential named one of "
                            f"{list(BODY_NAMES)} (followed by pool and a Linear fc); {type(backbone).__name__} has none")


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    # A residual block's last conv-like module may be its shortcut; the output width is the same.
    if not convs:
        raise EdgeCompressError(f"cannot tell the output channels of block {type(block).__name__} (no Conv2d)")
    return bns[-1].num_features if bns else convs[-1].out_channels


class EarlyExitNet(nn.Module):
    """A backbone with exit heads after body blocks ``exits``.

    ``forward`` is the backbone's own forward (final logits; the heads do not run), so the net exports,
    evaluates and prunes like the backbone; ``forward_exits`` returns every exit's logits, final last.
    Segment k (``segment_forward``) runs the blocks between exit k-1 and exit k: what the cascade exports.
    """

    def __init__(self, backbone: nn.Module, exits: Sequence[int], head_conv: int = 0) -> None:
        super().__init__()
        body = _body(backbone)
        fc = getattr(backbone, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise EdgeCompressError(f"EarlyExitNet needs a backbone ending in a Linear .fc; "
                                    f"{type(backbone).__name__}.fc is {type(fc).__name__}")
        exits = [int(e) for e in exits]
        if not exits or any(b <= a for a, b in zip(exits, exits[1:])) or exits[0] < 0 or exits[-1] >= len(body) - 1:
            raise EdgeCompressError(f"invalid value exits={exits}: must be strictly increasing block indices in "
                                    f"[0, {len(body) - 2}] ({type(backbone).__name__} has {len(body)} blocks; an exit "
                                    f"after the last one would duplicate the final classifier)")
        self.backbone = backbone
        self.exits = exits
        self.head_conv = head_conv
        self.heads = nn.ModuleList(ExitHead(_out_channels(body[e]), fc.out_features, head_conv) for e in exits)

    @property
    def body(self) -> nn.Sequential:
        return _body(self.backbone)

    @property
    def num_segments(self) -> int:
        return len(self.exits) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def _bounds(self, k: int) -> tuple[int, int]:
        ends = [e + 1 for e in self.exits] + [len(self.body)]
        return (0 if k == 0 else ends[k - 1]), ends[k]

    def segment_forward(self, k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Segment ``k`` on its input (the image for k = 0, else segment k-1's feature map):
        (exit k's logits, the feature map for segment k+1; None for the last segment)."""
        if not 0 <= k < self.num_segments:
            raise EdgeCompressError(f"segment {k} does not exist: this net has {self.num_segments} segments")
        start, end = self._bounds(k)
        if k == 0:
            stem = getattr(self.backbone, "stem", None)
            h = stem(h) if stem is not None else h
        for block in self.body[start:end]:
            h = block(h)
        if k < len(self.exits):
            return self.heads[k](h), h
        bb = self.backbone
        pooled = torch.flatten(bb.pool(h) if hasattr(bb, "pool") else F.adaptive_avg_pool2d(h, 1), 1)
        dropout = getattr(bb, "dropout", None)
        return bb.fc(dropout(pooled) if dropout is not None else pooled), None

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits (N, C), in order, the final exit last."""
        outs, h = [], x
        for k in range(self.num_segments):
            logits, h = self.segment_forward(k, h)  # type: ignore[assignment]
            outs.append(logits)
        return outs


@torch.no_grad()
def exit_probabilities(net: EarlyExitNet, x: torch.Tensor, batch_size: int = 1000) -> list[np.ndarray]:
    """Softmax probabilities (N, C) of every exit on normalized ``x``, in eval mode, final last."""
    net.eval()
    per_batch = [net.forward_exits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return [softmax(torch.cat([b[k] for b in per_batch]).double().numpy()) for k in range(net.num_segments)]


def train_early_exit(model: nn.Module, teacher: nn.Module | None, ds: Dataset, cfg: EarlyExitConfig,
                     name: str = "early-exit") -> tuple[EarlyExitNet, dict[str, Any]]:
    """Fine-tune exits (and the backbone unless ``cfg.freeze_backbone``) of a trained ``model``.

    ``model`` is a backbone (a copy is wrapped; the caller's weights are not touched) or an EarlyExitNet.
    Loss: sum_k w_k * [alpha * T^2 KL(teacher || exit k) + (1 - alpha) * CE] / sum_k w_k, every exit on
    the same augmented batch. ``teacher`` None distils from the net's own final exit (detached; with a
    frozen backbone that is the backbone's prediction, and saves running a second network).
    Returns (net, report with per-exit val/test accuracy, MACs to each exit and the history).
    """
    if isinstance(model, EarlyExitNet):
        if list(model.exits) != list(cfg.exits):
            raise EdgeCompressError(f"the EarlyExitNet has exits {model.exits} but the config says {list(cfg.exits)}")
        net = copy.deepcopy(model)
    else:
        torch.manual_seed(cfg.train.seed)  # seeded head initialisation: the same config gives the same net
        net = EarlyExitNet(copy.deepcopy(model), cfg.exits, cfg.head_conv)
    for p in net.backbone.parameters():
        p.requires_grad_(not cfg.freeze_backbone)
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    t = tensors(ds)
    x, y = t["train"]
    if cfg.train_samples is not None and cfg.train_samples < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.train.seed))[:cfg.train_samples]
        x, y = x[idx], y[idx]
    loss = kd_loss(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)
    weights = cfg.loss_weights
    total_w = float(sum(weights))

    def step_loss(xb: torch.Tensor, yb: torch.Tensor, _s: int, _n: int) -> tuple[torch.Tensor, dict[str, float]]:
        outs = net.forward_exits(xb)
        with torch.no_grad():
            target = teacher(xb) if teacher is not None else outs[-1].detach()
        parts = [loss(o, target, yb) for o in outs]
        total = sum(w * p for w, p in zip(weights, parts)) / total_w
        return total, {f"exit{k}_loss": float(p.detach()) for k, p in enumerate(parts)}  # type: ignore[return-value]

    t0 = time.time()
    params = [p for p in net.parameters() if p.requires_grad]
    history = fit(net, x, y, cfg.train, fill=crop_fill(ds), val=None, name=name, teacher=teacher,
                  step_loss=step_loss, params=params)
    net.eval()
    report = {"exits": list(net.exits), "train_samples": int(len(x)), "seconds": time.time() - t0,
              "history": history, **exit_report(net, ds.input_shape, t)}
    return net, report


def exit_report(net: EarlyExitNet, input_shape: Sequence[int], t: dict[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, Any]:
    """Per-exit accuracy on val and test, and the MACs (and parameters) an image costs to reach each exit."""
    rep: dict[str, Any] = {}
    for split in ("val", "test"):
        xs, ys = t[split]
        if len(xs):
            rep[f"{split}_accuracy"] = [float((p.argmax(1) == ys.numpy()).mean()) for p in exit_probabilities(net, xs)]
    macs, shape, total = [], tuple(input_shape), 0
    for k in range(net.num_segments):
        seg = SegmentModule(net, k)
        total += count_macs(seg, shape) or 0
        macs.append(total)
        with torch.no_grad():
            feat = seg.eval()(torch.zeros(1, *shape))
        if k < net.num_segments - 1:
            shape = tuple(feat[1].shape[1:])
    rep["macs_to_exit"] = macs
    rep["params"] = count_params(net)
    return rep


class SegmentModule(nn.Module):
    """Segment ``k`` of ``net`` as a module: ``forward(h) -> (logits, feature map or None)``."""

    def __init__(self, net: EarlyExitNet, k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, h: torch.Tensor) -> Any:
        return self.net.segment_forward(self.k, h)


@dataclass(frozen=True)
class ThresholdChoice:
    """Confidence thresholds (math.inf: never exit there) and what they do on the validation split."""

    thresholds: tuple[float, ...]  # one per early exit
    exit_fractions: tuple[float, ...]  # one per exit, the final last; sums to 1
    accuracy: float  # the cascade's validation accuracy
    final_accuracy: float  # the final exit's validation accuracy
    max_drop: float  # the bound, in accuracy points

    def as_dict(self) -> dict[str, Any]:
        return {"thresholds": [None if math.isinf(v) else v for v in self.thresholds],
                "val_exit_fractions": list(self.exit_fractions), "val_accuracy": self.accuracy,
                "val_final_accuracy": self.final_accuracy, "max_drop_points": self.max_drop}


def cascade_predict(exit_probs: Sequence[np.ndarray], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, exit index) per sample: the first exit k whose max probability >= thresholds[k];
    samples confident nowhere leave at the final exit. (The standalone runner repeats this rule.)"""
    if len(thresholds) != len(exit_probs) - 1:
        raise EdgeCompressError(f"{len(exit_probs)} exits need {len(exit_probs) - 1} thresholds, got {len(thresholds)}")
    n = len(exit_probs[-1])
    exit_idx = np.full(n, len(exit_probs) - 1, np.int64)
    pending = np.ones(n, bool)
    for k, thr in enumerate(thresholds):
        leave = pending & (exit_probs[k].max(1) >= thr)
        exit_idx[leave] = k
        pending &= ~leave
    stacked = np.stack([p.argmax(1) for p in exit_probs])  # (exits, N)
    return stacked[exit_idx, np.arange(n)], exit_idx


def choose_thresholds(exit_probs_val: Sequence[np.ndarray], y_val: np.ndarray, max_drop: float) -> ThresholdChoice:
    """Thresholds from VALIDATION probabilities: the cascade stays within ``max_drop`` accuracy points
    of the final exit, and exits as early as it can.

    Greedy, exit by exit from the first: exit k takes the lowest threshold (among the confidences of the
    samples still undecided there, or "never") for which the whole cascade, with exits 0..k at their
    chosen thresholds and every sample not yet out sent to the final exit, keeps
    accuracy >= final accuracy - max_drop / 100. "Never" always qualifies (it leaves the cascade as it
    was), so the bound holds on validation by construction; later exits only see what earlier ones left.
    """
    if not max_drop >= 0:
        raise EdgeCompressError(f"invalid value max_drop={max_drop!r}: must be >= 0 accuracy points")
    if len(exit_probs_val) < 2:
        raise EdgeCompressError("choose_thresholds needs at least one early exit and the final exit")
    y = np.asarray(y_val)
    n = len(y)
    if not n or any(len(p) != n for p in exit_probs_val):
        raise EdgeCompressError(f"every exit needs probabilities for the {n} validation labels (and n > 0)")
    correct = [p.argmax(1) == y for p in exit_probs_val]
    final_correct = int(correct[-1].sum())
    # Integer counts with a small slack, so a float bound like 0.3 points is not lost to rounding.
    allowed = final_correct - max_drop / 100.0 * n - 1e-9
    decided_correct = 0  # correct predictions among samples that already left at an earlier exit
    pending = np.ones(n, bool)
    thresholds: list[float] = []
    fractions: list[float] = []
    for k in range(len(exit_probs_val) - 1):
        idx = np.flatnonzero(pending)
        conf = exit_probs_val[k][idx].max(1)
        order = np.argsort(-conf, kind="stable")
        conf_sorted, here, final = conf[order], correct[k][idx][order], correct[-1][idx][order]
        # Taking the top j (by confidence) out here: correct = decided + here[:j] + final[j:].
        acc_if = decided_correct + np.concatenate([[0], np.cumsum(here)]) + (
            final.sum() - np.concatenate([[0], np.cumsum(final)]))
        # A threshold can only cut between distinct confidences: j must include every tie of conf[j-1].
        valid = np.ones(len(idx) + 1, bool)
        valid[1:-1] = conf_sorted[1:] < conf_sorted[:-1]
        ok = np.flatnonzero(valid & (acc_if >= allowed))
        j = int(ok.max())  # 0 (never) is always ok: the cascade as it was
        thr = math.inf if j == 0 else float(conf_sorted[j - 1])
        thresholds.append(thr)
        leave = idx[order[:j]]
        decided_correct += int(correct[k][leave].sum())
        pending[leave] = False
        fractions.append(j / n)
    fractions.append(float(pending.mean()))
    pred, _ = cascade_predict(exit_probs_val, thresholds)
    return ThresholdChoice(tuple(thresholds), tuple(fractions), float((pred == y).mean()),
                           final_correct / n, float(max_drop))


def thresholds_on_val(net: EarlyExitNet, ds: Dataset, max_drop: float) -> ThresholdChoice:
    """``choose_thresholds`` on ``ds``'s validation split (never the test split, which reports the result)."""
    if not len(ds.val):
        raise EdgeCompressError("choosing exit thresholds needs a validation split: set data.val_fraction > 0")
    return choose_thresholds(exit_probabilities(net, ds.to_tensor(ds.val.x)), ds.val.y, max_drop)

