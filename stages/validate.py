"""DVC stage: check params.yaml and the target profiles before any stage does work."""

from edgecompress import stage
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_text
from edgecompress.log import get_logger
from edgecompress.validate import remove_stale_members, validate_params


@friendly_main
def main() -> str:
    args, params = stage.setup("Validate params.yaml and the target profiles.",
                               [("--targets", "directory of target profiles"), ("--out", "stamp file")],
                               optional=[("--members", "comma-separated directories of ensemble member files")])
    cfg = validate_params(params, args.params, args.targets)
    member_dirs = args.members.split(",") if args.members else []
    for f in remove_stale_members(cfg["train_teacher"].members, member_dirs):
        get_logger("validate").info(f"removed {f}: member {f.name.split('.')[0]} is no longer in train_teacher.members")
    # Constant content: the stages after this one depend on it for ordering, and must not re-run
    # merely because the validation re-ran (any params change re-runs it).
    write_text(args.out, "params.yaml and target profiles valid\n")
    return f"params.yaml and {len(cfg['check'].targets)} target profiles valid"


if __name__ == "__main__":
    main()
