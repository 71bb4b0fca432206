"""Pruning: unstructured magnitude (zeroed weights) and structured channel removal.

Structured pruning goes through torch-pruning's dependency graph, so a removed pointwise output
channel also removes the matching depthwise filter and BN entries of the next block, and a channel
of a residual sum is removed from every branch that feeds it; the result is a genuinely smaller
dense network (fewer params and MACs, faster on every runtime). Channels are ranked by a
criterion (L1/L2 filter norm, APoZ on a data batch, or first-order Taylor on a loss batch).
Unstructured magnitude pruning only zeroes weights: dense runtimes run it no faster and store it
no smaller; only a sparse encoding (counted by ``edgecompress.compression.sparse``) shrinks it.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgecompress.compression.finetune import SLICE_EXAMPLE, finetuner, is_slice_name
from edgecompress.compression.importance import channel_importance, channel_widths, protected_layers, whole_groups
from edgecompress.compression.onnx import export_onnx
from edgecompress.compression.sparse import sparse_size
from edgecompress.deploy.runner import benchmark, load_session
from edgecompress.data import Dataset
from edgecompress.errors import EdgeCompressError
from edgecompress.models import count_macs, count_params
from edgecompress.training.distill import SOURCES
from edgecompress.training.loop import TrainConfig, crop_fill, evaluate, tensors
from edgecompress.training.soft_targets import SoftTargets
from edgecompress.training.multihead import MultiHeadKDConfig

METHODS = ("channel", "magnitude", "none")
CRITERIA = ("l1", "l2", "apoz", "taylor")
SCHEDULES = ("geometric", "linear")
PROTECTABLE = ("first", "last")
SOURCE_MODELS = ("student", "teacher")


@dataclass(frozen=True)
class PruneConfig:
    """How much and how to prune, and what the KD fine-tune after each step learns from."""

    method: str = "channel"  # channel (structured) | magnitude (unstructured) | none
    criterion: str = "l1"  # channel ranking: l1 | l2 | apoz | taylor
    ratio: float = 0.5  # fraction of channels (structured) or weights (unstructured) removed in total
    steps: int = 1  # iterative schedule: prune a step, fine-tune with KD, repeat
    schedule: str = "geometric"  # how the removed fraction grows over steps: geometric | linear
    round_to: int = 4  # keep channel counts multiples of this (SIMD-friendly widths)
    global_ranking: bool = False  # rank channels (or weights) across layers instead of per layer
    protect: tuple[str, ...] = ("last",)  # never pruned: first (the stem conv), last (the classifier, always)
    importance_samples: int = 256  # training images used by apoz/taylor to score channels
    latency_runs: int = 200  # batch-1 fp32 ONNX runs timed per step (1 thread); 0 = skip
    # What the fine-tune distils: teacher | ensemble (teacher + members) | auto (see finetune_plan).
    source: str = "auto"
    temperature: float = 4.0
    alpha: float = 0.9
    finetune: TrainConfig = field(default_factory=TrainConfig)  # epochs are spent at every step
    # Pruning ladder: after ``ratio`` (the level the stage's main output keeps), one more prune step +
    # KD fine-tune to each of these cumulative removed fractions; every level is a build candidate.
    ladder: tuple[float, ...] = ()
    # What is pruned: the distilled student, a slice of the elastic student (elastic-w150: models/elastic, pruned
    # as the student is), or the teacher itself (the user's module: compressed directly, fine-tuned by
    # self-distillation from its unpruned self).
    source_model: str = "student"
    # How far the removed fraction a step or level reaches (channels; weights for magnitude) may be from the
    # one asked before the stage refuses: round_to and GroupNorm groups floor small layers' widths coarsely.
    ratio_tolerance: float = 0.15

    def __post_init__(self) -> None:
        method, criterion = self.method, self.criterion
        if method not in METHODS:
            raise EdgeCompressError(f"invalid value method={self.method!r}: allowed {list(METHODS)}")
        if criterion not in CRITERIA:
            raise EdgeCompressError(f"invalid value criterion={criterion!r}: allowed {list(CRITERIA)}")
        if method == "magnitude" and criterion not in ("l1", "l2"):
            raise EdgeCompressError(f"criterion={criterion!r} ranks channels; method=magnitude ranks single "
                                    f"weights by |w|: allowed criterion for magnitude: ['l1', 'l2']")
        protect = (self.protect,) if isinstance(self.protect, str) else tuple(self.protect or ())
        bad = [p for p in protect if p not in PROTECTABLE]
        if bad:
            raise EdgeCompressError(f"invalid value protect={list(protect)}: allowed entries {list(PROTECTABLE)}")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "criterion", criterion)
        object.__setattr__(self, "protect", tuple(dict.fromkeys(protect + ("last",))))
        checks = [("ratio", 0.0 <= self.ratio < 1.0, "must be within [0, 1)"),
                  ("steps", self.steps >= 1, "must be >= 1"),
                  ("schedule", self.schedule in SCHEDULES, f"allowed {list(SCHEDULES)}"),
                  ("round_to", self.round_to >= 1, "must be >= 1"),
                  ("importance_samples", self.importance_samples >= 1, "must be >= 1"),
                  ("latency_runs", self.latency_runs >= 0, "must be >= 0"),
                  ("source", self.source in (*SOURCES, "auto"), f"allowed {[*SOURCES, 'auto']} (what the pruned "
                                                                 "student is fine-tuned from)"),
                  ("source_model", self.source_model in SOURCE_MODELS or is_slice_name(self.source_model),
                   f"allowed {list(SOURCE_MODELS)} or a slice of the elastic student, {SLICE_EXAMPLE} (the "
                   "network that is pruned)"),
                  ("temperature", self.temperature > 0, "must be > 0 (softmax(z / T))"),
                  ("alpha", 0 <= self.alpha <= 1, "must be within [0, 1]"),
                  ("ratio_tolerance", 0 < self.ratio_tolerance < 1, "must be within (0, 1)")]
        for name, ok, allowed in checks:
            if not ok:
                raise EdgeCompressError(f"invalid value {name}={getattr(self, name)!r}: {allowed}")
        self._check_ladder()

    def _check_ladder(self) -> None:
        """``ladder`` as a tuple of floats: strictly increasing, above ``ratio``, below 1, distinct names."""
        ladder = (self.ladder,) if isinstance(self.ladder, (int, float)) else tuple(self.ladder or ())
        allowed = (f"allowed: a list of removed fractions, strictly increasing, each > ratio ({self.ratio}) "
                   "and < 1, at least 0.01 apart (levels are named by whole percent)")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in ladder):
            raise EdgeCompressError(f"invalid value ladder={list(ladder)}: prune.ladder must be numbers; {allowed}")
        ladder = tuple(float(v) for v in ladder)
        object.__setattr__(self, "ladder", ladder)
        if ladder and self.method == "none":
            raise EdgeCompressError(f"invalid value ladder={list(ladder)}: prune.ladder prunes further, but "
                                    "method='none' prunes nothing; allowed: method channel or magnitude, or ladder: []")
        for i, v in enumerate(ladder):
            prev = ladder[i - 1] if i else self.ratio
            before = f"the previous level {prev}" if i else f"ratio {prev}"
            why = (f"is not above {before}" if v <= prev else "removes everything" if v >= 1 else
                   f"has the same name ({level_name(v)}) as {before}" if level_name(v) == level_name(prev) else "")
            if why:
                raise EdgeCompressError(f"invalid value ladder={list(ladder)}: prune.ladder level {v!r} {why}; {allowed}")


# ---------------------------------------------------------------- which layers may be pruned


# ---------------------------------------------------------------- channel importance criteria


def prune_channels(model: nn.Module, input_shape: tuple[int, ...], ratio: float, cfg: PruneConfig,
                   batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """Physically remove ``ratio`` of the prunable channels ranked by ``cfg.criterion``, in place.

    Per layer (or globally with ``cfg.global_ranking``), kept channels are floored to multiples of
    ``cfg.round_to`` and, for group-normalised (or grouped-conv) channels, of the group count too: every
    group loses the same channels, so GroupNorm's groups stay whole. Protected layers keep their outputs.
    """
    import torch_pruning as tp

    if ratio <= 0:
        return model
    model.eval()
    importance = channel_importance(cfg.criterion, model, batch)
    # round_to=None: torch-pruning's own rounding counts a GroupNorm(4) layer's channels per group but removes
    # that count from every group (a 30% prune took 32 channels to 16); whole_groups rounds instead.
    pruner = tp.pruner.MagnitudePruner(
        model, torch.zeros(1, *input_shape), importance=importance, pruning_ratio=ratio,
        ignored_layers=protected_layers(model, cfg.protect), round_to=None,
        global_pruning=cfg.global_ranking, max_pruning_ratio=0.9 if cfg.global_ranking else 1.0)
    # Every group is planned on the unpruned model before any is pruned (scores stay those of one network).
    plans = [whole_groups(pruner, group, cfg.round_to) for group in pruner.step(interactive=True)]
    for plan in plans:
        if plan is not None:
            plan.prune()
    model.zero_grad(set_to_none=True)
    empty = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.out_channels == 0]
    if empty:
        raise EdgeCompressError(f"pruning ratio {ratio:.3f} with round_to={cfg.round_to} removed every channel of "
                                f"{empty}; lower prune.ratio or prune.round_to")
    return model


# ---------------------------------------------------------------- unstructured magnitude

def _weights(model: nn.Module, protect: tuple[str, ...]) -> list[nn.Module]:
    skip = {id(m) for m in protected_layers(model, protect)}
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip]


def prune_magnitude(model: nn.Module, ratio: float, global_ranking: bool = True,
                    protect: tuple[str, ...] = ("last",)) -> nn.Module:
    """Zero the smallest-|w| ``ratio`` of conv/linear weights, over all layers together or per layer.

    Protected layers (the classifier; the stem with ``first``) are left dense. Masks are made
    permanent; already-zero weights count toward ``ratio``, so cumulative ratios compose.
    """
    if ratio <= 0:
        return model
    layers = _weights(model, protect)
    if global_ranking:
        torch_prune.global_unstructured([(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured,
                                        amount=ratio)
    else:
        for m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=ratio)
    for m in layers:
        torch_prune.remove(m, "weight")
    return model


def sparsity(model: nn.Module, protect: tuple[str, ...] = ()) -> float:
    """Fraction of exactly-zero weights in conv/linear layers (excluding ``protect``ed ones when given)."""
    layers = _weights(model, protect) if protect else [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / max(sum(m.weight.numel() for m in layers), 1)


# ---------------------------------------------------------------- schedule and one step

def cumulative_ratios(cfg: PruneConfig) -> list[float]:
    """Fraction of the original channels/weights removed after each step; the last one is ``cfg.ratio``.

    linear: r * i/k. geometric: the kept fraction shrinks by the same factor every step,
    1 - (1 - r)^(i/k), so early steps (when the network is widest) remove the most.
    """
    k, r = cfg.steps, cfg.ratio
    if cfg.schedule == "linear":
        return [r * (i + 1) / k for i in range(k)]
    return [1 - (1 - r) ** ((i + 1) / k) for i in range(k)]


def step_ratios(cfg: PruneConfig, cum: Sequence[float] | None = None, start: float = 0.0) -> list[float]:
    """What each step asks the pruner for, to reach the cumulative ``cum`` (default: the schedule) from ``start``.

    Structured: a fraction of the *current* channels, so the steps compound to the cumulative
    schedule. Unstructured: the cumulative sparsity itself (zeros already there count toward it).
    """
    cum = list(cumulative_ratios(cfg) if cum is None else cum)
    if cfg.method == "magnitude":
        return cum
    kept = [1.0 - start] + [1 - c for c in cum]
    return [1 - kept[i + 1] / kept[i] for i in range(len(cum))]


def ladder_ratios(cfg: PruneConfig) -> list[float]:
    """Step ratios from ``cfg.ratio`` up each ``cfg.ladder`` level: 1-(1-next)/(1-prev) structured, cumulative else."""
    return step_ratios(cfg, cfg.ladder, cfg.ratio)


def level_name(ratio: float) -> str:
    """A pruning level's name (checkpoint file stem): ``pruned-30`` for 0.3 removed."""
    return f"pruned-{round(100 * ratio)}"


def removed_fraction(model: nn.Module, cfg: PruneConfig, widths0: dict[str, int]) -> float:
    """Fraction of the original channels (``widths0``; of the weights for magnitude) that ``model`` lacks."""
    if cfg.method == "magnitude":
        return sparsity(model, cfg.protect)
    if cfg.method == "none":
        return 0.0  # nothing is pruned, whatever ratio says
    now = channel_widths(model, cfg.protect)
    return 1 - sum(now.get(n, 0) for n in widths0) / max(sum(widths0.values()), 1)


def check_removed(model: nn.Module, cfg: PruneConfig, widths0: dict[str, int], asked: float, where: str,
                  previous: float = 0.0) -> float:
    """The removed fraction ``model`` reached; refused when it is further than ``cfg.ratio_tolerance`` from
    ``asked``, or no more than the ``previous`` level's (a level is never named for a ratio it did not reach)."""
    removed = removed_fraction(model, cfg, widths0)
    what = "weights" if cfg.method == "magnitude" else "channels"
    if cfg.method != "none" and asked > 0 and removed <= previous:
        raise EdgeCompressError(f"{where} removed no more of the {what} than the level before it ({removed:.0%}), "
                                f"so it would be the same network under another name; lower prune.round_to or drop "
                                f"the level from prune.ladder")
    if cfg.method == "none" or abs(removed - asked) <= cfg.ratio_tolerance:
        return removed
    now = channel_widths(model, cfg.protect)
    worst = sorted(widths0, key=lambda n: (now.get(n, 0) / widths0[n], n))[:3]
    shrunk = ", ".join(f"{n} {widths0[n]} -> {now.get(n, 0)}" for n in worst)
    layers = f" ({shrunk})" if cfg.method == "channel" else ""
    fix = (f"prune.round_to={cfg.round_to} (and any GroupNorm groups) floors these widths too coarsely: lower "
           "prune.round_to (1 keeps exact counts)" if removed > asked else
           "some layers could not be pruned (a layer torch-pruning cannot trace, or only protected ones left): "
           "lower prune.ratio / prune.ladder")
    raise EdgeCompressError(f"{where} asked to remove {asked:.0%} of the {what} and removed {removed:.0%}{layers}; "
                            f"{fix}, or widen prune.ratio_tolerance ({cfg.ratio_tolerance})")


def prune_step(model: nn.Module, cfg: PruneConfig, ratio: float, input_shape: tuple[int, ...],
               batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """Apply one pruning step of ``ratio`` with ``cfg.method`` (``batch`` feeds apoz/taylor)."""
    if cfg.method == "none":
        return model
    if cfg.method == "magnitude":
        return prune_magnitude(model, ratio, cfg.global_ranking, cfg.protect)
    return prune_channels(model, input_shape, ratio, cfg, batch)


# ---------------------------------------------------------------- metrics and the iterative loop

def structure_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Params, MACs, weight sparsity, non-zero parameters and stored sizes (dense and sparse)."""
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"params": count_params(model), "nonzero_params": nonzero,
            "macs": count_macs(model, input_shape), "sparsity": sparsity(model), **sparse_size(model)}


def onnx_latency(model: nn.Module, input_shape: tuple[int, ...], runs: int = 200, threads: int = 1) -> float:
    """Batch-1 p50 latency (ms) of ``model`` exported to fp32 ONNX, timed by the runner's library functions."""
    sidecar = {"input_shape": [1, *input_shape], "layout": "NCHW", "input_dtype": "float32",
               "mean": [0.0] * input_shape[0], "std": [1.0] * input_shape[0]}
    with tempfile.TemporaryDirectory(prefix="prune-latency-") as d:
        path = Path(d) / "model.onnx"
        export_onnx(model, input_shape, path)
        session = load_session(path, "onnxruntime", threads)
        res = benchmark(session, sidecar, warmup=min(20, runs), runs=runs)
    model.to(memory_format=torch.channels_last)
    return float(res["latency_ms"]["p50"])


# on_level(name, a deep copy of the model at that level, the level's report entry)
LevelCallback = Callable[[str, nn.Module, dict[str, Any]], None]


def prune_and_finetune(model: nn.Module, teacher: nn.Module | None, ds: Dataset, cfg: PruneConfig,
                       members: Sequence[nn.Module] = (), multihead: MultiHeadKDConfig | None = None,
                       targets: SoftTargets | None = None,
                       on_level: LevelCallback | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Iterative schedule: ``cfg.steps`` x (prune a step, fine-tune with the KD loss); per-step metrics.

    ``cfg.finetune``'s epochs are spent at every step. With ``members`` (the ensemble
    beside ``teacher``) fine-tuning distils the ensemble, as the distill stage did (``multihead``: a
    MultiHeadKDConfig for a multi-head student); ``targets`` are the teachers' stored logits (distill
    stage), replayed instead of running the teachers when they fit ``cfg.finetune``. Every step records params, MACs, sizes, val
    accuracy before and after fine-tuning and the fp32 ONNX batch-1 p50 latency.
    Then the ladder: one more step + fine-tune up to each ``cfg.ladder`` level (report ``ladder``).
    ``on_level`` gets the ``ratio`` level and every ladder level; the returned model is the ``ratio`` level.
    """
    t = tensors(ds)
    shape = tuple(ds.input_shape)
    has_val = len(t["val"][0]) > 0

    def latency() -> float | None:
        return onnx_latency(model, shape, cfg.latency_runs) if cfg.latency_runs else None

    def val_accuracy() -> float | None:
        return evaluate(model, *t["val"])["accuracy"] if has_val else None

    finetune = cfg.finetune
    gen = torch.Generator().manual_seed(finetune.seed)
    pick = torch.randperm(len(t["train"][0]), generator=gen)[:cfg.importance_samples]
    batch = (t["train"][0][pick], t["train"][1][pick])
    before = {**structure_stats(model, shape), "test": evaluate(model, *t["test"]),
              "val_accuracy": val_accuracy(), "latency_p50_ms": latency()}
    tune, tuned_from = finetuner(model, teacher, members, finetune, cfg.temperature, cfg.alpha, multihead, targets)
    widths0, reached = channel_widths(model, cfg.protect), [0.0]  # reached: the removed fraction of each level

    def advance(r: float, cum: float, name: str, where: str) -> dict[str, Any]:
        """Prune one step of ``r`` (reaching ``cum`` removed), fine-tune; what the report records of it."""
        prune_step(model, cfg, r, shape, batch)
        removed = check_removed(model, cfg, widths0, cum, where, reached[-1])
        reached.append(removed)
        pruned_acc = val_accuracy()
        hooks, masks = [], {}
        if cfg.method == "magnitude":
            # Keep pruned weights at zero while fine-tuning: mask their gradients, re-apply the mask after.
            masks = {n: (p != 0).float() for n, p in model.named_parameters() if p.ndim > 1}
            hooks = [p.register_hook(lambda g, m=masks[n]: g * m) for n, p in model.named_parameters() if n in masks]
        history = tune(*t["train"], fill=crop_fill(ds), val=t["val"], name=name)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        return {"step_ratio": r, "target_removed": cum, "removed": removed, **structure_stats(model, shape),
                "val_accuracy_before_finetune": pruned_acc, "val_accuracy": val_accuracy(),
                "latency_p50_ms": latency(), "history": history}

    steps = [{"step": i + 1, **advance(r, cum, f"prune step {i + 1}/{cfg.steps}",
                                           f"prune step {i + 1}/{cfg.steps} of prune.ratio {cfg.ratio:g}")}
             for i, (r, cum) in enumerate(zip(step_ratios(cfg), cumulative_ratios(cfg)))]
    after = {**structure_stats(model, shape), "removed": reached[-1], "test": evaluate(model, *t["test"]),
             "latency_p50_ms": steps[-1]["latency_p50_ms"] if steps else before["latency_p50_ms"]}
    # The ladder keeps pruning ``model`` in place: hand back a snapshot of the ratio level instead.
    result = copy.deepcopy(model) if cfg.ladder else model
    if on_level is not None:
        on_level(level_name(cfg.ratio), copy.deepcopy(model), {
            "name": level_name(cfg.ratio), "target_removed": cfg.ratio, **after,
            "val_accuracy": steps[-1]["val_accuracy"]})
    ladder = []
    for r, level in zip(ladder_ratios(cfg), cfg.ladder):
        entry = advance(r, level, f"ladder {level:g}", f"prune.ladder level {level:g} ({level_name(level)})")
        history = entry.pop("history")  # after the metrics, as in ``steps``
        ladder.append({"name": level_name(level), **entry, "test": evaluate(model, *t["test"]), "history": history})
        if on_level is not None:
            on_level(ladder[-1]["name"], copy.deepcopy(model), ladder[-1])
    report = {"method": cfg.method, "criterion": cfg.criterion, "ratio": cfg.ratio, "schedule": cfg.schedule,
              "finetune_teacher": tuned_from,
              "global_ranking": cfg.global_ranking, "protect": list(cfg.protect),
              "latency": {"format": "fp32 onnx", "runtime": "onnxruntime", "batch": 1, "threads": 1,
                          "runs": cfg.latency_runs, "statistic": "p50 ms, this machine"},
              "before": before, "after": after, "steps": steps, "ladder": ladder,
              "params_ratio": after["params"] / before["params"], "macs_ratio": after["macs"] / before["macs"]}
    if cfg.method == "magnitude":
        report["note"] = ("unstructured sparsity: dense runtimes (onnxruntime, LiteRT) run this model no faster "
                          "and store it no smaller (see latency_p50_ms and dense_bytes); only a sparse encoding "
                          f"shrinks it, to {after['sparse_bytes']} of {after['dense_bytes']} bytes here")
    return result, report
