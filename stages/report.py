"""DVC stage: summary of all target checks plus latency vs accuracy of every artifact (dvc plots)."""

from pathlib import Path

from edgecompress import stage
from edgecompress.config import read
from edgecompress.deploy.check import CheckConfig
from edgecompress.deploy.runner import fingerprint
from edgecompress.errors import friendly_main
from edgecompress.fileio import read_json, write_json, write_text
from edgecompress.report import load_checks, measure_artifacts, reliability, summary_markdown


@friendly_main
def main() -> None:
    args, params = stage.setup("Summarise checks and artifacts.", [
        ("--artifacts", "artifact directory"), ("--export-metrics", "export stage metrics"),
        ("--checks", "directory of check results"), ("--out-md", "summary markdown"),
        ("--out-plot", "latency-vs-accuracy plot data (JSON)"),
        ("--out-reliability", "directory of per-artifact reliability diagrams (JSON)")])
    checks = load_checks(args.checks, read(params, "check", CheckConfig).targets)
    points = measure_artifacts(Path(args.artifacts), read_json(args.export_metrics, "export metrics"))
    write_json(args.out_plot, points)
    for name, rows in reliability(Path(args.artifacts), Path(args.artifacts) / "testset.npz").items():
        write_json(Path(args.out_reliability) / f"{name}.json", rows)
    summary = summary_markdown(checks, points, fingerprint())
    write_text(args.out_md, summary)
    print(summary)


if __name__ == "__main__":
    main()
