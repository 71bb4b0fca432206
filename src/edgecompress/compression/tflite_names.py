"""Short tensor names in TFLite files: the converter's debug names are a sixth of a small int8 model.

litert-torch names every tensor after its module path (``edgecompress.compression.tflite.NHWCWrapper/
edgecompress.models.MobileNetStudent_model/torch.nn.modules.container.Sequential_blocks/...``, up to
~700 characters): the student's int8 file spends 18,899 of its 109,264 bytes on them, and the iot-camera
target budgets 64 KiB for the whole file. TensorFlow's converter drops them (``strip_debug_info``); litert-torch
has no such switch, so we rewrite the flatbuffer. Every tensor is renamed ``t<index>`` except those a
caller can see, which keep their names: each subgraph's inputs and outputs and every tensor a
SignatureDef names (sidecars record the I/O names; runners and signature runners look them up).
Operators, quantization parameters, metadata and signatures are copied unchanged; buffer bytes too, placed
16-byte aligned (inline, or after the flatbuffer where the file kept them there).

The rewrite is used only when it is smaller and proven harmless on the spot: the new model must load, show
the same input/output details and signatures, and give bit-identical outputs on a fixed input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.fileio import atomic_path
from edgecompress.log import get_logger

log = get_logger("tflite")

IDENTIFIER = b"TFL3"
# TFLite's schema asks for 16-byte aligned buffer data (``data:[ubyte] (force_align: 16)``); flatc's
# Python code ignores force_align, so we align ourselves (kernels read weights in place; litert-torch's
# files have 4-byte alignment, which costs 100-450 bytes less on our models).
ALIGN = 16


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def visible_tensors(model: Any) -> list[set[int]]:
    """Per subgraph, the tensors whose names a caller can see: its inputs, outputs and SignatureDef entries."""
    keep = [set(int(i) for i in [*(sg.inputs if sg.inputs is not None else []),
                                 *(sg.outputs if sg.outputs is not None else [])]) for sg in model.subgraphs or []]
    for sig in model.signatureDefs or []:
        for t in [*(sig.inputs or []), *(sig.outputs or [])]:
            keep[sig.subgraphIndex].add(int(t.tensorIndex))
    return keep


def shorten_names(model: Any) -> int:
    """Rename every tensor no caller can see to ``t<index>`` in place; the number of bytes of names saved."""
    saved = 0
    for sg, keep in zip(model.subgraphs or [], visible_tensors(model)):
        kept = {bytes(sg.tensors[i].name or b"") for i in keep}
        for i, tensor in enumerate(sg.tensors or []):
            if i in keep:
                continue
            short = f"t{i}".encode()
            if short in kept:  # a visible tensor already called "t7": stay unique (the quantizer keys on names)
                short += b"_"
            saved += len(tensor.name or b"") - len(short)
            tensor.name = short
    return saved


def _aligned_buffer(schema: Any) -> type:
    class AlignedBuffer(schema.BufferT):  # type: ignore[misc, name-defined]
        """A BufferT that packs its data 16-byte aligned (the generated Pack aligns to 1)."""

        def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - flatbuffers' name
            data = None
            if self.data is not None:
                raw = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(raw), ALIGN if raw else 1)
                builder.head -= len(raw)  # what Builder.CreateByteVector does, with our alignment
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return int(schema.BufferEnd(builder))

    return AlignedBuffer


def _parse(data: bytes, what: str) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise EdgeCompressError(f"{what} is not a TFLite file (no {IDENTIFIER.decode()} identifier); re-export it")
    try:
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    except Exception as e:
        raise EdgeCompressError(f"{what} is not a readable TFLite flatbuffer ({type(e).__name__}: {e}); "
                                f"re-export it") from e


def _pack(model: Any, data: bytes, what: str) -> bytes:
    """Serialize ``model``; buffers stored after the flatbuffer (offset/size) stay there, 16-byte aligned."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools.flatbuffer_utils import update_packed_buffer

    aligned = _aligned_buffer(schema)
    external: dict[int, bytes] = {}  # in file order
    for i, b in sorted(enumerate(model.buffers or []), key=lambda ib: ib[1].offset):
        if b.offset:  # the quantizer's layout for large weights: offsets count from the file's start
            if b.offset + b.size > len(data):
                raise EdgeCompressError(f"{what} is truncated: buffer {i} ends at byte {b.offset + b.size} "
                                        f"of {len(data)}; re-export it")
            external[i] = data[b.offset:b.offset + b.size]
    model.buffers = [aligned(data=None, offset=1, size=1) if i in external  # placeholders: room for the fields
                     else aligned(data=b.data, offset=b.offset, size=b.size) for i, b in enumerate(model.buffers or [])]
    for sg in model.subgraphs or []:  # large custom options live after the flatbuffer too: inline them
        for op in sg.operators or []:
            if op.largeCustomOptionsOffset:
                start, size = op.largeCustomOptionsOffset, op.largeCustomOptionsSize
                op.customOptions = np.frombuffer(data[start:start + size], np.uint8)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    builder = flatbuffers.Builder(len(data) - sum(map(len, external.values())) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=IDENTIFIER)
    out = bytearray(builder.Output())
    if not external:
        return bytes(out)
    packed = schema.Model.GetRootAsModel(out, 0)
    tail = bytearray()
    for i in external:
        tail += bytes(_align(len(out) + len(tail)) - len(out) - len(tail))
        update_packed_buffer(packed.Buffers(i), offset=len(out) + len(tail), size=len(external[i]))
        tail += external[i]
    return bytes(out + tail)


def _interpreter(data: bytes, what: str) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_content=data, num_threads=1)
        interp.allocate_tensors()
    except Exception as e:
        why = " ".join(str(e).split())  # the runtime's message ends in a newline
        raise EdgeCompressError(f"{what} is not a valid TFLite model ({type(e).__name__}: {why}); re-export it") from e
    return interp


def _io(interp: Any) -> list[tuple[Any, ...]]:
    rows = []
    for d in [*interp.get_input_details(), *interp.get_output_details()]:
        q = d["quantization_parameters"]
        rows.append((d["name"], d["index"], d["shape"].tolist(), d["shape_signature"].tolist(),
                     np.dtype(d["dtype"]).str, d["quantization"], q["scales"].tolist(), q["zero_points"].tolist(),
                     q["quantized_dimension"]))
    return rows


def _fixed_inputs(interp: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    xs = []
    for d in interp.get_input_details():
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            xs.append(rng.standard_normal(d["shape"]).astype(dt))
        elif dt.kind in "iu":
            xs.append(rng.integers(np.iinfo(dt).min, np.iinfo(dt).max, d["shape"], dtype=dt, endpoint=True))
        else:
            xs.append(np.zeros(d["shape"], dt))
    return xs


def _outputs(interp: Any, xs: list[np.ndarray]) -> list[bytes]:
    for d, x in zip(interp.get_input_details(), xs):
        interp.set_tensor(d["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]).tobytes() for d in interp.get_output_details()]


def strip_names(data: bytes, what: str = "TFLite model") -> bytes:
    """``data`` (a .tflite file's bytes) with short tensor names, checked to behave exactly as before;
    ``data`` itself when that is no smaller. ``what`` names the file in errors and in the log line.
    """
    before = _interpreter(data, what)  # the flatbuffer verifier: a corrupt file fails here, clearly
    model = _parse(data, what)
    saved = shorten_names(model)
    out = _pack(model, data, what)
    try:
        after = _interpreter(out, f"{what} with short tensor names")
    except EdgeCompressError as e:
        raise EdgeCompressError(f"{e} (a bug in edgecompress.compression.tflite_names: report it)") from e
    xs = _fixed_inputs(before)
    try:
        want = _outputs(before, xs)
    except Exception as e:
        raise EdgeCompressError(f"{what} does not run here ({type(e).__name__}: {e}); re-export it") from e
    if (_io(before) != _io(after) or before.get_signature_list() != after.get_signature_list()
            or _outputs(after, xs) != want):
        raise EdgeCompressError(f"{what}: shortening its tensor names changed its inputs, outputs or results "
                                f"(a bug in edgecompress.compression.tflite_names: report it)")
    if len(out) >= len(data):  # names already short: our 16-byte alignment would only add padding
        log.debug(f"{what}: tensor names already short ({len(data):,} bytes), left as they are")
        return data
    log.info(f"{what}: tensor names shortened, {len(data):,} -> {len(out):,} bytes ({saved:,} bytes of names)")
    return out


def strip_tensor_names(path: Path, what: str | None = None) -> tuple[int, int]:
    """Rewrite the .tflite at ``path`` with short tensor names (atomically); its size (before, after)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeCompressError(f"{what or path} cannot be read ({e})") from e
    out = strip_names(data, str(what or path))
    if out is not data:
        with atomic_path(path) as tmp:
            tmp.write_bytes(out)
    return len(data), len(out)
