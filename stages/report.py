"""DVC stage: summary of all target checks plus latency vs accuracy of every artifact (dvc plots)."""

import json
from pathlib import Path

from edgecompress import stage
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.fileio import read_json, write_json, write_text
from edgecompress.params import section
from edgecompress.report import measure_artifacts, reliability, summary_markdown
from edgecompress.runner import fingerprint


@friendly_main
def main() -> None:
    args, params = stage.setup("Summarise checks and artifacts.", [
        ("--artifacts", "artifact directory"), ("--export-metrics", "export stage metrics"),
        ("--checks", "directory of check results"), ("--out-md", "summary markdown"),
        ("--out-plot", "latency-vs-accuracy plot data (JSON)"),
        ("--out-reliability", "directory of per-artifact reliability diagrams (JSON)")])
    targets = section(params, "check").get("targets") or []
    checks = []
    for name in targets:
        path = Path(args.checks) / f"{name}.json"
        if not path.exists():
            raise EdgeCompressError(f"{path} missing: check@{name} has not run (dvc repro)")
        checks.append(json.loads(path.read_text()))
    points = measure_artifacts(Path(args.artifacts), read_json(args.export_metrics, "export metrics"))
    write_json(args.out_plot, points)
    for name, rows in reliability(Path(args.artifacts), Path(args.artifacts) / "testset.npz").items():
        write_json(Path(args.out_reliability) / f"{name}.json", rows)
    write_text(args.out_md, summary_markdown(checks, points, fingerprint()))
    print(Path(args.out_md).read_text())


if __name__ == "__main__":
    main()
