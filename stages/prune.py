"""DVC stage: prune the student (structured channels by default) and fine-tune with KD."""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint, save_checkpoint
from edgecompress.distill import SOURCES, DistillConfig
from edgecompress.errors import EdgeCompressError, friendly_main
from edgecompress.fileio import write_json
from edgecompress.models import arch_of
from edgecompress.multihead import MultiHeadStudent
from edgecompress.params import section
from edgecompress.prune import PruneConfig, prune_and_finetune
from edgecompress.teacher import TeacherConfig
from edgecompress.train import TrainConfig, from_dict


@friendly_main
def main() -> None:
    args, params = stage.setup("Prune and fine-tune the student.", [
        ("--student", "student checkpoint"), ("--teacher", "teacher checkpoint"),
        ("--out", "pruned checkpoint"), ("--metrics", "metrics JSON")],
        optional=[("--members", "directory of ensemble member checkpoints (prune.source: ensemble)")])
    sec = section(params, "prune")
    finetune = TrainConfig.from_dict(sec.pop("finetune", {}), "params.yaml:prune.finetune")
    temperature, alpha = sec.pop("temperature", 4.0), sec.pop("alpha", 0.9)
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise EdgeCompressError(f"params.yaml:prune.alpha={alpha!r}: must be a number within [0, 1]")
    source = sec.pop("source", "auto")
    if source not in (*SOURCES, "auto"):
        raise EdgeCompressError(f"params.yaml:prune.source={source!r}: allowed {[*SOURCES, 'auto']} "
                                "(what the pruned student is fine-tuned from)")
    cfg = from_dict(PruneConfig, sec, "params.yaml:prune")
    student, smeta = load_checkpoint(args.student)
    teacher, _ = load_checkpoint(args.teacher)
    if source == "auto":
        # Measured (README): heads fine-tuned on the mean alone drift apart (spurious MI, 1.8x the ECE);
        # a single-head student gains nothing from the ensemble at 3x the fine-tuning time.
        source = "ensemble" if isinstance(student, MultiHeadStudent) else "teacher"
        print(f"[prune] source auto: fine-tuning from the {source}")
    members, multihead = [], None
    if source == "ensemble":
        tcfg = TeacherConfig.from_dict(section(params, "train_teacher"))
        members = list(stage.load_members(args.members, tcfg.members, "prune.source: ensemble").values())
        if isinstance(student, MultiHeadStudent):
            # Keep the loss the student was distilled with: its distill params travel in the checkpoint.
            distilled = (smeta.get("params") or {}).get("distill")
            if distilled is None:
                raise EdgeCompressError(f"{args.student} is a multi-head student without the distill params that "
                                        "made it (params.distill in its metadata); re-run `dvc repro distill`, "
                                        "or set prune.source: teacher")
            made_by = DistillConfig.from_dict(distilled, f"{args.student} (its distill params)")
            multihead = made_by.multihead_config(student.num_heads)
    ds = stage.data(params)
    model, report = prune_and_finetune(student, teacher, ds, cfg, finetune, temperature, alpha,
                                       members=members, multihead=multihead)
    save_checkpoint(args.out, model, arch_of(model), stage.meta(ds, params, "prune", args.student, report["after"]))
    write_json(args.metrics, report)


if __name__ == "__main__":
    main()
