"""Weight clustering: few shared values per layer, tied fine-tuning, and what reaches the exported file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.compression.cluster import (ClusterConfig, SharedWeights, bake, cluster_weights, compress_weights,
                                              distinct_values, fold_batchnorm, kmeans_1d, uniform_fake_quant)
from edgecompress.errors import EdgeCompressError
from edgecompress.models import MobileNetStudent
from edgecompress.training.loop import TrainConfig


class UserNet(nn.Module):
    """A user's module: attributes, not a Sequential; a conv -> BN pair FX must find by tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.a(x)))
        return self.head(torch.relu(self.b(x)).mean((2, 3)))


def _data(n: int = 96, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for c in range(classes):
        x[y == c, :, 2 * c:2 * c + 2] += 2.0
    return x, y


def test_kmeans_finds_separated_clumps() -> None:
    w = torch.cat([torch.full((50,), v) + 0.01 * torch.randn(50) for v in (-1.0, -0.2, 0.3, 2.0)])
    for init in ("linear", "density"):
        centroids, idx = kmeans_1d(w, 4, init)
        assert torch.allclose(centroids, torch.tensor([-1.0, -0.2, 0.3, 2.0]), atol=0.01)
        assert torch.equal(idx, torch.arange(4).repeat_interleave(50))


@pytest.mark.parametrize("average", [False, True])
def test_gradients_are_summed_per_cluster(average: bool) -> None:
    w = torch.tensor([[0.0, 1.0, 1.0, 3.0], [3.0, 0.5, 1.0, 3.0]]).requires_grad_(False) + 0.1
    shared = SharedWeights(w, 2, "linear", 30, average=average)
    g = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    (shared(w) * g).sum().backward()
    summed = torch.zeros(shared.centroids.numel()).index_add_(0, shared.index.flatten(), g.flatten())
    members = torch.bincount(shared.index.flatten(), minlength=shared.centroids.numel()).float()
    assert torch.allclose(shared.centroids.grad, summed / members if average else summed)


def test_only_the_centroids_learn() -> None:
    lin = nn.Linear(4, 2, bias=False)
    cluster_weights(lin, ClusterConfig(bits=2, min_weights=1))
    lin(torch.ones(1, 4)).sum().backward()
    assert lin.parametrizations.weight.original.grad is None
    assert lin.parametrizations.weight[0].centroids.grad is not None


def test_pruned_zeros_stay_zero_and_count_as_one_value() -> None:
    w = torch.randn(16, 8, 3, 3)
    w[w.abs() < 0.5] = 0
    shared = SharedWeights(w, 3, "linear", 30)
    out = shared(w)
    assert torch.equal(out == 0, w == 0)
    assert out.unique().numel() <= 8


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("make", [lambda: MobileNetStudent(1, 3, [8, 16, 16], [2, 2]), UserNet])
def test_clustered_layers_keep_at_most_2_to_the_bits_values_through_finetune_and_onnx(tmp_path: Path, bits: int,
                                                                                        make) -> None:
    import onnx
    from onnx import numpy_helper

    from edgecompress.compression.onnx import export_onnx

    torch.manual_seed(0)
    model, teacher = make().eval(), make().eval()
    cfg = ClusterConfig(bits=bits, finetune=TrainConfig(epochs=1, batch_size=32, lr=0.05, crop_pad=0, flip=False))
    x, y = _data()
    out, report = compress_weights(model, teacher, (x, y), (x, y), cfg)
    for bn in (m for m in out.modules() if isinstance(m, nn.BatchNorm2d)):  # folded: exact identities
        assert torch.all(bn.weight == 1) and torch.all(torch.sqrt(bn.running_var + bn.eps) == 1)
        assert torch.all(bn.running_mean == 0) and not bn.weight.requires_grad
    assert report["layers"] == len(report["distinct_values"]) >= 2
    assert all(1 < n <= 2 ** bits for n in report["distinct_values"].values())
    assert report["history"] and report["accuracy_float"] >= 0
    # The exporter has no BN left to fold: the file holds the shared values themselves.
    export_onnx(out, (1, 8, 8), tmp_path / "m.onnx")
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if
               numpy_helper.to_array(t).ndim >= 2 and numpy_helper.to_array(t).size >= 64]
    assert weights and all(len(np.unique(w)) <= 2 ** bits for w in weights)
    with torch.no_grad():
        assert torch.allclose(out(x), fold_batchnorm(out)(x), atol=1e-6)


def test_folding_keeps_the_function() -> None:
    torch.manual_seed(0)
    m = UserNet()
    m.train()(torch.randn(32, 1, 8, 8))  # non-trivial running statistics
    m.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(m(x), fold_batchnorm(m)(x), atol=1e-5)


def test_uniform_baseline_keeps_2_to_the_bits_levels_per_output_channel() -> None:
    conv = nn.Conv2d(4, 6, 3)
    uniform_fake_quant(conv, 4, min_weights=1)
    bake(conv)
    for row in conv.weight.detach().flatten(1):
        assert row.unique().numel() <= 16
    w = nn.Linear(8, 8).requires_grad_(True)
    uniform_fake_quant(w, 3, min_weights=1)
    w(torch.ones(1, 8)).sum().backward()
    assert torch.allclose(w.parametrizations.weight.original.grad, torch.ones(8, 8))  # straight through


def test_distinct_values_counts_each_layer() -> None:
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 2))
    cluster_weights(m, ClusterConfig(bits=2, min_weights=50))
    assert distinct_values(bake(m), 50) == {"0": 4}


@pytest.mark.parametrize("kw, match", [
    ({"bits": 1}, r"cluster.bits=1: must be an integer in 2..8"),
    ({"bits": 9}, r"cluster.bits=9"),
    ({"init": "kmeans++"}, r"cluster.init='kmeans\+\+': must be one of linear, density"),
    ({"iterations": -1}, r"cluster.iterations=-1"),
    ({"alpha": 1.5}, r"cluster.alpha=1.5: must be in \[0, 1\]"),
])
def test_bad_cluster_configs_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(EdgeCompressError, match=match):
        ClusterConfig(**kw)


def test_nothing_to_cluster_and_unknown_method_are_clear() -> None:
    with pytest.raises(EdgeCompressError, match=r"no conv/linear weight has >= 64 elements"):
        cluster_weights(nn.Linear(2, 2), ClusterConfig())
    x, y = _data()
    with pytest.raises(EdgeCompressError, match=r"invalid weight compression 'int4'"):
        compress_weights(UserNet(), None, (x, y), (x, y), ClusterConfig(), method="int4")
