"""Early-exit networks as checkpoints: the early_exit stage trains exits on the chain's models, chooses
their thresholds on the validation split, and saves each as ``<model>-ee.pt`` for the candidate pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgecompress.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from edgecompress.data import Dataset
from edgecompress.dirs import whole_dir
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger
from edgecompress.training.early_exit import EarlyExitConfig, EarlyExitNet, thresholds_on_val, train_early_exit

SUFFIX = "-ee"  # pool name of a model with exits: teacher-ee
BACKBONE = ".backbone.pt"  # teacher-ee.pt (the heads) beside teacher-ee.backbone.pt
log = get_logger("early-exit")
def backbone_path(path: str | Path) -> Path:
    """Where an early-exit checkpoint keeps its backbone: an ordinary checkpoint beside it."""
    path = Path(path)
    return path.with_name(path.stem + BACKBONE)


def save_early_exit(path: str | Path, net: EarlyExitNet, backbone_arch: dict[str, Any], meta: dict[str, Any]) -> None:
    """``path`` holds the exit heads (arch kind ``early_exit``: exits, head shape); the backbone is an
    ordinary checkpoint beside it (``backbone_path``), so everything that rebuilds our models, a pruned
    network or the user's module rebuilds it."""
    save_checkpoint(backbone_path(path), net.backbone, backbone_arch, meta)
    arch = {"kind": "early_exit", "backbone": backbone_path(path).name, "exits": list(net.exits),
            "head_conv": net.head_conv}
    save_checkpoint(path, net.heads, arch, meta)


def load_early_exit(path: str | Path) -> tuple[EarlyExitNet, dict[str, Any]]:
    """An early-exit checkpoint (the early_exit stage's) as (net in eval mode, metadata with 'arch')."""
    path = Path(path)
    arch, meta, state = read_checkpoint(path)
    if arch.get("kind") != "early_exit":
        raise EdgeCompressError(f"checkpoint {path} is a {arch.get('kind')!r} network, not an early-exit one; "
                                f"the early_exit stage writes those (dvc repro early_exit)")
    if not isinstance(arch.get("backbone"), str) or Path(arch["backbone"]).name != arch["backbone"]:
        raise EdgeCompressError(f"checkpoint {path}: arch.backbone {arch.get('backbone')!r} must be a file name beside "
                                f"it; re-run dvc repro early_exit")
    backbone, _ = load_checkpoint(path.with_name(arch["backbone"]))
    net = EarlyExitNet(backbone, arch["exits"], arch["head_conv"])
    try:
        net.heads.load_state_dict(state)
    except RuntimeError as e:
        raise EdgeCompressError(f"checkpoint {path}: exit heads do not match its arch: {e}") from e
    return net.eval(), {"arch": arch, **meta}


def exit_checkpoints(sources: dict[str, Path], teacher: nn.Module, ds: Dataset, cfg: EarlyExitConfig,
                     out: str | Path, meta: Callable[[dict[str, Any], str], dict[str, Any]]) -> dict[str, Any]:
    """``out/<model>-ee.pt`` for every ``cfg.models`` checkpoint in ``sources`` (name -> path): exits trained
    (a student's distilled from ``teacher``; the teacher's from its own final exit) and thresholds chosen on
    validation within ``cfg.max_drop``; ``meta(report, parent)`` their metadata. The directory appears whole."""
    reports: dict[str, Any] = {}
    with whole_dir(out) as scratch:
        for i, name in enumerate(cfg.models):
            log.info(f"{i + 1}/{len(cfg.models)} {name}: exits after blocks {list(cfg.exits)}")
            backbone, bmeta = load_checkpoint(sources[name])
            try:  # our ResNet and MobileNet take exits (bad exits are an error); a brought model may not
                EarlyExitNet(backbone, cfg.exits, cfg.head_conv)
            except EdgeCompressError as e:
                if bmeta["arch"].get("kind") != "user":
                    raise EdgeCompressError(f"early_exit: {name}: {e}") from None
                log.info(f"{name}: skipped, it cannot take exits ({e}); early_exit.models: [] silences this")
                continue
            net, trained = train_early_exit(backbone, None if name == "teacher" else teacher, ds, cfg,
                                            name=name + SUFFIX)
            choice = thresholds_on_val(net, ds, cfg.max_drop)
            rep = {**{k: v for k, v in trained.items() if k != "history"}, "cascade": choice.as_dict()}
            save_early_exit(scratch / f"{name}{SUFFIX}.pt", net, bmeta["arch"], meta(rep, str(sources[name])))
            reports[name + SUFFIX] = {**rep, "history": trained["history"]}
            log.info(f"{name}{SUFFIX}: thresholds {rep['cascade']['thresholds']}, validation exit fractions "
                     f"{[round(f, 3) for f in choice.exit_fractions]}")
    return reports
