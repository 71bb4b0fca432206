"""Model families: a ResNet-style teacher, a MobileNet-style (depthwise-separable) student, and the
multi-head student (Ferianc & Rodrigues 2022) that wraps a student core with one head per ensemble member.

Every model is rebuilt from a plain ``arch`` dict (``build_model(arch)``), and ``arch_of(model)``
reads that dict back from a live module, so a structurally pruned student (fewer channels) is saved
as weights plus the channel list that explains them; no pickled modules.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import EdgeCompressError


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 projection shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetTeacher(nn.Module):
    """Compact ResNet: a full-resolution 3x3 stem, then one block per stride-2 stage.

    Downsampling in the first block of every stage keeps the expensive 3x3 convs off the
    full-resolution grid; that is what makes training fit a 2-core CPU budget.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks: list[int],
                 stem: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, stem, 3)
        layers: list[nn.Module] = []
        cin = stem
        for w, n in zip(widths, blocks):
            for i in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if i == 0 else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map before pooling (for feature-based distillation)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class DSBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, each followed by BN and ReLU (MobileNet v1 block)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.dw = _conv_bn(cin, cin, 3, stride=stride, groups=cin)
        self.pw = _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class MobileNetStudent(nn.Module):
    """MobileNet-v1-style student: a 3x3 stem then depthwise-separable blocks.

    ``channels`` is [stem, block1_out, block2_out, ...]; it is the whole architecture, so a
    channel-pruned student is rebuilt exactly from the pruned list.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], strides: list[int],
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(channels) != len(strides) + 1:
            raise ValueError(f"channels has {len(channels)} entries, expected len(strides)+1 = {len(strides) + 1}")
        self.stem = _conv_bn(in_channels, channels[0], 3)
        self.blocks = nn.Sequential(*[DSBlock(channels[i], channels[i + 1], s) for i, s in enumerate(strides)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map before pooling (for feature-based distillation)."""
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def student_channels(base: list[int], width: float) -> list[int]:
    """Apply a MobileNet width multiplier, rounding to multiples of 4 (SIMD-friendly)."""
    return [max(4, int(round(c * width / 4)) * 4) for c in base]


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Build a model from its arch dict (as stored in every checkpoint)."""
    kind = arch.get("kind")
    kw = {k: v for k, v in arch.items() if k != "kind"}
    try:
        if kind == "resnet":
            return ResNetTeacher(**kw)
        if kind == "mobilenet":
            return MobileNetStudent(**kw)
        if kind == "multihead":
            return MultiHeadStudent(build_model(kw["core"]), num_heads=kw["heads"])
    except (TypeError, KeyError) as e:
        raise EdgeCompressError(f"arch {arch} does not match model kind {kind!r}: {e}") from e
    raise EdgeCompressError(f"unknown model kind {kind!r}; allowed: resnet, mobilenet, multihead")


def arch_of(model: nn.Module, dropout: float = 0.0) -> dict[str, Any]:
    """Read the arch dict back from a live model (after structural pruning the channels changed)."""
    if isinstance(model, MultiHeadStudent):
        core = arch_of(model.core)
        return {"kind": "multihead", "heads": model.num_heads, "core": {**core, "num_classes": model.num_classes}}
    if isinstance(model, MobileNetStudent):
        channels = [model.stem[0].out_channels] + [b.pw[0].out_channels for b in model.blocks]
        classes = model.fc.out_features if isinstance(model.fc, nn.Linear) else None
        return {"kind": "mobilenet", "in_channels": model.stem[0].in_channels,
                "num_classes": classes, "channels": channels,
                "strides": [b.dw[0].stride[0] for b in model.blocks], "dropout": model.dropout.p}
    raise EdgeCompressError(f"arch_of does not know {type(model).__name__}")


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1000,
            channels_last: bool = True, dim: int = 0) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches without gradients, outputs concatenated along ``dim``.

    ``channels_last`` feeds each batch in the memory format training used; the export reference and
    the check's teacher run NCHW as the artifacts do. (The batch size and format are kept per caller:
    both can change the last bits of a convolution's result.)
    """
    outs = [fn(x[i:i + batch_size].contiguous(memory_format=torch.channels_last) if channels_last
               else x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if not outs:
        raise EdgeCompressError("batched inference on an empty input")
    return torch.cat(outs, dim)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them; BN included). A module that runs a graph outside PyTorch (an
    ONNX teacher) has none of its own and says how many weights its graph holds (``parameter_count``)."""
    return sum(p.numel() for p in model.parameters()) or int(getattr(model, "parameter_count", 0))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Multiply-accumulates of one forward pass at batch 1, counted with hooks on conv/linear layers.

    A network without such modules (a ``torch.export`` program) is counted by PyTorch's FLOP counter
    instead; None when neither sees any arithmetic (an ONNX graph run by onnxruntime: not countable here).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if handles:
                model(torch.zeros(1, *input_shape))
            else:
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    model(torch.zeros(1, *input_shape))
                total = counter.get_total_flops() // 2  # a multiply-accumulate is two FLOPs
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total) if total else None


class MultiHeadStudent(nn.Module):
    """A shared core (``core.features(x)``, then global average pooling) and M linear heads.

    ``forward`` returns log of the heads' mean probability, log(mean_m softmax(z_m)) (N, C): the mean
    of probabilities is the ensemble prediction, and its log is a valid logit vector
    (softmax(log p) = p), so pruning, quantization, export, the runners and every metric treat a
    multi-head student exactly like a one-head one; exp() of the output gives the mean probabilities.
    ``PerHeadOutputs`` adds the per-head probabilities. The core's ``fc`` is replaced by the heads
    (set to Identity); its ``dropout`` is applied before the heads, so MC dropout still works.
    """

    def __init__(self, core: nn.Module, num_heads: int, num_classes: int | None = None) -> None:
        super().__init__()
        if num_heads < 1:
            raise EdgeCompressError(f"invalid value num_heads={num_heads!r}: must be >= 1")
        fc = getattr(core, "fc", None)
        if not isinstance(fc, nn.Linear) or not hasattr(core, "features"):
            raise EdgeCompressError(f"MultiHeadStudent needs a core with .features() and a Linear .fc; "
                                    f"got {type(core).__name__}")
        classes = num_classes if num_classes is not None else fc.out_features
        # Independent default initialisations: the heads start diverse, the regulariser keeps them so.
        heads = [nn.Linear(fc.in_features, classes) for _ in range(num_heads)]
        core.fc = nn.Identity()  # the heads replace it: no dead weights in checkpoints or exports
        self.core = core
        self.heads = nn.ModuleList(heads)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        return self.heads[0].out_features

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled shared features (N, D) that every head reads."""
        e = torch.flatten(F.adaptive_avg_pool2d(self.core.features(x), 1), 1)  # type: ignore[operator]
        dropout = getattr(self.core, "dropout", None)
        return dropout(e) if dropout is not None else e

    def forward_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head logits, (M, N, C)."""
        e = self.embedding(x)
        return torch.stack([h(e) for h in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log(mean over heads of softmax probabilities), (N, C); exp() rows sum to 1."""
        return log_mean_softmax(self.forward_heads(x), 1.0)


class PerHeadOutputs(nn.Module):
    """Export wrapper: ``forward(x) -> (mean_probs (N, C), per_head_probs (N, M, C))``.

    Batch-first per-head output so the exported graph has one dynamic batch axis; a device can then
    compute mutual information (edgecompress.uncertainty) from the heads' disagreement.
    """

    def __init__(self, model: MultiHeadStudent) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(self.model.forward_heads(x), dim=-1)
        return probs.mean(0), probs.transpose(0, 1)


def log_mean_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # log(mean_m softmax(z_m / T)) = logsumexp_m log_softmax(z_m / T) - log M, without ever taking
    # the log of a probability that underflowed to 0.
    return torch.logsumexp(F.log_softmax(logits / temperature, dim=-1), dim=0) - math.log(logits.shape[0])


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, last feature map) in one pass.

    Our models expose ``features``/``pool``/``dropout``/``fc`` (calling ``model(x)`` and
    ``model.features(x)`` separately would run the backbone twice). Any other module (the user's) is
    run once with hooks: its feature map is the last (N, C, H, W) output with H * W > 1 that a layer
    produced, i.e. the map global pooling reads.
    """
    if all(hasattr(model, a) for a in ("features", "pool", "fc")):
        feat = model.features(x)  # type: ignore[operator]
        pooled = torch.flatten(model.pool(feat), 1)  # type: ignore[operator]
        dropout = getattr(model, "dropout", None)
        if dropout is not None:
            pooled = dropout(pooled)
        return model.fc(pooled), feat  # type: ignore[operator]
    maps: list[torch.Tensor] = []

    def keep(_m: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
            maps.append(out)

    handles = [m.register_forward_hook(keep) for m in model.modules() if not any(True for _ in m.children())]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    if not maps:
        raise EdgeCompressError(f"{type(model).__name__} produced no spatial feature map (no layer returned an "
                                f"(N, C, H, W) tensor with H * W > 1), which feature KD and k-center need")
    return logits, maps[-1]


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map of ``model`` on ``x`` (``features(x)`` where the model has it)."""
    if hasattr(model, "features"):
        return model.features(x)  # type: ignore[operator]
    return forward_with_features(model, x)[1]
