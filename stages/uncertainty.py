"""DVC stage: accuracy, calibration and uncertainty of every PyTorch model in the chain.

Teacher, each ensemble member, the ensemble (mean prediction, mutual information), the teacher
under MC dropout (train_teacher.mc_samples), the distilled student and the pruned student; their
reliability diagrams in one JSON (one `dvc plots` chart, coloured by model). The exported artifacts
get theirs in the report stage.
"""

from edgecompress import stage
from edgecompress.checkpoint import load_checkpoint
from edgecompress.errors import friendly_main
from edgecompress.fileio import write_json
from edgecompress.log import get_logger
from edgecompress.config import read
from edgecompress.training.teacher import TeacherConfig, tensors
from edgecompress.uncertainty import evaluate_models, plot_rows


@friendly_main
def main() -> str:
    args, params = stage.setup("Uncertainty of the teacher, the ensemble and the students.", [
        ("--teacher", "teacher checkpoint"), ("--members", "directory of ensemble member checkpoints"),
        ("--student", "distilled student checkpoint"), ("--pruned", "pruned student checkpoint"),
        ("--metrics", "metrics JSON"), ("--plots", "reliability diagrams of all models (one JSON, one chart)")])
    tcfg = read(params, "train_teacher", TeacherConfig)
    models = {"teacher": load_checkpoint(args.teacher)[0]}
    models.update(stage.load_members(args.members, tcfg.members, "the uncertainty stage (train_teacher.members)"))
    models["student"] = load_checkpoint(args.student)[0]
    models["pruned"] = load_checkpoint(args.pruned)[0]
    ds = stage.data(params)
    x, y = tensors(ds)["test"]
    ensemble = ["teacher", *(f"member-{i}" for i in tcfg.members)] if tcfg.members else []
    rows, diagrams = evaluate_models(models, x, y, tuple(ds.input_shape), ensemble=ensemble,
                                     mc_model="teacher" if tcfg.mc_samples else None, mc_samples=tcfg.mc_samples)
    write_json(args.plots, plot_rows(diagrams, "model"))
    write_json(args.metrics, {"split": "test", "samples": len(y), "models": rows})
    for name, r in rows.items():
        mi = f"  MI {r['mutual_information']:.4f}" if r.get("mutual_information") is not None else ""
        get_logger("uncertainty").info(f"{name:<14} acc {r['accuracy']:.4f}  NLL {r['nll']:.4f}  ECE {r['ece']:.4f}  "
                                       f"Brier {r['brier']:.4f}  entropy {r['entropy']:.4f}{mi}")
    best = max(rows, key=lambda n: rows[n]["accuracy"])
    return f"{len(rows)} models; best {best} {rows[best]['accuracy']:.4f}"


if __name__ == "__main__":
    main()
