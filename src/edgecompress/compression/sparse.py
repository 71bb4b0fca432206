"""Storage of unstructured-sparse weights: what a sparse file format would need, tensor by tensor.

Dense runtimes (onnxruntime, LiteRT) store and run zeroed weights at full size; these counts say
how small a bitmask or CSR encoding would make them, so magnitude pruning's size claim is honest.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def encoded_size(w: torch.Tensor, value_bytes: int = 4) -> dict[str, int]:
    """Bytes of one weight tensor stored dense, as bitmask + nonzeros, and as CSR over (out, rest).

    CSR: int32 row pointers (rows + 1), column indices in the narrowest unsigned type that holds
    the row length (uint8/uint16/uint32), nonzero values. Bitmask: one bit per entry + nonzeros.
    """
    n, nnz = w.numel(), int((w != 0).sum())
    rows = w.shape[0] if w.ndim > 1 else 1
    cols = n // max(rows, 1)
    index_bytes = 1 if cols <= 2**8 else 2 if cols <= 2**16 else 4
    return {"dense": n * value_bytes, "bitmask": math.ceil(n / 8) + nnz * value_bytes,
            "csr": (rows + 1) * 4 + nnz * (index_bytes + value_bytes)}


def sparse_size(model: nn.Module, value_bytes: int = 4) -> dict[str, Any]:
    """Stored fp32 size of ``model``: dense, and with each conv/linear weight in its smaller sparse encoding.

    Every other tensor (BN, biases) counts dense in both. ``sparse_bytes`` is what a sparse file
    format would need; dense runtimes (onnxruntime, LiteRT) store and run the dense size.
    """
    dense = sparse = 0
    weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for p in model.parameters():
        if id(p) in weights:
            e = encoded_size(p.detach(), value_bytes)
            dense += e["dense"]
            sparse += min(e["dense"], e["bitmask"], e["csr"])
        else:
            dense += p.numel() * value_bytes
            sparse += p.numel() * value_bytes
    return {"dense_bytes": dense, "sparse_bytes": sparse, "sparse_over_dense": sparse / max(dense, 1)}
