"""DVC stage: students of other widths (students.widths), each distilled as the distill stage distils its own."""

from pathlib import Path

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.distill import DistillConfig, distill_metrics
from edgecompress.training.soft_targets import load_soft_targets
from edgecompress.training.students import (StudentsConfig, save_students, students_metrics, train_students,
                                            widths_for)
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Distil the students of other widths.", [
        ("--teacher", "teacher checkpoint"), ("--soft-targets", "the teachers' stored logits (the distill stage's)"),
        ("--out", "directory of student checkpoints"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints"), ("--live", "directory of dvclive curves")])
    cfg, distill = read(params, "students", StudentsConfig), read(params, "distill", DistillConfig)
    students, metrics = [], {}
    if widths_for(distill, cfg):  # none: the stage still writes its (empty) outputs; an earlier run's students go
        teacher, tmeta = load_checkpoint(args.teacher)
        indices = read(params, "train_teacher", TeacherConfig).members if distill.source == "ensemble" else []
        members = list(stage.load_members(args.members, indices, "distill.source: ensemble").values()) if indices else []
        ds = stage.data(params)
        students = train_students(ds, distill, cfg, teacher, members, load_soft_targets(args.soft_targets))
        if not stage.main_process():  # under torchrun rank 0 alone writes
            return None
        metrics = students_metrics(students, distill, cfg, tmeta["metrics"]["params"])
    save_students(args.out, students, lambda r: stage.meta(ds, params, "students", args.soft_targets,
                                                           distill_metrics(r, distill, tmeta["metrics"]["params"])))
    write_json(args.metrics, {"students": metrics})
    stage.log_curves(args.live, {s.name: s.report["kd"]["history"] for s in students})
    if args.live:  # the declared plots folder exists even without students (DVC needs every output)
        Path(args.live, "plots", "metrics").mkdir(parents=True, exist_ok=True)
    return ", ".join(f"{n} test {m['test']['accuracy']:.4f} ({m['params']} params)" for n, m in metrics.items()) \
        or "no students of other widths"


if __name__ == "__main__":
    main()
