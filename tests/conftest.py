"""Shared fixtures: tiny synthetic models and data (milliseconds, no real dataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.models import MobileNetStudent, ResNetTeacher


@pytest.fixture
def tiny_student() -> MobileNetStudent:
    torch.manual_seed(0)
    return MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2]).eval()


@pytest.fixture
def tiny_teacher() -> ResNetTeacher:
    torch.manual_seed(0)
    return ResNetTeacher(1, 4, widths=[8, 16], blocks=[1, 1], stem=8).eval()


def make_blobs(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 4-class problem on 1x12x12 images: the class sets which quadrant is bright."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        r, s = divmod(c, 2)
        x[i, 0, r * 6:(r + 1) * 6, s * 6:(s + 1) * 6] += 2.0
    return x, y


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    return make_blobs()


def trained_student(blobs: tuple[torch.Tensor, torch.Tensor]) -> MobileNetStudent:
    from edgecompress.train import TrainConfig, fit

    torch.manual_seed(0)
    m = MobileNetStudent(1, 4, [8, 16, 16, 32], [2, 1, 2])
    fit(m, *blobs, TrainConfig(epochs=4, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    return m.eval()


@pytest.fixture
def calib_data(blobs: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
    return blobs[0][:32].numpy()
