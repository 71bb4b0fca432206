"""DVC stage: check one target profile's budgets by running its artifact with its runtime."""

from edgecompress import stage
from edgecompress.config import read
from edgecompress.deploy.check import CheckConfig
from edgecompress.errors import friendly_main
from edgecompress.verdict import check_and_report


@friendly_main
def main() -> str:
    args, params = stage.setup("Check a target's budgets.", [
        ("--target", "target profile YAML"), ("--artifacts", "artifact directory from the export stage"),
        ("--out-json", "result JSON"), ("--out-md", "readable report"),
        ("--teacher", "teacher checkpoint (reference for budgets.max_drop)")],
        optional=[("--testset", "raw test split .npz (default: ARTIFACTS/testset.npz)")])
    cfg = read(params, "check", CheckConfig)
    # Records only: the report stage fails the pipeline after the summary says which target missed.
    testset = args.testset or f"{args.artifacts}/testset.npz"
    result = check_and_report(args.target, args.artifacts, testset, args.out_json,
                              args.out_md, cfg.strict, teacher=args.teacher, fail=False)
    p50 = (result.latency_ms or {}).get("p50")
    return f"{result.status} (p50 {p50:.4f} ms, accuracy {result.accuracy})"


if __name__ == "__main__":
    main()
