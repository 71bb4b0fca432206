"""The pruning ladder on disk: one checkpoint per level (pruned-30.pt, pruned-50.pt, ...), written whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgecompress.checkpoint import arch_after_pruning, save_checkpoint
from edgecompress.dirs import whole_dir

Level = tuple[str, nn.Module, dict[str, Any]]  # (name, model at that level, its report entry)


def write_ladder(out: str | Path, levels: list[Level], meta: Callable[[dict[str, Any]], dict[str, Any]],
                 arch: dict[str, Any]) -> None:
    """``out/<name>.pt`` for every level of the network ``arch`` describes (before pruning), ``meta(level
    report)`` its metadata; the directory appears whole."""
    with whole_dir(out) as scratch:
        for name, model, level in levels:
            # The history is in metrics and dvclive already; checkpoint metadata keeps the level's numbers.
            save_checkpoint(scratch / f"{name}.pt", model, arch_after_pruning(model, arch),
                            meta({k: v for k, v in level.items() if k != "history"}))


def ladder_levels(directory: str | Path | None) -> list[Path]:
    """The level checkpoints in ``directory``, least pruned first (none when there is no directory)."""
    if not directory or not Path(directory).is_dir():
        return []
    return sorted(Path(directory).glob("pruned-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
