"""Training loop shared by every stage: supervised, distillation and fine-tuning after pruning.

The whole (normalized) training set lives in one float tensor; Fashion-MNIST is 190 MB that way,
and per-sample augmentation on tensors is far cheaper than a per-image Python data pipeline on 2 cores.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.metrics import classification_metrics
from edgecompress.models import batched, count_macs, count_params, forward_with_features
from edgecompress.training import distributed


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (SGD + Nesterov, one-cycle learning rate)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    crop_pad: int = 2  # random-crop padding in pixels; 0 disables
    flip: bool = True  # horizontal flips (fine for clothes; turn off for digits/text)
    seed: int = 0
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N; checkpoints stay on CPU
    # auto: fp32 on the CPU, bf16 (or fp16) autocast on CUDA | fp32: never autocast | bf16: autocast on CUDA
    # and on CPUs with avx512_bf16/AMX (1.6x faster ResNet steps measured there, but 2x SLOWER depthwise
    # MobileNet steps: the teacher's default, not the students'); fp32 on other CPUs, where bf16 is emulated
    precision: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("crop_pad", self.crop_pad >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise EdgeCompressError(f"invalid value {name}={getattr(self, name)!r}: must be {allowed}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise EdgeCompressError(f"invalid value precision={self.precision!r}: must be auto, fp32 or bf16")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise EdgeCompressError(f"invalid value device={self.device!r}: must be auto, cpu, cuda or cuda:N")


def augment(x: torch.Tensor, pad: int, flip: bool, fill: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero-pixel padding) and horizontal flip of an NCHW batch."""
    n, c, h, w = x.shape
    if pad > 0:
        xp = fill.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
        xp[:, :, pad:pad + h, pad:pad + w] = x
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # n,1,h,1
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # n,1,1,w
        x = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# step_loss(augmented batch, labels, global step, total steps) -> (loss, {part name: float}).
StepLoss = Callable[[torch.Tensor, torch.Tensor, int, int], "tuple[torch.Tensor, dict[str, float]]"]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
        loss_fn: LossFn | None = None, fill: torch.Tensor | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, name: str = "train",
        teacher: nn.Module | None = None, feature_loss: nn.Module | None = None,
        step_loss: StepLoss | None = None, params: list[nn.Parameter] | None = None,
        companions: tuple[nn.Module, ...] = ()) -> list[dict[str, float]]:
    """Train ``model`` in place; returns per-epoch history (loss, lr, val metrics).

    ``loss_fn(student_logits, teacher_logits_or_None, labels)`` defaults to cross-entropy; with a
    ``teacher`` it is evaluated on the same augmented batch so distillation sees matching inputs.
    ``feature_loss`` (a kd_losses.CombinedKDLoss) replaces ``loss_fn`` when distillation also needs
    feature maps; its own parameters (hint adapters) are trained with the model's.

    Schemes the per-sample losses above cannot express (multi-head students, whose loss needs the
    global step for its lambda ramp; deep mutual learning, which trains two networks) pass
    ``step_loss`` instead, with the ``params`` to optimise (default: the model's) and the other
    trained ``companions`` (put in train mode each epoch). Its parts are averaged into the history.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if loss_fn is None:
        loss_fn = lambda s, _t, lab: F.cross_entropy(s, lab, label_smoothing=cfg.label_smoothing)  # noqa: E731
    if fill is None:
        fill = x.amin(dim=(0, 2, 3))
    device = train_device(cfg.device)
    movable = [m for m in (model, *companions, teacher, feature_loss) if m is not None]
    for m in movable:
        m.to(device, memory_format=torch.channels_last)
    if teacher is not None:
        teacher.eval()
    if params is None:
        params = list(model.parameters()) + (list(feature_loss.parameters()) if feature_loss is not None else [])
    if step_loss is None:
        step_loss = batch_loss(model, loss_fn, teacher, feature_loss)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    opt, sched = make_optimizer(params, cfg, steps_per_epoch)
    autocast, scaler = mixed_precision(device, cfg.precision)
    rank, processes = distributed.world()
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        _freeze_frozen_batchnorm(model)
        if feature_loss is not None:
            feature_loss.train()
        for c in companions:
            c.train()
        t0 = time.time()
        perm = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a part some steps leave out (elastic.smallest_every) averages over its own
        bar = progress(steps_per_epoch, f"[{name}] epoch {epoch + 1}/{cfg.epochs}", quiet=rank > 0)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if processes > 1 and len(idx) >= processes:  # under torchrun: this process's shard of the batch
                idx = idx[rank::processes]
            xb = augment(x[idx], cfg.crop_pad, cfg.flip, fill, gen).to(device, non_blocking=True)
            xb, yb = xb.contiguous(memory_format=torch.channels_last), y[idx].to(device, non_blocking=True)
            with autocast():
                loss, parts = step_loss(xb, yb, step, total_steps)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
                counts[k] = counts.get(k, 0) + len(idx)
            if not torch.isfinite(loss):
                raise EdgeCompressError(f"{name}: loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if processes > 1:
                distributed.average_gradients(params)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            total += loss.item() * len(idx)
            seen += len(idx)
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        bar.close()
        if processes > 1:
            distributed.average_buffers(model)
            total, seen = distributed.sum_over_processes(total, seen)
        row = {"epoch": epoch + 1, "loss": total / seen, "lr": opt.param_groups[0]["lr"],
               **{k: v / counts[k] for k, v in sums.items()}, "seconds": time.time() - t0}
        if val is not None and len(val[0]):
            row["val_accuracy"] = evaluate(model, val[0].to(device), val[1])["accuracy"]
        history.append(row)
        msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        if rank == 0:
            get_logger(name).info(msg)
    for m in movable:  # everything after training (evaluation, checkpoints, export) runs on the CPU
        m.to("cpu")
    model.eval()
    return history


def batch_loss(model: nn.Module, loss_fn: LossFn, teacher: nn.Module | None = None,
               feature_loss: nn.Module | None = None) -> StepLoss:
    """The step loss of a per-sample scheme: ``loss_fn`` on the model's (and teacher's) logits, or
    ``feature_loss`` on logits and feature maps; the teacher sees the same augmented batch."""

    def step(xb: torch.Tensor, yb: torch.Tensor, _step: int, _total: int) -> tuple[torch.Tensor, dict[str, float]]:
        if feature_loss is not None:
            s_logits, s_feat = forward_with_features(model, xb)
            with torch.no_grad():
                t_logits, t_feat = forward_with_features(teacher, xb) if teacher is not None else (None, None)
            return feature_loss(s_logits, s_feat, t_logits, t_feat, yb)[0], {}
        t_logits = None
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(xb)
        return loss_fn(model(xb), t_logits, yb), {}

    return step


def train_device(name: str) -> torch.device:
    """The device ``TrainConfig.device`` names; ``auto`` is CUDA when PyTorch sees a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeCompressError(f"train.device is {name!r} but PyTorch sees no CUDA GPU (this torch is "
                                f"{torch.__version__}); set device: auto or cpu, or install a CUDA build of torch")
    return torch.device(name)


def mixed_precision(device: torch.device, precision: str = "auto") -> tuple[Callable[[], Any], Any]:
    """(autocast context factory, gradient scaler) for ``device`` and ``TrainConfig.precision``.

    auto: bf16 (or fp16 with loss scaling) on CUDA, full fp32 on the CPU (a scaler that does nothing,
    so CPU runs stay bit for bit as before); fp32: never; bf16: bf16 autocast on CUDA and on CPUs with
    native bf16 (avx512_bf16 or AMX). On any other CPU bf16 is emulated, 9x SLOWER than fp32 for the
    teacher's step (an AVX2 EPYC: 3.6 s against 0.39 s a batch of 128), which would turn a 40-minute
    ``dvc repro`` into hours; bf16 is asked for speed, so such a CPU trains in fp32 and says so.
    """
    precision = precision_that_runs(device, precision, warn=True)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext, torch.amp.GradScaler("cpu", enabled=False)
    if precision == "bf16":
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), torch.amp.GradScaler("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype),
            torch.amp.GradScaler("cuda", enabled=dtype == torch.float16))


def precision_that_runs(device: torch.device, precision: str, warn: bool = False) -> str:
    """``precision`` as it runs on ``device``: bf16 on a CPU without native bf16 becomes fp32 (``warn``: say so)."""
    if precision == "bf16" and device.type == "cpu" and not _native_cpu_bf16():
        if warn:
            get_logger("train").warning("precision bf16: this CPU has no native bf16 (avx512_bf16 or AMX), where it "
                                        "runs ~9x slower than fp32, so this run uses fp32 (its numbers differ "
                                        "slightly from a bf16 machine's); set precision: fp32 to silence this")
        return "fp32"
    return precision


def _native_cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN: assume emulated
        return False


def progress(total: int, desc: str, quiet: bool = False) -> Any:
    """A per-epoch progress bar (batches, rate, ETA) on a terminal; silent in logs and under dvc's capture,
    where the one line per epoch says the same."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """SGD with Nesterov momentum and a one-cycle schedule over the trainable ``params``."""
    decay, no_decay = [], []
    for p in (p for p in params if p.requires_grad):
        # BN and bias parameters are not weight-decayed: decaying them only hurts small nets.
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.15)
    return opt, sched


def _freeze_frozen_batchnorm(model: nn.Module) -> None:
    # A frozen block (transfer learning) must keep its BN statistics too, not only its weights.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Logits of ``model`` on ``x`` in eval mode."""
    model.eval()
    return batched(model, x, batch_size).cpu().numpy() if len(x) else np.zeros((0, 0), np.float32)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and calibration metrics of ``model`` on (x, y)."""
    logits = predict_logits(model, x)
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    return classification_metrics(probs, y.numpy())


Tensors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def tensors(ds: Dataset) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Normalized float tensors for each split."""
    return {name: (ds.to_tensor(s.x), torch.from_numpy(s.y)) for name, s in
            (("train", ds.train), ("val", ds.val), ("test", ds.test))}


def model_report(model: nn.Module, ds: Dataset, t: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Test/val metrics plus size of ``model``."""
    shape = tuple(ds.input_shape)
    return {"test": evaluate(model, *t["test"]), "val": evaluate(model, *t["val"]) if len(t["val"][0]) else None,
            "params": count_params(model), "macs": count_macs(model, shape)}


def crop_fill(ds: Dataset) -> torch.Tensor:
    # Padding value for random crops = a black pixel after normalization.
    return torch.tensor([(0.0 - m) / s for m, s in zip(ds.mean, ds.std)], dtype=torch.float32)
