"""TFLite artifacts through litert-torch: fp32, full-integer int8 (PT2E, calibrated), fp16.

Models take NHWC input (``NHWCWrapper``), the layout TFLite kernels and camera pipelines use.
Every file written here has short tensor names (``tflite_names``): the converter's debug names are a
sixth of a small int8 model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.compression.calibrate import CalibrationConfig
from edgecompress.compression.onnx import quiet
from edgecompress.compression.tflite_names import strip_names, strip_tensor_names
from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path


def quantize_pt2e(module: Any, example: tuple[Any, ...], calib: np.ndarray, cfg: CalibrationConfig) -> tuple[Any, Any]:
    """PT2E int8 quantization for LiteRT: returns (converted module, quantizer).

    Weights symmetric int8 (per channel if configured), activations int8 observed on ``calib``
    one image at a time (the exported graph is specialised to batch 1). torchao has no entropy or
    percentile observer: both map to its histogram observer, which also clips outliers (it picks
    the range minimising quantization error); ``tflite_observer(cfg)`` names what was used.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e as qpt2e

    exported = torch.export.export(module, example).module()
    qconfig = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=cfg.per_channel)
    if cfg.method == "minmax":
        # LiteRT's default activation observer is a histogram (L2-optimal clipping); honour minmax.
        from torchao.quantization.pt2e.observer import MinMaxObserver

        act = dataclasses.replace(qconfig.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        qconfig = dataclasses.replace(qconfig, input_activation=act, output_activation=act)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(qconfig)
    prepared = qpt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    return qpt2e.convert_pt2e(prepared, fold_quantize=False), quantizer


def tflite_observer(cfg: CalibrationConfig) -> str:
    """The activation observer the TFLite int8 export actually uses for ``cfg.method``."""
    return "MinMaxObserver" if cfg.method == "minmax" else "HistogramObserver"


class NHWCWrapper(nn.Module):
    """Takes NHWC input, the layout TFLite kernels and mobile camera pipelines use natively."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def export_tflite_fp16(fp32_tflite: Path, path: Path) -> None:
    """fp16 TFLite from the fp32 one: float16 weights (ai_edge_quantizer float casting), float32 I/O.

    The standard TFLite "float16 quantization": conv/depthwise/fully-connected weights are stored as
    float16 behind DEQUANTIZE ops; the GPU delegate computes in fp16, the CPU dequantizes to fp32.
    """
    from ai_edge_quantizer import qtyping, quantizer

    fp16 = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
    try:
        q = quantizer.Quantizer(str(fp32_tflite))
        for op in (qtyping.TFLOperationName.CONV_2D, qtyping.TFLOperationName.DEPTHWISE_CONV_2D,
                   qtyping.TFLOperationName.FULLY_CONNECTED):
            q.update_quantization_recipe(regex=".*", operation_name=op, op_config=fp16,
                                         algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING)
        with quiet():
            result = q.quantize(enable_progress_report=False)
    except Exception as e:
        raise EdgeCompressError(f"fp16 TFLite conversion of {fp32_tflite} failed: {type(e).__name__}: {e}") from e
    data = strip_names(bytes(result.quantized_model), str(path))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: Path,
                  calib: np.ndarray | None = None, cfg: CalibrationConfig | None = None) -> None:
    """TFLite through litert-torch: fp32, or full-integer int8 (int8 I/O) when ``calib`` is given."""
    import litert_torch
    from litert_torch.quantize import quant_config

    c, h, w = input_shape
    wrapped = NHWCWrapper(model.eval().to(memory_format=torch.contiguous_format)).eval()
    example = (torch.zeros(1, h, w, c),)
    try:
        with quiet():
            if calib is None:
                edge = litert_torch.convert(wrapped, example)
            else:
                assert cfg is not None
                nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
                qmodel, quantizer = quantize_pt2e(wrapped, example, nhwc, cfg)
                edge = litert_torch.convert(qmodel, example,
                                            quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
            with atomic_path(path) as tmp:
                edge.export(str(tmp))
                strip_tensor_names(tmp, str(path))  # before the rename: ``path`` never holds the long names
    except EdgeCompressError:
        raise
    except Exception as e:
        raise EdgeCompressError(f"TFLite conversion to {path} failed: {type(e).__name__}: {e}") from e


def tflite_interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    # torch's thread count: the cores this process may use (all of them, or its share in the pool's workers)
    interp = Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
    interp.allocate_tensors()
    return interp
