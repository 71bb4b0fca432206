"""DVC stage: distill the teacher into the depthwise-separable student."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.distill import DistillConfig, distill
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.params import section


@friendly_main
def main() -> None:
    args, params = stage.setup("Distill the student.", [("--teacher", "teacher checkpoint"),
                                                         ("--out", "student checkpoint"), ("--metrics", "metrics JSON")])
    cfg = DistillConfig.from_dict(section(params, "distill"))
    teacher, tmeta = load_checkpoint(args.teacher)
    ds = stage.data(params)
    student, arch, report = distill(teacher, ds, cfg)
    kd = report["kd"]
    metrics = {"test": kd["test"], "val": kd["val"], "params": kd["params"], "macs": kd["macs"],
               "teacher_params": tmeta["metrics"]["params"],
               "params_fraction_of_teacher": kd["params"] / tmeta["metrics"]["params"]}
    if "baseline" in report:
        metrics["baseline_test"] = report["baseline"]["test"]
        metrics["kd_gain_points"] = report["kd_gain_points"]
    save_checkpoint(args.out, student, arch, stage.meta(ds, params, "distill", args.teacher, metrics))
    write_json(args.metrics, {**metrics, "epochs": kd["history"]})


if __name__ == "__main__":
    main()
