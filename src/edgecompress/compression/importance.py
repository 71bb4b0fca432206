"""Which channels matter: protected layers and channel-importance criteria for structured pruning.

L1/L2 filter norms (torch-pruning's MagnitudeImportance), APoZ (Hu et al. 2016: how often a
channel's post-ReLU activation is zero on a data batch) and first-order Taylor (Molchanov et al.
2019: |w * dL/dw| on a loss batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import EdgeCompressError


def protected_layers(model: nn.Module, protect: tuple[str, ...] = ("last",)) -> list[nn.Module]:
    """The first conv (when ``first`` is listed) and the classifier (always: its outputs are the classes;
    a multi-head student's every head)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    heads = getattr(model, "heads", None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    out = list(heads) if isinstance(heads, nn.ModuleList) else list(linears[-1:])
    if "first" in protect and convs:
        out.append(convs[0])
    return out


def channel_widths(model: nn.Module, protect: tuple[str, ...]) -> dict[str, int]:
    """Output width of every conv and linear layer that pruning may narrow (protected ones keep theirs)."""
    skip = {id(m) for m in protected_layers(model, protect)}
    return {n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip}


def whole_groups(pruner: Any, group: Any, round_to: int) -> Any:
    """``group`` (the channels torch-pruning chose) re-planned so the kept count is a multiple of round_to and
    of the layer's channel groups (GroupNorm groups), removing the least important channel of every group; None
    when that would leave no channel (the layer is then left whole)."""
    dg = pruner.DG
    dep = group[0].dep
    module, fn = dep.target.module, dep.handler
    channels = dg.get_out_channels(module) if dg.is_out_channel_pruning_fn(fn) else dg.get_in_channels(module)
    full = dg.get_pruning_group(module, fn, list(range(channels)))
    n_groups = pruner._get_channel_groups(full)
    step = math.lcm(n_groups, round_to)
    keep = channels - len(group[0].idxs)
    keep -= keep % step
    if keep <= 0:
        # As torch-pruning's own check_pruning_group: a layer that rounding would empty keeps every channel
        # (the achieved-ratio check after the step says so when that moves the total far from the ratio asked).
        return None
    imp = pruner.estimate_importance(full)
    if imp is None:
        return group
    per = channels // n_groups
    drop = imp.view(n_groups, per).mean(dim=0).cpu().argsort()[:per - keep // n_groups]
    return dg.get_pruning_group(module, fn, sorted(torch.cat([drop + g * per for g in range(n_groups)]).tolist()))


class APoZImportance:
    """Average Percentage of Zeros (Hu et al. 2016) of each channel's post-ReLU activations; 1 - APoZ.

    ``measure`` runs a data batch and records, for every conv/linear, the fraction of zero entries per
    *input* channel (the post-ReLU activations it consumes); a linear fed by global pooling uses the
    pooled feature map's zeros instead (a pooled value is rarely exactly zero). A group's score for a
    channel is the mean over the layers in the group that consume it (a depthwise conv consumes the
    channel it outputs). Lower APoZ = more often active = more important.
    """

    def __init__(self) -> None:
        self.apoz: dict[nn.Module, torch.Tensor] = {}

    @torch.no_grad()
    def measure(self, model: nn.Module, x: torch.Tensor) -> None:
        self.apoz.clear()
        last_pool: list[torch.Tensor] = []

        def zeros(inp: torch.Tensor) -> torch.Tensor:
            return (inp == 0).float().mean(dim=(0, 2, 3)) if inp.ndim == 4 else (inp == 0).float().mean(0)

        def pre(m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0]
            if isinstance(m, nn.Linear) and last_pool and last_pool[-1].numel() == m.in_features:
                self.apoz[m] = last_pool.pop()
            elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
                last_pool.append(zeros(inp))
            else:
                self.apoz[m] = zeros(inp)

        types = (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d)
        hooks = [m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, types)]
        try:
            model.eval()(x)
        finally:
            for h in hooks:
                h.remove()

    def __call__(self, group: Any) -> torch.Tensor | None:
        import torch_pruning as tp

        n = len(group[0].idxs)
        total, count = torch.zeros(n), torch.zeros(n)
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.target.module, dep.handler
            depthwise = (isinstance(layer, nn.Conv2d) and fn == tp.prune_conv_out_channels
                         and layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1)
            consumes = fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels) or depthwise
            root = group[i].root_idxs
            if not consumes or layer not in self.apoz or any(r is None for r in root):
                continue
            root_t = torch.as_tensor(root)
            total.scatter_add_(0, root_t, 1.0 - self.apoz[layer][torch.as_tensor(idxs)])
            count.scatter_add_(0, root_t, torch.ones(len(root)))
        if not count.any():
            return None
        return total / count.clamp(min=1)


def channel_importance(criterion: str, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor] | None) -> Any:
    """The torch-pruning importance for ``criterion``, primed on ``batch`` when it needs data."""
    import torch_pruning as tp  # heavy import, only needed here

    if criterion in ("l1", "l2"):
        return tp.importance.MagnitudeImportance(p=1 if criterion == "l1" else 2)
    if batch is None:
        raise EdgeCompressError(f"criterion={criterion!r} scores channels on data: pass a (images, labels) batch")
    x, y = batch
    if criterion == "apoz":
        imp = APoZImportance()
        imp.measure(model, x)
        return imp
    # Taylor (Molchanov et al. 2019): |w * dL/dw| summed per channel; gradients of the label loss
    # on the batch, in eval mode so BN running statistics stay untouched.
    model.eval()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return tp.importance.TaylorImportance()
