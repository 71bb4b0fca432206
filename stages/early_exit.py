"""DVC stage: exit heads on the chain's models (early_exit.models), thresholds chosen on validation; each
becomes the pool model <name>-ee, exported as cascades for targets with a mean-latency budget."""

from pathlib import Path

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.config import read
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.early_exit import EarlyExitConfig
from edgecompress.training.exit_checkpoints import exit_checkpoints


@friendly_main
def main() -> str | None:
    args, params = stage.setup("Train early exits (BranchyNet) on the chain's models.", [
        ("--teacher", "teacher checkpoint"), ("--student", "student checkpoint"), ("--pruned", "pruned checkpoint"),
        ("--out", "directory of early-exit checkpoints"), ("--metrics", "metrics JSON")],
        optional=[("--live", "directory of dvclive training curves")])
    cfg = read(params, "early_exit", EarlyExitConfig)
    sources = {"teacher": Path(args.teacher), "student": Path(args.student), "pruned": Path(args.pruned)}
    ds, teacher = stage.data(params), load_checkpoint(args.teacher)[0]
    meta = lambda metrics, parent: stage.meta(ds, params, "early_exit", parent, metrics)  # noqa: E731
    reports = exit_checkpoints(sources, teacher, ds, cfg, args.out, meta)
    write_json(args.metrics, {name: {k: v for k, v in r.items() if k != "history"} for name, r in reports.items()})
    stage.log_curves(args.live, {name: r["history"] for name, r in reports.items()})
    Path(args.live, "plots", "metrics").mkdir(parents=True, exist_ok=True)  # a dvc output, even with nothing trained
    return ", ".join(f"{name} val {r['cascade']['val_accuracy']:.4f} ({r['cascade']['val_exit_fractions'][0]:.0%} "
                     f"leave at the first exit)"
                     for name, r in reports.items()) or "early_exit.models is empty"


if __name__ == "__main__":
    main()
