"""DVC stage: train the once-for-all (elastic) student once and write its slices as ordinary student checkpoints."""

from pathlib import Path

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.distill import DistillConfig
from edgecompress.training.elastic import ElasticConfig, check_distill, elastic, save_slices
from edgecompress.training.soft_targets import load_soft_targets
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Train the elastic student and extract its slices.", [
        ("--teacher", "teacher checkpoint"), ("--soft-targets", "the teachers' stored logits (the distill stage's)"),
        ("--out", "directory of slice checkpoints"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints"), ("--live", "directory of dvclive curves")])
    cfg, distill = read(params, "elastic", ElasticConfig), read(params, "distill", DistillConfig)
    if not cfg.enabled:
        save_slices(args.out, [], lambda s: {})
        write_json(args.metrics, {"enabled": False})
        if args.live:  # the stage's declared plots folder, empty: DVC needs every output to exist
            Path(args.live, "plots", "metrics").mkdir(parents=True, exist_ok=True)
        return "elastic.enabled is false: no slices"
    check_distill(distill)  # before loading anything
    sources = [load_checkpoint(args.teacher)[0]]
    if distill.source == "ensemble":
        indices = read(params, "train_teacher", TeacherConfig).members
        sources += list(stage.load_members(args.members, indices, "distill.source: ensemble").values())
    ds = stage.data(params)
    _, slices, report = elastic(ds, distill, cfg, load_soft_targets(args.soft_targets), sources)
    if not stage.main_process():  # under torchrun rank 0 alone writes
        return None
    save_slices(args.out, slices, lambda s: stage.meta(ds, params, "elastic", args.soft_targets, s.report))
    write_json(args.metrics, report)
    stage.log_curves(args.live, {"elastic": report["history"]})
    return f"{len(slices)} slices after {report['training_seconds']:.0f} s of training: " + ", ".join(
        f"{s.name} val {s.report['val']['accuracy']:.4f}" for s in slices if s.report["val"])


if __name__ == "__main__":
    main()
