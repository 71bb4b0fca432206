"""DVC stage: train the ResNet-style teacher, or (with --member i) ensemble member i, or bring the user's own
(train_teacher.source). Paths come from dvc.yaml."""

from edgecompress import stage
from edgecompress.checkpoint import save_checkpoint
from edgecompress.training.teacher import TeacherConfig, train_teacher
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.log import get_logger
from edgecompress.config import read, section


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Train the teacher or one ensemble member.",
                               [("--out", "teacher checkpoint"), ("--metrics", "metrics JSON")],
                               optional=[("--member", "ensemble member index (seed = train.seed + index); default 0, "
                                                      "the teacher itself"), ("--teacher", "the trained teacher's "
                                         "checkpoint (member_init: teacher)"), ("--live", "dvclive curves directory")])
    sec = section(params, "train_teacher")
    cfg = read(params, "train_teacher", TeacherConfig)
    member = int(args.member or 0)
    cfg = cfg.member(member, args.teacher)
    if member:
        get_logger("teacher").info(f"ensemble member {member} of {cfg.ensemble_size}: {cfg.describe_member()}")
    ds = stage.data(params)
    model, arch, report = train_teacher(ds, cfg)
    if not stage.main_process():  # under torchrun rank 0 alone writes
        return None
    metrics = {k: report[k] for k in ("test", "val", "params", "macs")}
    # The checkpoint records how this model was trained; ensemble bookkeeping keys are left out so that
    # growing the ensemble leaves the existing members byte-identical (and dvc's cache valid).
    trained_by = {k: v for k, v in sec.items() if k not in TeacherConfig.ENSEMBLE_KEYS}
    meta = stage.meta(ds, {**params, "train_teacher": trained_by}, "train_teacher", None, metrics)
    if member:
        meta["member"] = {"index": member, "seed": cfg.train.seed, "epochs": cfg.train.epochs, "lr": cfg.train.lr,
                          "init": cfg.member_init}
    save_checkpoint(args.out, model, arch, meta)
    write_json(args.metrics, {**metrics, "member": member, "seed": cfg.train.seed, "epochs": report["history"]})
    # A brought teacher trains no epochs: one point (its validation accuracy) keeps the plot an output.
    history = report["history"] or [{"epoch": 0, "val_accuracy": (metrics["val"] or metrics["test"])["accuracy"]}]
    stage.log_curves(args.live, {f"member-{member}" if member else "teacher": history})
    return (f"{cfg.source} {cfg.model}: " if cfg.source != "train" else "") + f"test accuracy {metrics['test']['accuracy']:.4f}"


if __name__ == "__main__":
    main()
