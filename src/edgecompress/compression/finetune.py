"""What a pruned network keeps learning from while it is pruned (``finetune_plan``, ``finetuner``), and which
network is pruned at all (``pruning_subject``: the distilled student, a slice of the elastic student, or the
teacher itself)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from edgecompress.config import from_dict
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.models import MultiHeadStudent
from edgecompress.training.distill import DistillConfig
from edgecompress.training.ensemble import EnsembleTeacher, ensemble_kd_loss, fit_multihead
from edgecompress.training.loop import TrainConfig, fit
from edgecompress.training.losses import kd_loss
from edgecompress.training.multihead import MultiHeadKDConfig
from edgecompress.training.soft_targets import SoftTargets, fit_on_soft_targets, response
from edgecompress.usermodel import internals


class _Sourced(Protocol):
    source: str  # PruneConfig.source: teacher | ensemble | auto


# A slice of the elastic student, as ElasticMobileNet.name spells it: elastic-w150 (width 1.5 everywhere),
# elastic-w050-100-150-200 (one width per stage), elastic-w050-100-150-200-d1-2-1 (blocks kept per stage).
SLICE_NAME = re.compile(r"elastic-w\d{3,}(?:-\d{3,})*(?:-d\d+(?:-\d+)*)?")
SLICE_EXAMPLE = "elastic-<name>, e.g. elastic-w150: models/elastic/elastic-w150.pt"


def is_slice_name(name: object) -> bool:
    """Whether ``prune.source_model`` names a slice of the elastic student (the form only, not that it exists)."""
    return isinstance(name, str) and SLICE_NAME.fullmatch(name) is not None


def slice_checkpoint(name: str, elastic: str | Path | None) -> str:
    """The checkpoint of slice ``name`` in the elastic stage's directory ``elastic``; a missing one is refused
    with the slices that directory holds (the ones the last elastic run made)."""
    if elastic is None:
        raise EdgeCompressError(f"prune.source_model: {name} prunes a slice of the elastic student, but the prune "
                                "stage got no --elastic directory; add `--elastic models/elastic` to its cmd in "
                                "dvc.yaml (and models/elastic to its deps)")
    path = Path(elastic) / f"{name}.pt"
    if not path.is_file():
        made = sorted(p.stem for p in Path(elastic).glob("elastic-*.pt"))
        wrote = (f"the elastic stage made {', '.join(made)}; set prune.source_model to one of those, or add the "
                 "slice to elastic.slices" if made else
                 "the elastic stage made no slices; set elastic.enabled: true (and the slice in elastic.slices)")
        raise EdgeCompressError(f"{path} not found: {wrote}, then `dvc repro prune`")
    return str(path)


def pruning_subject(source_model: str, student: str, teacher: str, elastic: str | Path | None = None
                    ) -> tuple[tuple[nn.Module, dict[str, Any], str], nn.Module]:
    """((the network ``prune.source_model`` names, its metadata, its path), the teacher) from the checkpoints:
    the student; a slice of the elastic student (``elastic-w150``: an ordinary student checkpoint in the
    ``elastic`` directory, pruned and fine-tuned exactly as the student is); or a copy of the teacher, which
    then learns from its unpruned self (a teacher whose layers are out of reach, an exported program or an
    ONNX graph, is refused)."""
    from edgecompress.checkpoint import load_checkpoint

    t_model, t_meta = load_checkpoint(teacher)
    if source_model != "teacher":
        path = slice_checkpoint(source_model, elastic) if is_slice_name(source_model) else student
        return (*load_checkpoint(path), path), t_model
    internals(t_model, "prune.source_model: teacher")
    return (copy.deepcopy(t_model), t_meta, teacher), t_model


def finetune_plan(cfg: _Sourced, student: nn.Module, student_meta: dict[str, Any],
                  where: str) -> tuple[str, MultiHeadKDConfig | None]:
    """(source, multi-head loss config) for fine-tuning ``student``: resolves ``source: auto``.

    Measured (docs/results.md): heads fine-tuned on the mean alone drift apart (spurious MI, 1.8x the ECE),
    so a multi-head student keeps distilling the ensemble with the Ferianc loss it was distilled
    with (read from its checkpoint, ``where``); a single-head student gains nothing from the
    ensemble at 3x the fine-tuning time, so ``auto`` gives it the teacher.
    """
    multi = isinstance(student, MultiHeadStudent)
    source = cfg.source
    if source == "auto":
        source = "ensemble" if multi else "teacher"
        get_logger("prune").info(f"source auto: fine-tuning from the {source}")
    if source != "ensemble" or not multi:
        return source, None
    distilled = (student_meta.get("params") or {}).get("distill")
    if distilled is None:
        raise EdgeCompressError(f"{where} is a multi-head student without the distill params that made it "
                                "(params.distill in its metadata); re-run `dvc repro distill`, or set "
                                "prune.source: teacher")
    made_by = from_dict(DistillConfig, distilled, f"{where} (its distill params)")
    return source, made_by.multihead_config(student.num_heads)  # type: ignore[union-attr]


def finetuner(model: nn.Module, teacher: nn.Module | None, members: Sequence[nn.Module], finetune: TrainConfig,
               temperature: float, alpha: float, multihead: MultiHeadKDConfig | None,
               targets: SoftTargets | None = None) -> tuple[Callable[..., Any], str]:
    """``fit`` bound to the loss the student should keep learning from while it is pruned, and its name.

    With ``members`` the teacher is the whole ensemble (``teacher`` is member 0): ensemble KD, or, for
    a multi-head student and a ``multihead`` config, the Ferianc & Rodrigues loss (head i <- member i).
    The teachers' stored ``targets`` (the distill stage's) replace their forward passes when they fit
    the fine-tune's augmentation.
    """
    stored = targets is not None and targets.fits(finetune) and teacher is not None
    ensemble = [m for m in (teacher, *members) if m is not None]
    if not members:
        loss = kd_loss(temperature, alpha if teacher is not None else 0.0, finetune.label_smoothing)
        name = "teacher" if teacher is not None else "labels"
    else:
        if teacher is None:
            raise EdgeCompressError("ensemble fine-tuning needs the teacher (member 0) as well as the members")
        if multihead is not None:
            return (lambda *a, **kw: fit_multihead(model, ensemble, *a, finetune, multihead, targets=targets, **kw),
                    f"multi-head ensemble of {len(ensemble)}" + (", stored logits" if stored else ""))
        loss = ensemble_kd_loss(temperature, alpha, finetune.label_smoothing)
        name = f"ensemble of {len(ensemble)}"
    if stored:
        assert targets is not None

        def tune(x: torch.Tensor, y: torch.Tensor, **kw: Any) -> Any:
            logits = targets.select(ensemble, x, "prune")
            return fit_on_soft_targets(model, x, y, finetune, logits, targets, response(loss, bool(members)), **kw)

        return tune, name + ", stored logits"
    online = EnsembleTeacher(ensemble) if members else teacher
    return (lambda *a, **kw: fit(model, *a, finetune, loss_fn=loss, teacher=online, **kw)), name
