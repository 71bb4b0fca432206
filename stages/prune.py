"""DVC stage: prune what prune.source_model names (the student, an elastic slice, the teacher), KD fine-tuned."""

from edgecompress import stage
from edgecompress.checkpoint import arch_after_pruning, save_checkpoint
from edgecompress.compression.ladder import write_ladder
from edgecompress.compression.finetune import finetune_plan, pruning_subject
from edgecompress.compression.prune import PruneConfig, prune_and_finetune
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.soft_targets import load_soft_targets
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Prune and fine-tune the student.", [
        ("--student", "student checkpoint"), ("--teacher", "teacher checkpoint"),
        ("--out", "pruned checkpoint"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints (prune.source: ensemble)"),
                  ("--live", "directory of dvclive training curves"), ("--soft-targets", "the teachers' stored logits"),
                  ("--ladder", "one checkpoint per pruning level"), ("--elastic", "the elastic student's slices")])
    cfg = read(params, "prune", PruneConfig)
    (student, smeta, parent), teacher = pruning_subject(cfg.source_model, args.student, args.teacher, args.elastic)
    source, multihead = finetune_plan(cfg, student, smeta, parent)
    indices = read(params, "train_teacher", TeacherConfig).members if source == "ensemble" else []
    members = list(stage.load_members(args.members, indices, "prune.source: ensemble").values()) if indices else []
    ds, levels = stage.data(params), []  # type: ignore[var-annotated]
    targets = load_soft_targets(args.soft_targets) if args.soft_targets else None
    keep = (lambda *level: levels.append(level)) if args.ladder else None  # copies only if written
    model, report = prune_and_finetune(student, teacher, ds, cfg, members, multihead, targets, on_level=keep)
    if not stage.main_process():  # under torchrun rank 0 alone writes
        return None
    # source_model: which network was pruned (student, teacher, elastic-w150, ...); parent is its checkpoint.
    meta = lambda m: {**stage.meta(ds, params, "prune", parent, m), "source_model": cfg.source_model}  # noqa: E731
    save_checkpoint(args.out, model, arch_after_pruning(model, smeta["arch"]), meta(report["after"]))
    if args.ladder:
        write_ladder(args.ladder, levels, meta, smeta["arch"])
    write_json(args.metrics, report)
    stage.log_curves(args.live, {f"step-{s['step']}": s["history"] for s in report["steps"]}
                     | {v["name"]: v["history"] for v in report["ladder"]})
    return ", ".join(f"{v.get('name', 'pruned')} {v['test']['accuracy']:.4f}" for v in [report["after"], *report["ladder"]])


if __name__ == "__main__":
    main()
