"""Choose which images of an unlabeled pool a person should label next, and write the list.

``read_pool`` (``active/pool.py``) reads a folder of images or an ``.npz`` (checked against the model's input),
``score_pool`` runs the model (its MC-dropout samples, the ensemble's members or a multi-head
student's heads where the strategy wants several predictions, its embeddings where it wants
distances), ``select_images`` applies one strategy (``strategies.choose``) and ``write_selection``
writes the CSV (file, rank, score, the model's guess) and a contact sheet of the chosen images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgecompress.active.pool import read_pool  # its users import it from here too
from edgecompress.active.strategies import NEEDS_EMBEDDINGS, NEEDS_SAMPLES, STRATEGIES, Scored, choose, class_histogram
from edgecompress.active.tolabel import format_selection
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path, write_text
from edgecompress.models import MultiHeadStudent, batched, feature_map
from edgecompress.uncertainty import has_dropout, mc_dropout_probs

MODELS = ("student", "pruned", "teacher", "ensemble")


@dataclass(frozen=True)
class SelectConfig:
    """``active_learning`` in params.yaml (and ``edgecompress select``'s options)."""

    # name -> a folder of images or an .npz: one dvc stage select@<name> each (none: no stage runs)
    pools: dict[str, str] | None = None
    model: str = "student"  # what scores the pool: student | pruned | teacher | ensemble (teacher + members)
    strategy: str = "entropy"
    budget: int = 100
    mc_samples: int = 10  # MC-dropout passes for bald on a single model with dropout
    seed: int = 0
    sheet_columns: int = 10  # contact sheet width in images

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise EdgeCompressError(f"invalid value model={self.model!r}: allowed {list(MODELS)}")
        bad = [k for k, v in (self.pools or {}).items() if not isinstance(v, str) or not str(k).replace("-", "")
               .replace("_", "").isalnum()]
        if bad:
            raise EdgeCompressError(f"invalid pools entries {bad}: each is name: path, the name letters, digits, "
                                    f"- or _ (it names the stage select@<name> and its outputs)")
        if self.strategy not in STRATEGIES:
            raise EdgeCompressError(f"invalid value strategy={self.strategy!r}: allowed {list(STRATEGIES)}")
        for name in ("budget", "mc_samples", "sheet_columns"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgeCompressError(f"invalid value {name}={v!r}: must be an integer >= 1")


@torch.no_grad()
def score_pool(models: Sequence[nn.Module], x: torch.Tensor, cfg: SelectConfig,
               labeled: torch.Tensor | None = None) -> Scored:
    """What ``models`` (one network, or an ensemble's members) say about the normalized pool ``x``.

    Samples for bald: the members (several models), the heads (a multi-head student) or
    ``cfg.mc_samples`` MC-dropout passes (one model with dropout). Embeddings for the distance-based
    strategies: the first model's pooled last feature map (``labeled``'s too, the k-center's first centres).
    """
    if not models:
        raise EdgeCompressError("no model to score the pool with")
    for m in models:
        m.eval()
    first = models[0]
    samples = None
    if len(models) > 1:
        each = [_probs(m, x) for m in models]
        widths = [p.shape[1] for p in each]
        if len(set(widths)) > 1:
            raise EdgeCompressError(f"the ensemble's members predict different numbers of classes ({widths}, in "
                                    f"the order given); give members trained on the same classes")
        samples = np.stack(each)
        probs = samples.mean(0)
    elif isinstance(first, MultiHeadStudent):
        samples = batched(lambda xb: torch.softmax(first.forward_heads(xb).double(), -1), x, 1000, dim=1).numpy()
        probs = samples.mean(0)
    else:
        probs = _probs(first, x)
        if cfg.strategy in NEEDS_SAMPLES:
            if not has_dropout(first):
                raise EdgeCompressError(f"strategy {cfg.strategy} on one network needs MC dropout, but "
                                        f"{type(first).__name__} has no dropout layer with p > 0: give a model "
                                        f"trained with dropout (train_teacher.dropout), the ensemble's members, "
                                        f"or a multi-head student, or pick another strategy")
            samples = batched(lambda xb: mc_dropout_probs(first, xb, cfg.mc_samples).double(), x, 1000,
                              channels_last=False, dim=1).numpy()
    emb = lab = None
    if cfg.strategy in NEEDS_EMBEDDINGS:
        emb = embed(first, x)
        lab = embed(first, labeled) if labeled is not None and len(labeled) else None
    return Scored(probs, samples, emb, lab)


def _probs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return batched(lambda xb: torch.softmax(model(xb).double(), -1), x, 1000).numpy()


def embed(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The pooled last feature map (N, D): what the model's classifier reads."""
    core = model.core if isinstance(model, MultiHeadStudent) else model

    def pooled(xb: torch.Tensor) -> torch.Tensor:
        f = feature_map(core, xb)
        return f.float().mean(dim=(2, 3))

    return batched(pooled, x, 1000).numpy()


def select_images(scored: Scored, cfg: SelectConfig) -> dict[str, Any]:
    """The chosen pool indices (most wanted first), their scores, the model's guesses and the class histogram."""
    idx, score = choose(cfg.strategy, scored, cfg.budget, cfg.seed)
    guess = scored.probs[idx].argmax(1)
    return {"indices": idx, "scores": score, "guesses": guess, "confidence": scored.probs[idx].max(1),
            "class_histogram": class_histogram(guess, scored.probs.shape[1])}


def write_selection(out_csv: str | Path, names: Sequence[str], x: np.ndarray, chosen: dict[str, Any],
                    class_names: Sequence[str], sheet: str | Path | None = None, columns: int = 10) -> None:
    """``out_csv``: file, rank, score, guess, confidence (a ``label`` column left for the person); a contact
    sheet PNG of the chosen images in rank order. Both appear whole."""
    rows = [(names[i], rank, s, class_names[g], c) for rank, (i, s, g, c) in
            enumerate(zip(chosen["indices"], chosen["scores"], chosen["guesses"], chosen["confidence"]), 1)]
    write_text(out_csv, format_selection(rows))  # written whole: a half-written list must never be labelled
    if sheet is not None:
        contact_sheet(x[chosen["indices"]], sheet, columns)


def contact_sheet(images: np.ndarray, path: str | Path, columns: int = 10, pad: int = 2) -> None:
    """uint8 (N, C, H, W) images in a grid, row by row in rank order, as one PNG."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for k, im in enumerate(images):
        r, q = divmod(k, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            im.transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid[:, :, 0] if c == 1 else grid).save(tmp, format="PNG")


def run_selection(pool: str | Path, checkpoints: Sequence[str | Path], cfg: SelectConfig, out_csv: str | Path,
                  sheet: str | Path | None = None, labeled: str | Path | None = None) -> dict[str, Any]:
    """The whole selection from files: the pool, the model (several checkpoints: an ensemble's members), the
    images labeled so far (an .npz with ``x``; k-center's first centres) -> the CSV and the contact sheet.
    Returns a summary (strategy, sizes, the class histogram of the chosen images)."""
    from edgecompress.checkpoint import load_checkpoint
    from edgecompress.data import normalize_images

    if not checkpoints:
        raise EdgeCompressError("no model given: --model models/student.pt (repeat it for an ensemble's members)")
    loaded = [load_checkpoint(p) for p in checkpoints]
    data = loaded[0][1].get("data") or {}
    if not data.get("input_shape"):
        raise EdgeCompressError(f"{checkpoints[0]} does not record its data (input shape, mean, std); re-run the "
                                f"stage that wrote it")
    shape = tuple(int(v) for v in data["input_shape"])
    _check_members(checkpoints, loaded, shape)
    names, x = read_pool(pool, shape)  # type: ignore[arg-type]
    if cfg.budget > len(x):
        raise EdgeCompressError(f"budget {cfg.budget} is larger than the pool ({len(x)} images in {pool}); lower "
                                f"the budget or add images to the pool")
    norm = lambda a: torch.from_numpy(normalize_images(a, data["mean"], data["std"]))  # noqa: E731
    lab = norm(read_pool(labeled, shape)[1]) if labeled else None  # type: ignore[arg-type]
    scored = score_pool([m for m, _ in loaded], norm(x), cfg, lab)
    chosen = select_images(scored, cfg)
    classes = list(data.get("class_names") or range(scored.probs.shape[1]))
    write_selection(out_csv, names, x, chosen, [str(c) for c in classes], sheet, cfg.sheet_columns)
    return {"pool": str(pool), "pool_size": len(x), "strategy": cfg.strategy, "budget": cfg.budget,
            "models": [str(p) for p in checkpoints], "csv": str(out_csv), "sheet": str(sheet) if sheet else None,
            "class_histogram": dict(zip(map(str, classes), chosen["class_histogram"])),
            "mean_score": float(np.mean(chosen["scores"][np.isfinite(chosen["scores"])])) if len(chosen["scores"]) else None}


def _check_members(checkpoints: Sequence[str | Path], loaded: Sequence[tuple[nn.Module, dict[str, Any]]],
                   shape: tuple[int, ...]) -> None:
    """An ensemble's members must take the same input and predict the same classes as the first model."""
    if len(loaded) < 2:
        return
    first = loaded[0][1].get("data") or {}
    want = _num_classes(loaded[0][0], shape, checkpoints[0])
    for path, (model, meta) in zip(checkpoints[1:], loaded[1:]):
        data = meta.get("data") or {}
        if data.get("input_shape") and tuple(int(v) for v in data["input_shape"]) != shape:
            raise EdgeCompressError(f"--model {path} takes input {tuple(data['input_shape'])}, but {checkpoints[0]} "
                                    f"takes {shape}: an ensemble's members must be trained on the same images")
        got = _num_classes(model, shape, path)
        names, first_names = data.get("class_names"), first.get("class_names")
        if got != want or (names and first_names and list(names) != list(first_names)):
            raise EdgeCompressError(f"--model {path} predicts {got} classes {list(names or [])}, but "
                                    f"{checkpoints[0]} predicts {want} {list(first_names or [])}: an ensemble's "
                                    f"members must be trained on the same classes")


def _num_classes(model: nn.Module, shape: tuple[int, ...], path: str | Path) -> int:
    # One blank image: the output width is the truth, whatever the metadata says (or leaves out).
    try:
        with torch.no_grad():
            return int(model.eval()(torch.zeros(1, *shape)).shape[-1])
    except Exception as e:
        raise EdgeCompressError(f"--model {path} cannot run on input {shape} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); an "
                                f"ensemble's members must be trained on the same images") from None
