"""DVC stage: the candidate pool every target's build chooses from (each model x precision x engine, scored)."""

from edgecompress import stage
from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.export import ExportConfig, load_calibration
from edgecompress.compression.pool import PoolConfig, build_pool, pool_models
from edgecompress.compression.prune import PruneConfig
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str:
    args, params = stage.setup("Export and score every candidate model.", [
        ("--teacher", "teacher checkpoint"), ("--student", "distilled student checkpoint"),
        ("--pruned", "pruned student checkpoint (prune.ratio)"), ("--calibration", "calibration .npz"),
        ("--out", "candidate pool directory"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints"),
                  ("--ladder", "directory of the pruning ladder's checkpoints (pruned-<percent>.pt)"),
                  ("--clustered", "directory of the weight-clustered checkpoints (the cluster stage's)"),
                  ("--early-exit", "directory of early-exit checkpoints (the early_exit stage's)"),
                  ("--elastic", "directory of the elastic student's slices (the elastic stage's)"),
                  ("--students", "directory of the students of other widths (the students stage's)")])
    indices = read(params, "train_teacher", TeacherConfig).members
    members = list(stage.load_members(args.members, indices, "the ensemble candidate").values()) if indices else []
    models, aliases = pool_models(args.teacher, members, args.student, args.pruned, args.ladder,
                                  read(params, "prune", PruneConfig).ratio, args.clustered, args.early_exit,
                                  args.elastic, args.students)
    pool = read(params, "candidates", PoolConfig)
    index = build_pool(models, stage.data(params), load_calibration(args.calibration),
                       read(params, "calibrate", CalibrationConfig), read(params, "export", ExportConfig), args.out,
                       aliases, temperature=pool.temperature, workers=pool.processes())
    # dvc metrics: the index's summaries and each candidate's scores and sizes.
    scores = ("accuracy", "nll", "ece", "size_bytes", "package_bytes", "top1_agreement")
    head = {k: getattr(index, k) for k in ("scored_on", "reference", "pytorch", "temperature")}
    write_json(args.metrics, head | {"candidates": {c.name: {k: getattr(c, k) for k in scores}
                                                    for c in index.candidates}})
    return f"{len(index.candidates)} candidates from {len(models)} models"


if __name__ == "__main__":
    main()
