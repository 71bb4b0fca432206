"""DVC stage: prune the student (structured channels by default) and fine-tune it with KD."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.compression.prune import PruneConfig, finetune_plan, prune_and_finetune
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.models import arch_of
from edgecompress.training.soft_targets import load_soft_targets
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Prune and fine-tune the student.", [
        ("--student", "student checkpoint"), ("--teacher", "teacher checkpoint"),
        ("--out", "pruned checkpoint"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints (prune.source: ensemble)"),
                  ("--live", "directory of dvclive training curves"),
                  ("--soft-targets", "the teachers' stored logits (distill stage)")])
    cfg = read(params, "prune", PruneConfig)
    student, smeta = load_checkpoint(args.student)
    teacher, _ = load_checkpoint(args.teacher)
    source, multihead = finetune_plan(cfg, student, smeta, args.student)
    members = []
    if source == "ensemble":
        indices = read(params, "train_teacher", TeacherConfig).members
        members = list(stage.load_members(args.members, indices, "prune.source: ensemble").values())
    ds = stage.data(params)
    targets = load_soft_targets(args.soft_targets) if args.soft_targets else None
    model, report = prune_and_finetune(student, teacher, ds, cfg, members, multihead, targets)
    if not stage.main_process():  # under torchrun rank 0 alone writes
        return None
    save_checkpoint(args.out, model, arch_of(model), stage.meta(ds, params, "prune", args.student, report["after"]))
    write_json(args.metrics, report)
    stage.log_curves(args.live, {f"step-{s['step']}": s["history"] for s in report["steps"]})
    return (f"test accuracy {report['after']['test']['accuracy']:.4f}, params x{report['params_ratio']:.2f}, "
            f"MACs x{report['macs_ratio']:.2f}")


if __name__ == "__main__":
    main()
