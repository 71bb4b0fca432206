"""Students of other widths: each a fresh MobileNet trained alone, exactly as the distill stage trains its student.

The distill stage makes one student; a target whose budget sits between that student and its pruned copies
(a 64 KiB flash slot, a 128 KiB download) is served best by a network sized for it and trained for longer,
not by pruning. ``students.widths`` names those sizes: each width (distill.width's meaning: a multiplier
of distill.channels) is distilled with distill's recipe (its scheme, source, temperature, alpha and
train section, the same stored soft targets: no teacher runs again) for ``students.epochs`` epochs, and
saved as an ordinary student checkpoint, ``student-w<percent>.pt``, that joins the candidate pool.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from edgecompress.checkpoint import save_checkpoint
from edgecompress.data import Dataset
from edgecompress.dirs import whole_dir
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.training.distill import DistillConfig, distill, distill_metrics
from edgecompress.training.soft_targets import SoftTargets

log = get_logger("students")

PREFIX = "student-w"


@dataclass(frozen=True)
class TrainedStudent:
    """One student of another width: its candidate name, the network, its arch dict and distill's report."""

    name: str  # student-w097, ...
    model: nn.Module
    arch: dict[str, Any]
    report: dict[str, Any]


@dataclass(frozen=True)
class StudentsConfig:
    """``students`` in params.yaml: the extra students' widths and how long each trains."""

    widths: tuple[float, ...] = ()  # multipliers of distill.channels (distill.width's meaning); () makes none
    epochs: int | None = None  # each one's training epochs (None: distill.train.epochs; the rest of distill.train)

    def __post_init__(self) -> None:
        for w in self.widths:
            if isinstance(w, bool) or not w > 0:
                raise EdgeCompressError(f"invalid value students.widths={list(self.widths)}: every width must be a "
                                        f"number > 0 (a multiplier of distill.channels, e.g. [0.97, 1.75])")
        names = [student_name(w) for w in self.widths]
        if len(set(names)) != len(names):
            raise EdgeCompressError(f"invalid value students.widths={list(self.widths)}: two widths round to the same "
                                    f"name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                                    f"keep widths at least 0.01 apart")
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise EdgeCompressError(f"invalid value students.epochs={self.epochs}: give a whole number >= 1, or null "
                                    f"for distill.train.epochs")


def student_name(width: float) -> str:
    """The candidate name of the student of ``width``: ``student-w097`` for 0.97."""
    return f"{PREFIX}{round(width * 100):03d}"


def widths_for(distill_cfg: DistillConfig, cfg: StudentsConfig) -> tuple[float, ...]:
    """The widths to train: ``cfg.widths``, or none with a user's own student (distill.student has no width to
    set; the default widths must not stop a user who brings one, so one line says so instead)."""
    if cfg.widths and distill_cfg.student:
        log.info(f"students.widths {list(cfg.widths)} size our MobileNet, but distill.student is your own network "
                 f"({distill_cfg.student}): no students of other widths (set students.widths: [] to silence this)")
        return ()
    return cfg.widths


def student_config(distill_cfg: DistillConfig, cfg: StudentsConfig, width: float) -> DistillConfig:
    """distill's recipe at ``width`` for ``cfg.epochs`` epochs (no labels-only baseline: distill measures that)."""
    train = replace(distill_cfg.train, epochs=cfg.epochs or distill_cfg.train.epochs)
    return replace(distill_cfg, width=width, train=train, baseline=False)


def train_students(ds: Dataset, distill_cfg: DistillConfig, cfg: StudentsConfig, teacher: nn.Module,
                   members: Sequence[nn.Module], targets: SoftTargets) -> list[TrainedStudent]:
    """Each width's student (``widths_for``), trained as the distill stage trains its own."""
    out = []
    for w in widths_for(distill_cfg, cfg):
        name = student_name(w)
        log.info(f"{name}: width {w}, {cfg.epochs or distill_cfg.train.epochs} epochs")
        model, arch, report = distill(teacher, ds, student_config(distill_cfg, cfg, w), members, targets)
        out.append(TrainedStudent(name, model, arch, report))
    return out


def students_metrics(students: Sequence[TrainedStudent], distill_cfg: DistillConfig, cfg: StudentsConfig,
                     teacher_params: int) -> dict[str, Any]:
    """Each student's metrics as the distill stage records its own, with its width, epochs and seconds."""
    return {s.name: {**distill_metrics(s.report, distill_cfg, teacher_params), "width": w,
                     "epochs": cfg.epochs or distill_cfg.train.epochs,
                     "seconds": sum(h["seconds"] for h in s.report["kd"]["history"])}
            for s, w in zip(students, widths_for(distill_cfg, cfg))}


def save_students(out: str | Path, students: Sequence[TrainedStudent],
                  meta: Callable[[dict[str, Any]], dict[str, Any]]) -> list[Path]:
    """Each student as ``out/<name>.pt`` (+ .json: ``meta`` of its report); the directory appears whole, so it
    holds this run's students only."""
    with whole_dir(out) as scratch:
        for s in students:
            save_checkpoint(scratch / f"{s.name}.pt", s.model, s.arch, meta(s.report))
    return [Path(out) / f"{s.name}.pt" for s in students]
