"""The elastic (once-for-all) MobileNet: one max-width network whose sub-networks share its weights.

A sub-network (``SubnetSpec``) picks a width multiplier per stage and, optionally, fewer blocks per
stage. It runs the first k output channels (and the first k input channels) of every convolution,
BatchNorm and the classifier of the max-width network: the slicing of slimmable networks (Yu et al.
2019) and once-for-all's elastic width and depth (Cai et al. 2020). The max-width network itself is
an ordinary ``MobileNetStudent``; ``extract`` copies a sub-network's slices into an ordinary
``MobileNetStudent`` (a ``build_model`` arch dict), so a slice is a checkpoint like any other student.

Stages: the stem is stage 0; then each stride-2 block starts a new stage (the blocks of a stage run
at one resolution). Widths are relative to ``base`` (today's student's channels): width 1.0 is today's
student exactly, other widths round to multiples of 4 as ``models.student_channels`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent, arch_of


@dataclass(frozen=True)
class SubnetSpec:
    """One sub-network: a width multiplier per stage (stem first) and the blocks kept per block stage."""

    widths: tuple[float, ...]
    depths: tuple[int, ...]



def block_stages(strides: Sequence[int]) -> list[list[int]]:
    """Block indices grouped by stage: a stride-2 block (or the first block) starts a stage."""
    groups: list[list[int]] = []
    for i, s in enumerate(strides):
        if not groups or s != 1:
            groups.append([])
        groups[-1].append(i)
    return groups


def scaled(c: int, width: float) -> int:
    """``c`` channels at ``width``, in multiples of 4 and at least 4 (``models.student_channels``' rounding)."""
    return max(4, int(round(c * width / 4)) * 4)


class ElasticMobileNet(nn.Module):
    """A ``MobileNetStudent`` at the widest width (``net``) run as any of its sub-networks.

    ``forward`` runs the sub-network ``active`` (set it, or use ``run(x, spec)``). BatchNorm shares one
    set of parameters and running statistics across widths (``private_bn`` false), so a slice's
    statistics are recalibrated after extraction (``recalibrate_bn``) as once-for-all and universally
    slimmable networks do; with ``private_bn`` every layer keeps its own BatchNorm (scale, shift and
    statistics) per channel count it runs at: switchable BatchNorm (Yu et al. 2019, slimmable networks),
    a few hundred parameters per width that let each width normalise its features its own way.
    """

    def __init__(self, in_channels: int, num_classes: int, base: Sequence[int], strides: Sequence[int],
                 widths: Sequence[float], dropout: float = 0.0, private_bn: bool = False) -> None:
        super().__init__()
        if len(base) != len(strides) + 1:
            raise EdgeCompressError(f"base channels has {len(base)} entries, expected len(strides)+1 = {len(strides) + 1}")
        if not widths or min(widths) <= 0:
            raise EdgeCompressError(f"elastic widths must be a non-empty list of numbers > 0, got {list(widths)}")
        self.base, self.strides = list(base), list(strides)
        self.widths = tuple(sorted(set(widths)))
        self.stages = block_stages(self.strides)
        self.min_depths = tuple(self._min_depth(g) for g in self.stages)
        top = max(self.widths)
        self.net = MobileNetStudent(in_channels, num_classes, [scaled(c, top) for c in self.base], self.strides, dropout)
        # Private BatchNorms, keyed "<layer>:<channels>" for every narrower channel count a layer can run at
        # (the widest runs on the network's own BatchNorm, so the largest slice is the plain network).
        self.private_bn = nn.ModuleDict()
        if private_bn:
            layers = self.bn_layers()
            for w in self.widths[:-1]:  # a layer's channel counts: those of every width (a depthwise: its input's)
                ch = self.layout(self.spec(w))[1]
                counts = {"stem": ch[0]} | {f"b{i}{part}": ch[i + (part == "pw")] for i in range(len(self.strides))
                                            for part in ("dw", "pw")}
                for layer, c in counts.items():
                    if c != layers[layer][1].num_features and f"{layer}:{c}" not in self.private_bn:
                        self.private_bn[f"{layer}:{c}"] = nn.BatchNorm2d(c)
            self.reset_private_bn()
        self.active = self.largest()

    def bn_layers(self) -> dict[str, nn.Sequential]:
        """Every (conv, BN, ReLU) of the max-width network by name: ``stem``, ``b<i>dw``, ``b<i>pw``."""
        net = self.net
        layers = {"stem": net.stem}
        for i, b in enumerate(net.blocks):
            layers[f"b{i}dw"], layers[f"b{i}pw"] = b.dw, b.pw
        return layers

    @torch.no_grad()
    def reset_private_bn(self) -> None:
        """Every private BatchNorm becomes the leading corner of its layer's shared one (scale, shift, statistics)."""
        layers = self.bn_layers()
        for key, bn in self.private_bn.items():
            shared = layers[key.split(":")[0]][1]
            for mine, theirs in ((bn.weight, shared.weight), (bn.bias, shared.bias),
                                 (bn.running_mean, shared.running_mean), (bn.running_var, shared.running_var)):
                mine.copy_(theirs[:len(mine)])

    def bn_for(self, layer: str, seq: nn.Sequential, channels: int) -> nn.modules.batchnorm._BatchNorm:
        """The BatchNorm ``layer`` runs at ``channels``: its private one if it has one, else the shared one."""
        return self.private_bn[f"{layer}:{channels}"] if f"{layer}:{channels}" in self.private_bn else seq[1]

    def _min_depth(self, group: list[int]) -> int:
        # A block can be skipped only when it keeps shape (stride 1, as many channels in as out); the
        # stage's first block never is (it changes resolution or width). Trailing skippable blocks go first.
        keep = len(group)
        while keep > 1 and self.base[group[keep - 1]] == self.base[group[keep - 1] + 1]:
            keep -= 1
        return keep

    # ------------------------------------------------------------------ the sub-networks

    def spec(self, widths: float | Sequence[float], depths: Sequence[int] | None = None) -> SubnetSpec:
        """A checked spec: one width (every stage) or one per stage; ``depths`` per block stage (None: all)."""
        n = len(self.stages) + 1
        ws = tuple(float(w) for w in ([widths] * n if isinstance(widths, (int, float)) else widths))
        if len(ws) != n:
            raise EdgeCompressError(f"a slice needs one width per stage ({n}: the stem, then {len(self.stages)} block "
                                    f"stages), got {len(ws)}: {list(ws)}")
        top = max(self.widths)
        for w in ws:
            if w <= 0 or w > top:
                raise EdgeCompressError(f"slice width {w} is outside (0, {top}]: the elastic maximum is max(elastic.widths)")
        ds = tuple(len(g) for g in self.stages) if depths is None else tuple(int(d) for d in depths)
        if len(ds) != len(self.stages) or any(not lo <= d <= len(g) for d, lo, g in zip(ds, self.min_depths, self.stages)):
            allowed = [f"{lo}..{len(g)}" for lo, g in zip(self.min_depths, self.stages)]
            raise EdgeCompressError(f"slice depths {list(ds)} must keep per block stage {allowed} blocks")
        return SubnetSpec(ws, ds)

    def largest(self) -> SubnetSpec:
        return self.spec(max(self.widths))

    def smallest(self, elastic_depth: bool = False) -> SubnetSpec:
        return self.spec(min(self.widths), self.min_depths if elastic_depth else None)

    def sample(self, gen: torch.Generator, elastic_depth: bool = False, per_stage: bool = True) -> SubnetSpec:
        """A random sub-network: each stage's width (and depth) drawn uniformly from its choices; or, with
        ``per_stage`` false, one width for every stage drawn from those strictly between the smallest and the
        largest (the sandwich rule trains those two every step; ``slices: auto`` extracts such uniform nets)."""
        pick = lambda k: int(torch.randint(0, k, (1,), generator=gen))  # noqa: E731
        if per_stage:
            ws = [self.widths[pick(len(self.widths))] for _ in range(len(self.stages) + 1)]
        else:
            middle = self.widths[1:-1] or self.widths
            ws = [middle[pick(len(middle))]] * (len(self.stages) + 1)
        ds = [lo + pick(len(g) - lo + 1) for lo, g in zip(self.min_depths, self.stages)] if elastic_depth else None
        return self.spec(ws, ds)

    def name(self, spec: SubnetSpec) -> str:
        """A file-safe name: ``w100`` for width 1.0 everywhere at full depth; per stage ``w050-100-150-200``
        otherwise, with ``-d1-2-2`` (blocks kept per block stage) when blocks are dropped."""
        ws = [f"{round(100 * w):03d}" for w in spec.widths]
        name = "w" + (ws[0] if len(set(ws)) == 1 else "-".join(ws))
        full = tuple(len(g) for g in self.stages)
        return name if spec.depths == full else name + "-d" + "-".join(str(d) for d in spec.depths)

    def layout(self, spec: SubnetSpec) -> tuple[list[int], list[int], list[int]]:
        """(kept block indices of ``net``, the sub-network's channels [stem, block outs...], its strides)."""
        blocks = [b for g, d in zip(self.stages, spec.depths) for b in g[:d]]
        stage_of = {b: s + 1 for s, g in enumerate(self.stages) for b in g}
        channels = [scaled(self.base[0], spec.widths[0])] + [scaled(self.base[b + 1], spec.widths[stage_of[b]])
                                                             for b in blocks]
        return blocks, channels, [self.strides[b] for b in blocks]

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.active)

    def run(self, x: torch.Tensor, spec: SubnetSpec) -> torch.Tensor:
        """Logits of sub-network ``spec`` (the first channels of every layer of ``net``)."""
        net = self.net
        blocks, channels, _ = self.layout(spec)
        x = _conv_bn_relu(net.stem, x, channels[0], self.bn_for("stem", net.stem, channels[0]))
        for b, cout in zip(blocks, channels[1:]):
            block = net.blocks[b]
            x = _conv_bn_relu(block.dw, x, x.shape[1], self.bn_for(f"b{b}dw", block.dw, x.shape[1]))
            x = _conv_bn_relu(block.pw, x, cout, self.bn_for(f"b{b}pw", block.pw, cout))
        x = net.dropout(torch.flatten(net.pool(x), 1))
        return F.linear(x, net.fc.weight[:, :x.shape[1]], net.fc.bias)


def _conv_bn_relu(seq: nn.Sequential, x: torch.Tensor, cout: int,
                  bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``seq`` (Conv2d, BatchNorm2d, ReLU) on the first ``x.shape[1]`` inputs and ``cout`` outputs, normalised
    by ``bn`` (the layer's own, or a private one of ``cout`` channels)."""
    conv = seq[0]
    cin = x.shape[1]
    groups = cin if conv.groups > 1 else 1  # depthwise: one filter per channel that runs
    weight = conv.weight[:cout] if groups > 1 else conv.weight[:cout, :cin]
    x = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, groups)
    factor = bn.momentum
    if bn.training and factor is None:  # cumulative average (recalibrate_bn), as nn.BatchNorm2d counts it
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked)
    # Slices of the running statistics are views: training updates the shared buffers in place.
    x = F.batch_norm(x, bn.running_mean[:cout], bn.running_var[:cout], bn.weight[:cout], bn.bias[:cout],
                     bn.training, factor or 0.0, bn.eps)
    return F.relu(x)


@torch.no_grad()
def sort_channels(elastic: ElasticMobileNet) -> list[list[int]]:
    """Reorder every layer's output channels by importance, most important first, so each narrower slice
    (the first k channels) keeps the channels that matter: once-for-all's channel sorting before elastic
    width is trained. Exact: the max-width network computes the same function afterwards.

    Importance is the magnitude of the channel's BatchNorm scale |gamma| (network slimming, Liu et al.
    2017): BN normalises the convolution's output, so gamma alone sets how loudly the channel speaks.
    A depthwise convolution's channels follow its input's order. Returns the permutation of each layer
    (stem, then every block's pointwise output).
    """
    net = elastic.net
    producers = [net.stem] + [b.pw for b in net.blocks]
    perms = []
    for i, seq in enumerate(producers):
        conv, bn = seq[0], seq[1]
        perm = torch.argsort(bn.weight.abs(), descending=True, stable=True)
        _permute_out(conv, bn, perm)
        if i < len(net.blocks):  # the next block reads these channels: its depthwise filters, then its pointwise inputs
            nxt = net.blocks[i]
            _permute_out(nxt.dw[0], nxt.dw[1], perm)
            nxt.pw[0].weight.copy_(nxt.pw[0].weight[:, perm])
        else:
            net.fc.weight.copy_(net.fc.weight[:, perm])
        perms.append(perm.tolist())
    elastic.reset_private_bn()
    return perms


def _permute_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, perm: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[perm])
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        t.copy_(t[perm])


def extract(elastic: ElasticMobileNet, spec: SubnetSpec) -> tuple[MobileNetStudent, dict]:
    """Sub-network ``spec`` as an ordinary ``MobileNetStudent`` with copied weights, and its arch dict
    (``build_model(arch)`` rebuilds it; the BN statistics are the shared or private ones: recalibrate them)."""
    net = elastic.net
    blocks, channels, strides = elastic.layout(spec)
    sub = MobileNetStudent(net.stem[0].in_channels, net.fc.out_features, channels, strides, net.dropout.p)
    full = net.state_dict()
    state = {}
    for key, t in sub.state_dict().items():
        src = key
        if key.startswith("blocks."):  # sub-network block j is block blocks[j] of the max-width network
            _, j, rest = key.split(".", 2)
            src = f"blocks.{blocks[int(j)]}.{rest}"
        # Every tensor is the leading corner of its max-width one: first outputs, first inputs.
        state[key] = full[src][tuple(slice(0, s) for s in t.shape)].clone()
    # A layer that runs at a narrower channel count with a private BatchNorm takes that one's tensors.
    bn_of = {"stem.1": "stem"} | {f"blocks.{j}.{part}.1": f"b{b}{part}" for j, b in enumerate(blocks)
                                  for part in ("dw", "pw")}
    for module, layer in bn_of.items():
        private = f"{layer}:{state[module + '.weight'].shape[0]}"
        if private in elastic.private_bn:
            for leaf, v in elastic.private_bn[private].state_dict().items():
                state[f"{module}.{leaf}"] = v.clone()
    sub.load_state_dict(state)
    return sub.eval(), arch_of(sub)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 200) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``x`` (plain training images); nothing else
    changes. The statistics are the exact average over the batches (momentum None), as US-Nets calibrate.

    Returns the number of BatchNorm layers recalibrated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return len(bns)
