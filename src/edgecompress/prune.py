"""Pruning: global magnitude (unstructured) and structured channel removal.

Structured pruning goes through torch-pruning's dependency graph, so a removed pointwise output
channel also removes the matching depthwise filter and BN entries of the next block; the result is
a genuinely smaller dense network (fewer params and MACs, faster on every runtime). Unstructured
magnitude pruning only zeroes weights: dense runtimes run it no faster, and the metrics say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgecompress.errors import EdgeCompressError
from edgecompress.models import count_macs, count_params

METHODS = ("l1_channel", "l2_channel", "magnitude", "none")


@dataclass(frozen=True)
class PruneConfig:
    """How much and how to prune; fine-tuning settings live in the stage's ``finetune`` section."""

    method: str = "l1_channel"  # l1_channel | l2_channel (structured) | magnitude (unstructured) | none
    ratio: float = 0.5  # fraction of channels (structured) or weights (unstructured) removed
    steps: int = 1  # iterative schedule: prune ratio/steps more at each step, fine-tune in between
    round_to: int = 4  # keep channel counts multiples of this (SIMD-friendly widths)
    global_ranking: bool = False  # rank channels across layers instead of per layer

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgeCompressError(f"invalid value method={self.method!r}: allowed {list(METHODS)}")
        if not 0.0 <= self.ratio < 1.0:
            raise EdgeCompressError(f"invalid value ratio={self.ratio!r}: must be within [0, 1)")
        if self.steps < 1:
            raise EdgeCompressError(f"invalid value steps={self.steps!r}: must be >= 1")
        if self.round_to < 1:
            raise EdgeCompressError(f"invalid value round_to={self.round_to!r}: must be >= 1")


def _protected(model: nn.Module) -> list[nn.Module]:
    # The classifier's outputs are the classes: never prune them.
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def prune_channels(model: nn.Module, input_shape: tuple[int, ...], ratio: float, norm: int = 1,
                   round_to: int = 4, global_ranking: bool = False) -> nn.Module:
    """Physically remove ``ratio`` of the prunable channels by L1/L2 filter norm, in place."""
    import torch_pruning as tp  # heavy import, only needed here

    if ratio <= 0:
        return model
    model.eval()
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=norm),
        pruning_ratio=ratio, ignored_layers=_protected(model), round_to=round_to,
        global_pruning=global_ranking)
    pruner.step()
    return model


def prune_magnitude(model: nn.Module, ratio: float) -> nn.Module:
    """Zero the globally smallest ``ratio`` of conv/linear weights (masks made permanent), in place."""
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    for m, name in params:
        torch_prune.remove(m, name)
    return model


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights in conv/linear layers."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)


def step_ratios(cfg: PruneConfig) -> list[float]:
    """Per-step ratios of the *current* model so the cumulative removal reaches ``cfg.ratio``.

    Structured: keeping (1-r)^(1/k) per step compounds to (1-r) after k steps. Unstructured
    global magnitude: the target sparsity rises linearly (torch prunes the cumulative amount).
    """
    k = cfg.steps
    if cfg.method == "magnitude":
        return [cfg.ratio * (i + 1) / k for i in range(k)]
    keep = (1 - cfg.ratio) ** (1 / k)
    return [1 - keep] * k


def prune_step(model: nn.Module, cfg: PruneConfig, ratio: float, input_shape: tuple[int, ...]) -> nn.Module:
    """Apply one pruning step of ``ratio`` with ``cfg.method``."""
    if cfg.method == "none":
        return model
    if cfg.method == "magnitude":
        return prune_magnitude(model, ratio)
    norm = 1 if cfg.method == "l1_channel" else 2
    return prune_channels(model, input_shape, ratio, norm=norm, round_to=cfg.round_to,
                          global_ranking=cfg.global_ranking)


def structure_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Params, MACs, weight sparsity and the non-zero parameter count of ``model``."""
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"params": count_params(model), "nonzero_params": nonzero,
            "macs": count_macs(model, input_shape), "sparsity": sparsity(model)}


def prune_and_finetune(model: nn.Module, teacher: nn.Module | None, ds: Any, cfg: PruneConfig,
                       finetune: Any, temperature: float, alpha: float) -> tuple[nn.Module, dict[str, Any]]:
    """Iterative schedule: ``cfg.steps`` x (prune a step, fine-tune with the KD loss); per-step metrics.

    ``finetune`` is a TrainConfig whose epochs are spent at every step.
    """
    from edgecompress.distill import _fill, tensors
    from edgecompress.train import evaluate, fit, kd_loss

    t = tensors(ds)
    shape = tuple(ds.input_shape)
    before = {**structure_stats(model, shape), "test": evaluate(model, *t["test"])}
    steps: list[dict[str, Any]] = []
    loss = kd_loss(temperature, alpha if teacher is not None else 0.0, finetune.label_smoothing)
    for i, r in enumerate(step_ratios(cfg)):
        prune_step(model, cfg, r, shape)
        pruned_acc = evaluate(model, *t["val"])["accuracy"] if len(t["val"][0]) else None
        if cfg.method == "magnitude":
            # Keep pruned weights at zero while fine-tuning: re-apply the mask after each step.
            masks = {n: (p != 0).float() for n, p in model.named_parameters() if p.ndim > 1}
            hooks = [p.register_hook(lambda g, m=masks[n]: g * m) for n, p in model.named_parameters() if n in masks]
        fit(model, *t["train"], finetune, loss_fn=loss, fill=_fill(ds), val=t["val"],
            name=f"prune step {i + 1}/{cfg.steps}", teacher=teacher)
        if cfg.method == "magnitude":
            for h in hooks:
                h.remove()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in masks:
                        p.mul_(masks[n])
        steps.append({"step": i + 1, "step_ratio": r, **structure_stats(model, shape),
                      "val_accuracy_before_finetune": pruned_acc,
                      "val_accuracy": evaluate(model, *t["val"])["accuracy"] if len(t["val"][0]) else None})
    after = {**structure_stats(model, shape), "test": evaluate(model, *t["test"])}
    report = {"method": cfg.method, "ratio": cfg.ratio, "before": before, "after": after, "steps": steps,
              "params_ratio": after["params"] / before["params"], "macs_ratio": after["macs"] / before["macs"]}
    if cfg.method == "magnitude":
        report["note"] = ("unstructured sparsity: dense runtimes (onnxruntime, LiteRT) run this model no "
                          "faster and store it no smaller; only a sparse encoding shrinks it")
    return model, report
