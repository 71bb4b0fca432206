"""DVC stage: distill the teacher (or the deep ensemble) into the depthwise-separable student."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.distill import DistillConfig, distill
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.params import section
from edgecompress.teacher import TeacherConfig


@friendly_main
def main() -> None:
    args, params = stage.setup("Distill the student.", [("--teacher", "teacher checkpoint"),
                                                         ("--out", "student checkpoint"), ("--metrics", "metrics JSON")],
                               optional=[("--members", "directory of ensemble member checkpoints")])
    cfg = DistillConfig.from_dict(section(params, "distill"))
    teacher, tmeta = load_checkpoint(args.teacher)
    members = []
    if cfg.source == "ensemble":
        tcfg = TeacherConfig.from_dict(section(params, "train_teacher"))
        members = list(stage.load_members(args.members, tcfg.members, "distill.source: ensemble").values())
    ds = stage.data(params)
    student, arch, report = distill(teacher, ds, cfg, members)
    kd = report["kd"]
    metrics = {"test": kd["test"], "val": kd["val"], "params": kd["params"], "macs": kd["macs"],
               "scheme": cfg.scheme, "source": cfg.source, "heads": cfg.heads,
               "teacher_params": tmeta["metrics"]["params"],
               "params_fraction_of_teacher": kd["params"] / tmeta["metrics"]["params"]}
    for key in ("assistant", "peer", "generations"):
        if key in report:
            metrics[key] = report[key]
    if "head_accuracy" in kd:
        metrics["head_accuracy"] = kd["head_accuracy"]
    if "baseline" in report:
        metrics["baseline_test"] = report["baseline"]["test"]
        metrics["kd_gain_points"] = report["kd_gain_points"]
    save_checkpoint(args.out, student, arch, stage.meta(ds, params, "distill", args.teacher, metrics))
    write_json(args.metrics, {**metrics, "epochs": kd["history"]})


if __name__ == "__main__":
    main()
