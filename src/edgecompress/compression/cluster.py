"""Weight clustering (Deep Compression's weight sharing, Han, Mao & Dally 2016): non-uniform quantization.

Every conv/linear weight tensor keeps at most ``2**bits`` distinct values: a per-layer 1-D k-means
codebook (linear or density initialisation) and one codebook index per weight. The network is then
fine-tuned by distillation with the weights *tied* to their centroids: each weight is
``centroids[index]`` through a parametrization, so autograd sums the gradients of a cluster's members
into its centroid, and the indices never change. Pruned zeros (unstructured pruning) keep a fixed
zero value of their own, so sparsity survives clustering.

Batch norm is folded into the convolutions first (``fold_batchnorm``): the exporters fold it anyway,
and a per-channel BN scale applied after clustering would multiply the codebook per channel, so the
ONNX/TFLite file would no longer hold few values. The folded BN stays as an exact identity carrying the
bias, so the network keeps its architecture (and checkpoint format); the exported file carries the
shared values bit for bit, and ``deploy.package`` Huffman-codes their indices.

``uniform_fake_quant`` is the baseline at the same bits (symmetric, per output channel, weights only),
trained with straight-through gradients under the same fine-tune, so the two compare on equal terms.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.compression.finetune import finetuner
from edgecompress.data import Dataset
from edgecompress.dirs import whole_dir
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.training.loop import TrainConfig, crop_fill, evaluate, tensors
from edgecompress.training.soft_targets import SoftTargets

INITS = ("linear", "density")
log = get_logger("cluster")


@dataclass(frozen=True)
class ClusterConfig:
    """``cluster`` in params.yaml: which models get a clustered copy, how many shared values per layer,
    and how they are fine-tuned."""

    models: tuple[str, ...] = ("student", "pruned")  # student | pruned | a ladder level (pruned-50); () = none
    bits: int = 4                 # 2**bits shared values per layer (2..8)
    init: str = "density"         # density: at the quantiles of the weights | linear: evenly over [min, max]
    #                               (Han et al.'s choice; fragile after BN folding: docs/results.md)
    iterations: int = 30          # Lloyd iterations of the per-layer 1-D k-means
    min_weights: int = 64         # smaller tensors stay float (a few bytes; not worth a codebook)
    temperature: float = 4.0
    alpha: float = 0.9            # KD weight of the fine-tune (1 - alpha on the labels)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2, lr=0.003, weight_decay=0.0,
                                                                      seed=2))

    def __post_init__(self) -> None:
        checks = [("bits", isinstance(self.bits, int) and 2 <= self.bits <= 8, "an integer in 2..8"),
                  ("init", self.init in INITS, f"one of {', '.join(INITS)}"),
                  ("iterations", isinstance(self.iterations, int) and self.iterations >= 0, "an integer >= 0"),
                  ("min_weights", isinstance(self.min_weights, int) and self.min_weights >= 1, "an integer >= 1"),
                  ("temperature", self.temperature > 0, "> 0"),
                  ("alpha", 0 <= self.alpha <= 1, "in [0, 1]")]
        models = self.models
        checks.append(("models", isinstance(models, (list, tuple)) and len(set(models)) == len(models)
                       and all(isinstance(m, str) and re.fullmatch(r"student|pruned(-\d+)?", m) for m in models),
                       "a list of distinct names among student, pruned, pruned-<percent> (a ladder level)"))
        for name, ok, allowed in checks:
            if not ok:
                value = getattr(self, name)
                shown = list(value) if isinstance(value, tuple) else value  # as written in params.yaml
                raise EdgeCompressError(f"invalid value cluster.{name}={shown!r}: must be {allowed}")
        object.__setattr__(self, "models", tuple(models))

    def name(self, model: str) -> str:
        """The clustered copy's name in the candidate pool, e.g. ``student-c4``."""
        return f"{model}-c{self.bits}"


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]]:
    """Every conv whose only consumer is a batch norm, found by tracing (torch.fx), else inside Sequentials."""
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow: fall back to what sits next to each other
        pairs = []
        for seq in (m for m in model.modules() if isinstance(m, nn.Sequential)):
            kids = list(seq)
            pairs += [(a, b) for a, b in zip(kids, kids[1:])
                      if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)]
        return pairs
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.BatchNorm2d):
            src = node.args[0]
            if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                    and len(src.users) == 1):
                pairs.append((modules[src.target], modules[node.target]))
    return pairs


def _unit_variance(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """A running variance v with sqrt(v + eps) == 1.0 exactly in float32, so folding it multiplies by one."""
    v = torch.full_like(bn.running_var, 1.0 - bn.eps)
    while bool((torch.sqrt(v + bn.eps) != 1.0).any()):
        v = torch.nextafter(v, torch.where(torch.sqrt(v + bn.eps) > 1.0, torch.zeros_like(v), torch.ones_like(v)))
    return v


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose conv -> batch-norm pairs are folded into the conv weights.

    The batch norms stay, as exact identities that carry the folded bias (scale 1, mean 0, a variance
    with sqrt(var + eps) == 1), frozen: the architecture and its checkpoint are unchanged, and the
    exporters' own folding then multiplies the shared weights by exactly one."""
    model = copy.deepcopy(model).eval()
    for conv, bn in _conv_bn_pairs(model):
        if not bn.affine or bn.running_var is None:  # nowhere to carry the folded bias: left as it is
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shift = (bias - bn.running_mean) * scale + bn.bias
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.copy_(_unit_variance(bn))
        bn.weight.fill_(1.0)
        bn.bias.copy_(shift)
        bn.requires_grad_(False)  # frozen parameters also keep the BN in eval mode while fine-tuning
    return model


def _assign(flat: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the (sorted) ``centroids`` for every element."""
    return torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)


def kmeans_1d(w: torch.Tensor, k: int, init: str = "linear", iterations: int = 30) -> tuple[torch.Tensor,
                                                                                           torch.Tensor]:
    """(centroids, index per element) of 1-D k-means on ``w`` (float64 maths, float32 centroids)."""
    flat = w.detach().flatten().double()
    k = min(k, int(flat.unique().numel()))
    if init == "linear":
        centroids = torch.linspace(float(flat.min()), float(flat.max()), k, dtype=torch.float64)
    else:
        centroids = torch.quantile(flat, torch.linspace(0, 1, k + 2, dtype=torch.float64)[1:-1])
    centroids, _ = centroids.sort()
    for _ in range(iterations):
        idx = _assign(flat, centroids)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=k).double()
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # an empty cluster wastes a value: restart it at the worst-served weights
            worst = (flat - moved[idx]).abs().argsort(descending=True)[:len(empty)]
            moved[empty] = flat[worst]
        moved, _ = moved.sort()
        if torch.equal(moved, centroids):
            break
        centroids = moved
    idx = _assign(flat, centroids)
    return centroids.float(), idx.reshape(w.shape)


class SharedWeights(nn.Module):
    """Parametrization ``weight = centroids[index]`` (zeros that were pruned stay exactly zero)."""

    def __init__(self, weight: torch.Tensor, bits: int, init: str, iterations: int, average: bool = True) -> None:
        super().__init__()
        nonzero = weight != 0
        # A pruned layer spends one of its 2**bits values on the fixed zero.
        sparse = bool((~nonzero).any()) and bool(nonzero.any())
        centroids, idx = kmeans_1d(weight[nonzero] if sparse else weight, 2 ** bits - int(sparse), init, iterations)
        full = torch.zeros(weight.shape, dtype=torch.long)
        full[nonzero if sparse else torch.ones_like(nonzero)] = idx.flatten()
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("index", full)
        self.register_buffer("keep", nonzero if sparse else torch.ones_like(nonzero))
        if average:
            # Autograd sums the members' gradients into their centroid; dividing by the member count makes
            # one SGD learning rate fit clusters of 10 and of 10,000 weights (the summed gradient of a big
            # cluster would take steps thousands of times a single weight's and diverge).
            # A buffer, so it moves with the module (the fine-tune runs on the GPU when there is one).
            self.register_buffer("members", torch.bincount(full[self.keep], minlength=len(centroids)).clamp(min=1).float())
            self.centroids.register_hook(lambda g: g / self.members)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, self.centroids[self.index], torch.zeros((), dtype=self.centroids.dtype))


class UniformFakeQuant(nn.Module):
    """Parametrization: symmetric per-output-channel ``bits``-bit weights, straight-through gradients."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.qmax = 2 ** (bits - 1) - 1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().flatten(1).amax(1).clamp(min=1e-12) / self.qmax
        scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
        q = torch.clamp(torch.round(w / scale), -self.qmax - 1, self.qmax) * scale
        return w + (q - w).detach()


def _layers(model: nn.Module, min_weights: int) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.numel() >= min_weights]


def cluster_weights(model: nn.Module, cfg: ClusterConfig) -> list[str]:
    """Tie every large-enough conv/linear weight of ``model`` to its k-means codebook, in place; their names."""
    names = []
    for name, m in _layers(model, cfg.min_weights):
        parametrize.register_parametrization(m, "weight", SharedWeights(m.weight, cfg.bits, cfg.init, cfg.iterations),
                                             unsafe=True)
        m.parametrizations.weight.original.requires_grad_(False)  # the indices decide; only centroids learn
        names.append(name)
    if not names:
        raise EdgeCompressError(f"cluster: no conv/linear weight has >= {cfg.min_weights} elements "
                                "(cluster.min_weights); nothing to cluster")
    return names


def uniform_fake_quant(model: nn.Module, bits: int, min_weights: int = 64) -> list[str]:
    """Fake-quantize the same layers ``cluster_weights`` would cluster to uniform ``bits``-bit weights, in place."""
    names = []
    for name, m in _layers(model, min_weights):
        parametrize.register_parametrization(m, "weight", UniformFakeQuant(bits))
        names.append(name)
    return names


def bake(model: nn.Module) -> nn.Module:
    """Replace every parametrized weight by its current value (plain tensors, exportable), in place."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def distinct_values(model: nn.Module, min_weights: int = 64) -> dict[str, int]:
    """Number of distinct values of each conv/linear weight (the clustering's invariant)."""
    return {n: int(m.weight.detach().unique().numel()) for n, m in _layers(model, min_weights)}


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def compress_weights(model: nn.Module, teacher: nn.Module | None, train: tuple[torch.Tensor, torch.Tensor],
                     test: tuple[torch.Tensor, torch.Tensor], cfg: ClusterConfig, method: str = "cluster",
                     fill: torch.Tensor | None = None, targets: SoftTargets | None = None) -> tuple[nn.Module,
                                                                                                 dict[str, Any]]:
    """Fold BN, then cluster (``method='cluster'``) or uniformly fake-quantize (``'uniform'``) ``model``'s
    weights to ``cfg.bits`` bits, KD fine-tune from ``teacher`` (replaying its stored logits ``targets``
    when they fit the fine-tune) and bake; (the new model, its report).

    The report has test accuracy before and after the fine-tune and the distinct values per layer."""
    if method not in ("cluster", "uniform"):
        raise EdgeCompressError(f"invalid weight compression {method!r}: must be cluster or uniform")
    folded = fold_batchnorm(model)
    before = evaluate(folded, *test)["accuracy"]
    layers = (cluster_weights(folded, cfg) if method == "cluster"
              else uniform_fake_quant(folded, cfg.bits, cfg.min_weights))
    start = evaluate(folded, *test)["accuracy"]
    tune, source = finetuner(folded, teacher, [], cfg.finetune, cfg.temperature, cfg.alpha, None, targets)
    log.info(f"{method} {cfg.bits}-bit on {len(layers)} layers: test accuracy {before:.4f} -> {start:.4f}; "
             f"KD fine-tune from the {source}, {cfg.finetune.epochs} epoch(s)")
    history = tune(*train, fill=fill, name=f"{method}-{cfg.bits}", params=_trainable(folded))
    folded = bake(folded).eval()
    after = evaluate(folded, *test)["accuracy"]
    log.info(f"{method} {cfg.bits}-bit after fine-tune: {after:.4f}")
    return folded, {"method": method, "bits": cfg.bits, "init": cfg.init if method == "cluster" else None,
                    "accuracy_float": before, "accuracy_before_finetune": start, "accuracy": after,
                    "layers": len(layers), "distinct_values": distinct_values(folded, cfg.min_weights),
                    "finetune_epochs": cfg.finetune.epochs, "finetune_source": source, "history": history}


def cluster_checkpoints(sources: dict[str, Path], teacher: nn.Module, ds: Dataset, cfg: ClusterConfig,
                        out: str | Path, meta: Callable[[dict[str, Any], str], dict[str, Any]],
                        targets: SoftTargets | None = None) -> dict[str, Any]:
    """``out/<model>-c<bits>.pt`` for every ``cfg.models`` checkpoint in ``sources`` (name -> path), clustered
    and fine-tuned; ``meta(report, parent)`` their metadata. The directory appears whole; the reports."""
    missing = [m for m in cfg.models if m not in sources]
    if missing:
        raise EdgeCompressError(f"cluster.models names {missing}, which the pipeline did not make; it has "
                                f"{', '.join(sources)} (pruning ladder levels come from prune.ladder)")
    t = tensors(ds)
    reports: dict[str, Any] = {}
    with whole_dir(out) as scratch:
        for i, name in enumerate(cfg.models):
            log.info(f"{i + 1}/{len(cfg.models)} {name} -> {cfg.name(name)}")
            model, smeta = load_checkpoint(sources[name])
            # Test accuracy is reported, never used: the fine-tune's length and rate are params.
            clustered, rep = compress_weights(model, teacher, t["train"], t["test"], cfg, "cluster",
                                              fill=crop_fill(ds), targets=targets)
            # Same layers as its source (the folded batch norms stay, as identities): the source's arch holds.
            save_checkpoint(scratch / f"{cfg.name(name)}.pt", clustered, smeta["arch"],
                            meta({k: v for k, v in rep.items() if k != "history"}, str(sources[name])))
            reports[cfg.name(name)] = rep
    return reports
