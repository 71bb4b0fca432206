"""Stored soft targets (FKD, Shen & Xing 2022): the teachers' logits on a fixed set of augmented views
of every training image, computed once and replayed to every student that learns from those teachers.

Online distillation runs the teacher, or all M ensemble members, on every student batch: epochs x N x M
forward passes, and again for every later student (the baseline's comparison, each prune fine-tune).
Here the members see V views of each image once (V x N x M passes, V well below the epochs); in every
epoch each image reaches the student as one of its V views, drawn at random, with the logits stored for
that view. The views are ``loop.augment``'s random crops and flips regenerated from the stored seed, so
the file holds only the logits and what they are valid for (a hash of each member's weights and of
the training images): a file made for other teachers or data is refused, never silently replayed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path, read_npz
from edgecompress.log import get_logger
from edgecompress.models import batched
from edgecompress.training import distributed
from edgecompress.training.loop import LossFn, TrainConfig, augment, fit, mixed_precision, train_device

# loss(model, views batch, member logits (M, B, C), labels, step, total) -> (loss, {part: float})
TargetLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int, int],
                      "tuple[torch.Tensor, dict[str, float]]"]


def response(loss_fn: LossFn, ensemble: bool) -> TargetLoss:
    """A per-sample KD loss as a TargetLoss: on all members' logits (``ensemble``) or on member 0's."""

    def loss(model: nn.Module, xb: torch.Tensor, t: torch.Tensor, yb: torch.Tensor,
             _step: int, _total: int) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_fn(model(xb), t if ensemble else t[0], yb), {}

    return loss


@dataclass(frozen=True)
class SoftTargets:
    """Member m's logits on view v of training image n, and how to regenerate the views."""

    logits: torch.Tensor  # (V, M, N, C) float32
    seed: int  # the views' random crops and flips derive from it
    pad: int
    flip: bool
    member_keys: tuple[str, ...]  # weights hash of each member, in order (member 0: the teacher)
    data_key: str  # hash of the (normalised) training images

    @property
    def views(self) -> int:
        """0 for a file that stores nothing (``views: 0``: online distillation)."""
        return int(self.logits.shape[0])

    def fits(self, cfg: TrainConfig) -> bool:
        """Whether a run that trains with ``cfg``'s augmentation can replay these views."""
        return self.views > 0 and (self.pad, self.flip) == (cfg.crop_pad, cfg.flip)

    def select(self, members: Sequence[nn.Module], x: torch.Tensor, what: str) -> torch.Tensor:
        """The stored logits (V, M', N, C) of ``members`` (a prefix of the stored ones) on ``x``; a
        clear error when they were computed for other weights or images."""
        if data_key(x) != self.data_key:
            raise EdgeCompressError(f"{what}: the stored soft targets were computed on other training images "
                                    f"(data params changed?); re-run the distill stage (dvc repro distill)")
        keys = tuple(weights_key(m) for m in members)
        if keys != self.member_keys[:len(keys)]:
            raise EdgeCompressError(f"{what}: the stored soft targets were computed for other teacher weights; "
                                    f"re-run the distill stage (dvc repro distill)")
        return self.logits[:, :len(keys)]


def weights_key(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def data_key(x: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(x.shape)).encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def view(x: torch.Tensor, seed: int, v: int, pad: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """View ``v`` of every image of ``x``: the one place that says which crops and flips it holds."""
    return augment(x, pad, flip, fill, torch.Generator().manual_seed(seed * 1000 + v))


def view_images(x: torch.Tensor, seed: int, views: int, pad: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """All V augmented views of ``x`` stacked view-major: row ``v * N + n`` is view v of image n."""
    return torch.cat([view(x, seed, v, pad, flip, fill) for v in range(views)])


@torch.no_grad()
def compute_soft_targets(members: Sequence[nn.Module], x: torch.Tensor, fill: torch.Tensor, views: int,
                         cfg: TrainConfig, batch_size: int = 500) -> SoftTargets:
    """Every member's logits on ``views`` augmented views of ``x`` (crops and flips as ``cfg`` trains
    with), on ``cfg``'s device and precision, as online distillation would have computed them."""
    if views < 1 or not members:
        raise EdgeCompressError(f"soft targets need views >= 1 and at least one member (got {views}, {len(members)})")
    device = train_device(cfg.device)
    autocast, _ = mixed_precision(device, cfg.precision)
    rows = []
    t0 = time.time()
    for v in range(views):
        xv = view(x, cfg.seed, v, cfg.crop_pad, cfg.flip, fill)
        per_member = []
        for m in members:
            m.eval().to(device, memory_format=torch.channels_last)
            with autocast():
                per_member.append(batched(lambda b: m(b.to(device).contiguous(memory_format=torch.channels_last))
                                          .float().cpu(), xv, batch_size))
            m.to("cpu")
        rows.append(torch.stack(per_member))
        if distributed.world()[0] == 0:
            get_logger("soft-targets").info(f"view {v + 1}/{views}: {len(members)} x {len(x)} forward passes, "
                                            f"{time.time() - t0:.0f} s so far")
    out = torch.stack(rows)
    return SoftTargets(out, cfg.seed, cfg.crop_pad, cfg.flip, tuple(weights_key(m) for m in members), data_key(x))


def no_soft_targets(members: Sequence[nn.Module], x: torch.Tensor, cfg: TrainConfig) -> SoftTargets:
    """An empty store (zero views): what the distill stage writes when it distils online."""
    return SoftTargets(torch.zeros(0, len(members), len(x), 0), cfg.seed, cfg.crop_pad, cfg.flip,
                       tuple(weights_key(m) for m in members), data_key(x))


def save_soft_targets(path: str | Path, st: SoftTargets) -> None:
    """An .npz (no pickles): the logits and a JSON header of what they are valid for."""
    header = {"format": "edgecompress-soft-targets", "version": 1, "seed": st.seed, "pad": st.pad,
              "flip": st.flip, "member_keys": list(st.member_keys), "data_key": st.data_key}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, logits=st.logits.numpy(), header=np.array(json.dumps(header)))


def load_soft_targets(path: str | Path) -> SoftTargets:
    fix = "re-run the distill stage (dvc repro distill)"
    z = read_npz(path, ("logits", "header"), "soft targets", fix)
    try:
        h = json.loads(str(z["header"]))
        assert h["format"] == "edgecompress-soft-targets" and h["version"] == 1
        logits = torch.from_numpy(np.ascontiguousarray(z["logits"], dtype=np.float32))
        assert logits.ndim == 4
        return SoftTargets(logits, int(h["seed"]), int(h["pad"]), bool(h["flip"]),
                           tuple(h["member_keys"]), str(h["data_key"]))
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise EdgeCompressError(f"soft targets {path} have no valid header ({type(e).__name__}: {e}); {fix}") from None


def fit_on_soft_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                        logits: torch.Tensor, st: SoftTargets, loss: TargetLoss, fill: torch.Tensor,
                        **fit_kw: object) -> list[dict[str, float]]:
    """``fit`` with stored targets: fit still draws the batches (its order, torchrun sharding and
    schedule, from ``cfg``); the step loss swaps each image for a random one of its stored views and
    hands ``loss`` the members' ``logits`` (V, M, N, C) for exactly that view."""
    n = len(x)
    if logits.shape[2] != n:
        raise EdgeCompressError(f"soft targets hold {logits.shape[2]} images, the training split {n}")
    images = view_images(x, st.seed, st.views, st.pad, st.flip, fill)
    pick = torch.Generator().manual_seed(cfg.seed)

    def step_loss(xb: torch.Tensor, ib: torch.Tensor, step: int, total: int) -> tuple[torch.Tensor, dict[str, float]]:
        ib = ib.cpu()
        v = torch.randint(0, st.views, (len(ib),), generator=pick)
        xv = images[v * n + ib].to(xb.device).contiguous(memory_format=torch.channels_last)
        t = logits[v, :, ib].transpose(0, 1).to(xb.device)  # (M, B, C)
        return loss(model, xv, t, y[ib].to(xb.device), step, total)

    # The batches fit draws are indices; the views carry the augmentation, so fit adds none.
    plain = replace(cfg, crop_pad=0, flip=False)
    return fit(model, x, torch.arange(n), plain, fill=fill, step_loss=step_loss, **fit_kw)  # type: ignore[arg-type]
