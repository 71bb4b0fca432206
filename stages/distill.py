"""DVC stage: distill the teacher (or the deep ensemble) into the depthwise-separable student."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.distill import DistillConfig, distill, distill_metrics, teacher_targets
from edgecompress.training.soft_targets import save_soft_targets
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Distill the student.", [("--teacher", "teacher checkpoint"),
                                                         ("--out", "student checkpoint"), ("--metrics", "metrics JSON")],
                               optional=[("--members", "directory of ensemble member checkpoints"), ("--live", "directory of dvclive training curves"),
                                         ("--soft-targets", "where to store the teachers' logits (distill.views)")])
    cfg = read(params, "distill", DistillConfig)
    teacher, tmeta = load_checkpoint(args.teacher)
    members = []
    if cfg.source == "ensemble":
        indices = read(params, "train_teacher", TeacherConfig).members
        members = list(stage.load_members(args.members, indices, "distill.source: ensemble").values())
    ds = stage.data(params)
    targets, cost = teacher_targets(teacher, ds, cfg, members)
    if args.soft_targets and stage.main_process():
        save_soft_targets(args.soft_targets, targets)
    student, arch, report = distill(teacher, ds, cfg, members, targets)
    if not stage.main_process():  # under torchrun rank 0 alone writes
        return None
    metrics = {**distill_metrics(report, cfg, tmeta["metrics"]["params"]), "soft_targets": cost}
    save_checkpoint(args.out, student, arch, stage.meta(ds, params, "distill", args.teacher, metrics))
    write_json(args.metrics, {**metrics, "epochs": report["kd"]["history"]})
    stage.log_curves(args.live, {"student": report["kd"]["history"],
                                 **({"baseline": report["baseline"]["history"]} if "baseline" in report else {})})
    gain = f", KD gain {metrics['kd_gain_points']:+.2f} pt" if "kd_gain_points" in metrics else ""
    return f"student test accuracy {metrics['test']['accuracy']:.4f}{gain}"


if __name__ == "__main__":
    main()
