"""The deep ensemble as one exportable graph: the "ensemble" model of a target's candidate pool.

Its output is log(mean_m softmax(member_m(x))), a valid logit vector whose softmax is the ensemble's
mean probability. So every runtime, the standalone runner and every metric (accuracy, NLL, ECE)
treat the exported ensemble as any classifier, and its calibration is the ensemble's own, not that
of averaged logits (which would be a different, sharper distribution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from edgecompress.compression.onnx import export_onnx
from edgecompress.errors import EdgeCompressError
from edgecompress.models import log_mean_softmax


class EnsembleGraph(nn.Module):
    """Members run side by side on the same input; the output is the log of their mean probability."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise EdgeCompressError(f"an ensemble graph needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_softmax(torch.stack([m(x) for m in self.members]), 1.0)


def export_ensemble_onnx(members: Sequence[nn.Module], input_shape: tuple[int, ...], path: Path) -> None:
    """fp32 ONNX of the whole ensemble (input 'input', output 'logits', dynamic batch), written atomically."""
    export_onnx(EnsembleGraph([m.eval() for m in members]).eval(), input_shape, Path(path))
