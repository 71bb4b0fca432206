"""DVC stage: the models' accuracies with 95% intervals, all target checks, latency vs accuracy of every
artifact and their reliability diagrams (dvc plots)."""

from pathlib import Path

from edgecompress import stage
from edgecompress.config import read
from edgecompress.deploy.check import CheckConfig
from edgecompress.deploy.runner import fingerprint
from edgecompress.errors import friendly_main
from edgecompress.fileio import read_json, write_json, write_text
from edgecompress.report import load_checks, measure_artifacts, pipeline_gate, reliability, summary_markdown
from edgecompress.uncertainty import plot_rows
from edgecompress.verdict import record_then_fail


@friendly_main
def main() -> str:
    args, params = stage.setup("Summarise models, checks and artifacts.", [
        ("--artifacts", "artifact directory"), ("--export-metrics", "export stage metrics"),
        ("--uncertainty-metrics", "uncertainty stage metrics (every PyTorch model, test-set size)"),
        ("--distill-metrics", "distill stage metrics (the labels-only baseline)"),
        ("--checks", "directory of check results"), ("--out-md", "summary markdown"),
        ("--out-plot", "latency-vs-accuracy plot data (JSON)"),
        ("--out-reliability", "reliability diagrams of all artifacts (one JSON, one chart)")],
        optional=[("--students-metrics", "students stage metrics (the students of other widths)")])
    checks = load_checks(args.checks, read(params, "check", CheckConfig).targets)
    models = read_json(args.uncertainty_metrics, "uncertainty metrics")
    # The export stage verifies every artifact on the whole test split, the one the uncertainty stage counts.
    points = measure_artifacts(Path(args.artifacts), read_json(args.export_metrics, "export metrics"),
                               samples=models.get("samples"))
    write_json(args.out_plot, points)
    diagrams = reliability(Path(args.artifacts), Path(args.artifacts) / "testset.npz")
    write_json(args.out_reliability, plot_rows(diagrams, "artifact"))
    distill = read_json(args.distill_metrics, "distill metrics")
    students = read_json(args.students_metrics, "students metrics") if args.students_metrics else None
    summary = summary_markdown(checks, points, fingerprint(), models, distill, students)

    def write() -> None:
        write_text(args.out_md, summary)
        print(summary)

    # The check stages only record; the pipeline fails here, after the summary lists the failure.
    record_then_fail(write, pipeline_gate(checks, args.out_md))
    return f"{len(checks)} targets checked, {len(points)} artifacts measured"


if __name__ == "__main__":
    main()
