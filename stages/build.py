"""DVC stage: build one target, the most accurate candidate that meets its budgets, measured on its device."""

import os
from pathlib import Path

from edgecompress import stage
from edgecompress.config import read
from edgecompress.deploy.build import MeasurementCache, build_target
from edgecompress.deploy.build_report import plot_rows, render_markdown, summary
from edgecompress.deploy.check import CheckConfig
from edgecompress.deploy.frontier_plot import frontier_svg
from edgecompress.deploy.targets import load_target
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.fileio import write_json, write_text


@friendly_main
def main() -> str:
    args, params = stage.setup("Build a target from the candidate pool.", [
        ("--target", "target profile YAML"), ("--candidates", "candidate pool directory"),
        ("--out", "directory for the chosen artifact and its build record"), ("--metrics", "metrics JSON"),
        ("--out-md", "readable build report"), ("--plot", "latency-vs-accuracy plot data (JSON)"),
        ("--out-svg", "the frontier plot (SVG) the report embeds")],
        optional=[("--cache", "measurement cache directory (default .cache/measurements or $EDGECOMPRESS_CACHE)")])
    cfg = read(params, "check", CheckConfig)
    profile = load_target(args.target)
    record = build_target(profile, args.candidates, args.out, MeasurementCache(args.cache), strict=cfg.strict)
    write_json(args.metrics, summary(record))
    write_json(args.plot, plot_rows(record, profile.budgets))
    write_text(args.out_svg, frontier_svg(record, profile.budgets))
    # The report links the SVG by its path from the report's folder (both under reports/build/: its file name).
    link = Path(os.path.relpath(args.out_svg, Path(args.out_md).parent)).as_posix()
    write_text(args.out_md, render_markdown(record, profile.budgets, link))
    if record.error:
        raise EdgeCompressError(f"{record.error}\nsee {args.out_md}")
    s = record.search
    return (f"{record.status}: {record.chosen.name} ({s.device_runs} measured, {s.cache_hits} from "
            f"the cache, {s.skipped} skipped, of {s.candidates})")


if __name__ == "__main__":
    main()
