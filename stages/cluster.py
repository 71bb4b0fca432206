"""DVC stage: a weight-clustered copy of the student and pruned students (cluster.models) for the candidate pool."""

from pathlib import Path

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.compression.cluster import ClusterConfig, cluster_checkpoints
from edgecompress.compression.ladder import ladder_levels
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.soft_targets import load_soft_targets


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Cluster the students' weights (Deep Compression weight sharing).", [
        ("--student", "student checkpoint"), ("--pruned", "pruned checkpoint"), ("--teacher", "teacher checkpoint"),
        ("--out", "directory of clustered checkpoints"), ("--metrics", "metrics JSON")],
        optional=[("--ladder", "the pruning ladder's checkpoints"), ("--soft-targets", "the teachers' stored logits"),
                  ("--live", "directory of dvclive training curves")])
    cfg = read(params, "cluster", ClusterConfig)
    sources = {"student": Path(args.student), "pruned": Path(args.pruned),
               **{p.stem: p for p in ladder_levels(args.ladder)}}
    ds, teacher = stage.data(params), load_checkpoint(args.teacher)[0]
    targets = load_soft_targets(args.soft_targets) if args.soft_targets and cfg.models else None
    meta = lambda metrics, parent: stage.meta(ds, params, "cluster", parent, metrics)  # noqa: E731
    reports = cluster_checkpoints(sources, teacher, ds, cfg, args.out, meta, targets)
    write_json(args.metrics, {name: {k: v for k, v in r.items() if k != "history"} for name, r in reports.items()})
    stage.log_curves(args.live, {name: r["history"] for name, r in reports.items()})
    return ", ".join(f"{name} {r['accuracy']:.4f}" for name, r in reports.items()) or "cluster.models is empty"


if __name__ == "__main__":
    main()
