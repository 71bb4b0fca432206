"""DVC stage select@<pool>: rank an unlabeled pool (active_learning.pools) and write the images to label next.

(Named to_label.py: a stages/select.py would shadow the standard library's select module.)"""

from pathlib import Path

from edgecompress import stage
from edgecompress.active.select import SelectConfig, run_selection
from edgecompress.config import read
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.fileio import write_json
from edgecompress.training.teacher import TeacherConfig


@friendly_main
def main() -> str:
    args, params = stage.setup("Choose which pool images to label next.", [
        ("--name", "the pool's name in active_learning.pools"), ("--models", "directory of the chain's checkpoints"),
        ("--out", "CSV of the images to label"), ("--sheet", "contact sheet PNG"), ("--metrics", "metrics JSON")])
    cfg = read(params, "active_learning", SelectConfig)
    pool = (cfg.pools or {}).get(args.name)
    if pool is None:
        raise EdgeCompressError(f"active_learning.pools has no pool {args.name!r} (it has {sorted(cfg.pools or {})})")
    models = Path(args.models)
    checkpoints = {"student": [models / "student.pt"], "pruned": [models / "pruned.pt"],
                   "teacher": [models / "teacher.pt"],
                   "ensemble": [models / "teacher.pt", *(models / "members" / f"member-{i}.pt"
                                                         for i in read(params, "train_teacher", TeacherConfig).members)]}
    summary = run_selection(pool, checkpoints[cfg.model], cfg, args.out, args.sheet)
    write_json(args.metrics, summary)
    return f"{cfg.budget} of {summary['pool_size']} images by {cfg.strategy} -> {args.out}"


if __name__ == "__main__":
    main()
