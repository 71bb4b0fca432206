"""DVC stage: check one target profile's budgets by running its artifact with its runtime."""

from edgecompress import stage
from edgecompress.check import main_check
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.params import section


@friendly_main
def main() -> None:
    args, params = stage.setup("Check a target's budgets.", [
        ("--target", "target profile YAML"), ("--artifacts", "artifact directory from the export stage"),
        ("--out-json", "result JSON"), ("--out-md", "readable report"),
        ("--teacher", "teacher checkpoint (reference for budgets.max_drop)")])
    strict = section(params, "check").get("strict", False)
    if not isinstance(strict, bool):
        raise EdgeCompressError(f"params.yaml:check.strict={strict!r}: must be true or false")
    main_check(args.target, args.artifacts, f"{args.artifacts}/testset.npz", args.out_json, args.out_md, strict,
               teacher=args.teacher)


if __name__ == "__main__":
    main()
