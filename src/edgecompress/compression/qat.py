"""Quantization-aware training for the full-integer int8 TFLite export (PT2E, LiteRT's quantizer).

Post-training quantization only picks scales; QAT fine-tunes the weights with fake quantization in
the forward pass (straight-through gradients), so the network learns to live with int8 rounding.
The flow is torchao's PT2E one with LiteRT's ``PT2EQuantizer`` and
``get_symmetric_quantization_config(is_qat=True)``: export the NHWC-wrapped model with a dynamic
batch, ``prepare_qat_pt2e`` (conv+BN are folded with fake-quantized weights), train a few epochs,
``convert_pt2e``, and hand the quantizer to ``litert_torch.convert`` exactly like the PTQ path.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.compression.onnx import quiet
from edgecompress.compression.tflite import NHWCWrapper
from edgecompress.compression.tflite_names import strip_tensor_names
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path
from edgecompress.log import get_logger


@dataclass(frozen=True)
class QATConfig:
    """``export.qat`` in params.yaml: off by default (it costs a training run)."""

    enabled: bool = False
    epochs: int = 1
    lr: float = 1e-4  # fine-tuning rate: the weights are already trained
    batch_size: int = 64
    momentum: float = 0.9
    samples: int | None = None  # training images used per epoch (null = all)
    seed: int = 0

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        checks = [
            ("enabled", isinstance(self.enabled, bool), "true or false"),
            ("epochs", is_int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("lr", isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and self.lr > 0, "a number > 0"),
            ("batch_size", is_int(self.batch_size) and self.batch_size >= 2, "an integer >= 2"),
            ("momentum", isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("samples", self.samples is None or (is_int(self.samples) and self.samples >= 2), "null or an integer >= 2"),
            ("seed", is_int(self.seed) and self.seed >= 0, "an integer >= 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise EdgeCompressError(f"invalid value qat.{name}={getattr(self, name)!r}: must be {allowed}")


@contextlib.contextmanager
def _litert_conv_bn_patterns() -> Iterator[None]:
    """While preparing QAT: make LiteRT's conv+BN annotators work with this torchao.

    litert_torch passes plain functions as patterns to torchao's ``_get_aten_graph_module_for_pattern``,
    which now calls ``torch.export.export`` on them and so needs an ``nn.Module``; torchao's own QAT
    code wraps its patterns in ``WrapperModule``. We do the same for LiteRT's, and only for the
    duration of the preparation: the rest of the process sees litert_torch as installed.
    """
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    def wrapped(pattern: Any, *args: Any, **kwargs: Any) -> Any:
        return original(pattern if isinstance(pattern, nn.Module) else WrapperModule(pattern), *args, **kwargs)

    utils._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def qat_pt2e(module: nn.Module, x: np.ndarray, y: np.ndarray, cfg: QATConfig,
             per_channel: bool = True) -> tuple[Any, Any, list[dict[str, float]]]:
    """Fine-tune a copy of ``module`` with int8 fake quantization on (``x``, ``y``).

    ``x`` is what ``module`` takes (float32, batch first). Returns (converted int8 PT2E module,
    quantizer for ``litert_torch.convert``, per-epoch history). ``module`` itself is not modified.
    """
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e import quantize_pt2e as qpt2e

    if len(x) < 2 or len(x) != len(y):
        raise EdgeCompressError(f"QAT needs at least 2 labelled training images, got {len(x)} images, {len(y)} labels")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = copy.deepcopy(module).train().to(memory_format=torch.contiguous_format)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y)).long()
    batch = torch.export.Dim("batch", min=1, max=max(4096, cfg.batch_size))
    try:
        exported = torch.export.export(model, (xt[:2],), dynamic_shapes=({0: batch},)).module()
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True))
        with _litert_conv_bn_patterns():
            prepared = qpt2e.prepare_qat_pt2e(exported, quantizer)
    except Exception as e:
        raise EdgeCompressError(f"QAT preparation failed: {type(e).__name__}: {e}") from e
    opt = torch.optim.SGD(prepared.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    n = len(xt) if cfg.samples is None else min(cfg.samples, len(xt))
    history = []
    for epoch in range(cfg.epochs):
        t0 = time.time()
        perm = torch.randperm(len(xt), generator=gen)[:n]
        total, seen = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # train-mode BatchNorm needs more than one sample
                continue
            loss = F.cross_entropy(prepared(xt[idx]), yt[idx])
            if not torch.isfinite(loss):
                raise EdgeCompressError(f"QAT loss became {loss.item()} in epoch {epoch + 1}; lower export.qat.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        row = {"epoch": epoch + 1, "loss": total / max(seen, 1), "seconds": time.time() - t0}
        history.append(row)
        get_logger("qat").info(f"epoch={row['epoch']} loss={row['loss']:.4f} seconds={row['seconds']:.1f}")
    move_exported_model_to_eval(prepared)
    return qpt2e.convert_pt2e(prepared, fold_quantize=False), quantizer, history


def export_tflite_qat(model: nn.Module, input_shape: tuple[int, ...], path: Path, x: np.ndarray, y: np.ndarray,
                      cfg: QATConfig, per_channel: bool = True) -> list[dict[str, float]]:
    """Full-integer int8 TFLite (int8 I/O, NHWC) of ``model`` after QAT on normalized NCHW ``x``."""
    import litert_torch
    from litert_torch.quantize import quant_config

    c, h, w = input_shape
    wrapped = NHWCWrapper(model.eval().to(memory_format=torch.contiguous_format))
    nhwc = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))
    converted, quantizer, history = qat_pt2e(wrapped, nhwc, y, cfg, per_channel)
    try:
        with quiet():
            edge = litert_torch.convert(converted, (torch.zeros(1, h, w, c),),
                                        quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
            with atomic_path(path) as tmp:
                edge.export(str(tmp))
                strip_tensor_names(tmp, str(path))  # as export_tflite: no debug names in the file
    except Exception as e:
        raise EdgeCompressError(f"TFLite conversion of the QAT model to {path} failed: {type(e).__name__}: {e}") from e
    return history
