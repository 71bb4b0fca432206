"""Static features of an exported artifact for the latency model: MACs, weights, layers, bytes.

Counted from the file itself, so they describe exactly what the device runs (pruned channels gone,
an ensemble's members all there): ONNX through shape inference on the graph, TFLite through the
interpreter's op and tensor details (no allocation, no run). A conv's multiply-accumulates are its output
elements times the weights behind each output channel; a fully connected / matmul layer's, its output
elements times its inner dimension. ONNX and TFLite exports of one network count the same.
Cached by the file's sha256 (in memory, and in a directory when given one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecompress.dirs import file_sha256
from edgecompress.errors import EdgeCompressError
from edgecompress.log import get_logger

log = get_logger("latency model")

FEATURES_VERSION = 1  # bump when the counting changes: cached features of older versions are recounted

@dataclass(frozen=True)
class Features:
    """What the model sees of an artifact: multiply-accumulates of one image, the weights of the layers that
    do them (biases included), how many such layers (conv, depthwise, fully connected, matmul), file bytes."""

    macs: int
    params: int
    layers: int
    bytes: int


def _numel(shape: Sequence[int]) -> int:
    return int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1


def _onnx_features(path: Path) -> Features:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):  # a symbolic dim (the batch) counts as 1: MACs per image
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
    # op -> (weight input, bias input or None); MACs = elements out * weight elements per output channel
    table = {"Conv": (1, 2), "ConvInteger": (1, None), "QLinearConv": (3, 8), "ConvTranspose": (1, 2),
             "Gemm": (1, 2), "MatMul": (1, None), "MatMulInteger": (1, None), "QLinearMatMul": (3, None)}
    macs = params = layers = 0
    for node in g.node:
        if node.op_type not in table:
            continue
        w_i, b_i = table[node.op_type]
        w, y, x = (shapes.get(n) for n in (node.input[w_i], node.output[0], node.input[0]))
        if not w or y is None or (node.op_type == "ConvTranspose" and x is None):
            raise EdgeCompressError(f"{path}: cannot count the MACs of {node.op_type} node {node.name!r}: shape "
                                    f"inference left its weight or output shape unknown")
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            per_out = _numel(w) // max(w[0], 1)
            macs += _numel(y) * per_out
        elif node.op_type == "ConvTranspose":
            macs += _numel(x) * (_numel(w) // max(w[0], 1))
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            macs += _numel(y) * (w[-1] if trans_b else w[0])
        else:  # MatMul: B is [..., K, N] (or [K])
            macs += _numel(y) * (w[-2] if len(w) >= 2 else w[0])
        bias = shapes.get(node.input[b_i]) if b_i is not None and len(node.input) > b_i and node.input[b_i] else None
        params += _numel(w) + (_numel(bias) if bias is not None else 0)
        layers += 1
    return Features(int(macs), int(params), layers, path.stat().st_size)


def _tflite_features(path: Path) -> Features:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    shapes = {t["index"]: [int(d) for d in t["shape"]] for t in interp.get_tensor_details()}
    try:
        ops = interp._get_ops_details()  # noqa: SLF001 - the only op list the interpreter exposes
    except AttributeError as e:
        raise EdgeCompressError(f"{path}: this ai-edge-litert has no op list (_get_ops_details); "
                                f"install the version in requirements") from e
    macs = params = layers = 0
    for op in ops:
        name, ins, out = op["op_name"], [int(i) for i in op["inputs"]], [int(i) for i in op["outputs"]]
        w_i = 1 if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL") else \
            1 if name == "TRANSPOSE_CONV" else None
        if w_i is None or len(ins) <= w_i or ins[w_i] < 0:
            continue
        w, y = shapes[ins[w_i]], shapes[out[0]]
        if name == "CONV_2D" or name == "FULLY_CONNECTED":  # W [O, kh, kw, I] / [O, I]
            macs += _numel(y) * (_numel(w) // max(w[0], 1))
        elif name == "DEPTHWISE_CONV_2D":  # W [1, kh, kw, C*m]: each output multiplies kh*kw weights
            macs += _numel(y) * (_numel(w) // max(w[-1], 1))
        elif name == "TRANSPOSE_CONV":  # inputs (output shape, W [O, kh, kw, I], x)
            macs += _numel(shapes[ins[2]]) * (_numel(w) // max(w[-1], 1))
        else:  # BATCH_MATMUL: y [..., M, N], B [..., K, N]
            macs += _numel(y) * (w[-2] if len(w) >= 2 else w[0])
        bias = shapes.get(ins[2]) if name != "TRANSPOSE_CONV" and len(ins) > 2 and ins[2] >= 0 else None
        params += _numel(w) + (_numel(bias) if bias is not None else 0)
        layers += 1
    return Features(int(macs), int(params), layers, path.stat().st_size)


COUNTERS = {".onnx": _onnx_features, ".tflite": _tflite_features}


def artifact_features(path: str | Path) -> Features:
    """MACs, params, layers and bytes of an exported ONNX or TFLite file (a cascade's manifest: an error)."""
    path = Path(path)
    counter = COUNTERS.get(path.suffix)
    if counter is None:
        raise EdgeCompressError(f"{path}: the latency model counts .onnx and .tflite files, not {path.suffix or 'this'}"
                                f" (a cascade's latency depends on where images exit: it is always measured)")
    try:
        return counter(path)
    except EdgeCompressError:
        raise
    except Exception as e:  # onnx/litert raise their own types on a damaged file
        raise EdgeCompressError(f"{path}: cannot read the model to count its features ({type(e).__name__}: {e})") from e


class FeatureCache:
    """``artifact_features`` by the file's sha256: in memory, and on disk when given a directory."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory else None
        self._mem: dict[str, Features] = {}

    def known(self, sha256: str) -> Features | None:
        """The features counted before for the file with this sha256 (None: never counted here), without the
        file: a measurement made on another machine (over SSH) names its artifact by sha256 only."""
        if sha256 in self._mem:
            return self._mem[sha256]
        disk = self.dir / f"{sha256}.json" if self.dir else None
        if disk is None or not disk.exists():
            return None
        try:
            d = json.loads(disk.read_text())
            if d.pop("version", None) != FEATURES_VERSION:
                return None
            feats = Features(**{k: int(d[k]) for k in ("macs", "params", "layers", "bytes")})
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning(f"ignoring the unreadable feature cache entry {disk} ({type(e).__name__}); recounting")
            return None
        self._mem[sha256] = feats
        return feats

    def get(self, path: str | Path, sha256: str | None = None) -> Features:
        sha = sha256 or file_sha256(path)
        feats = self.known(sha)
        if feats is None:
            feats = artifact_features(path)
            if self.dir is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / f"{sha}.json").write_text(json.dumps({"version": FEATURES_VERSION, **asdict(feats)}))
            self._mem[sha] = feats
        return feats
