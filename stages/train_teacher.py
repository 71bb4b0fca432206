"""DVC stage: train the ResNet-style teacher. Paths come from dvc.yaml."""

from edgecompress import stage
from edgecompress.checkpoint import save_checkpoint
from edgecompress.distill import TeacherConfig, train_teacher
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.params import section


@friendly_main
def main() -> None:
    args, params = stage.setup("Train the teacher.", [("--out", "teacher checkpoint"), ("--metrics", "metrics JSON")])
    cfg = TeacherConfig.from_dict(section(params, "train_teacher"))
    ds = stage.data(params)
    model, arch, report = train_teacher(ds, cfg)
    metrics = {k: report[k] for k in ("test", "val", "params", "macs")}
    save_checkpoint(args.out, model, arch, stage.meta(ds, params, "train_teacher", None, metrics))
    write_json(args.metrics, {**metrics, "epochs": report["history"]})


if __name__ == "__main__":
    main()
